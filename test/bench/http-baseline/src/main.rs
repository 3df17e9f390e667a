//! usage: wasmcell-http-baseline IP:PORT
//!
//! A native HTTP/1.1 server (hyper 1.x, two tokio workers, keep-alive,
//! TCP_NODELAY) that answers every request as the hello fixture
//! (`test/fixtures/http-guest`) answers it: status 200 and the same body,
//! built from the request's method, path and `x-test` header. No Wasm: what
//! this serves is the ceiling of the HTTP stack on this machine, the row
//! `make bench-http` divides every Wasm server by.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;

async fn hello(req: hyper::Request<hyper::body::Incoming>) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path_and_query().map_or("/".to_string(), |p| p.to_string());
    let x_test = req.headers().get("x-test").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = format!("hello from wasmcell http\nmethod: {method}\npath: {path}\nx-test: {x_test}\n");
    Ok(hyper::Response::new(Full::new(Bytes::from(body))))
}

fn main() {
    let addr = std::env::args().nth(1).expect("usage: wasmcell-http-baseline IP:PORT");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        loop {
            let Ok((conn, _)) = listener.accept().await else { continue };
            let _ = conn.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(conn), hyper::service::service_fn(hello))
                    .await;
            });
        }
    });
}
