//! usage: wasmcell-http-baseline COMPONENT.wasm IP:PORT
//!
//! Serves a `wasi:http/proxy` component with Wasmtime alone: one engine
//! with the pooling allocator, one `ProxyPre`, a fresh instance per request.
//! `make bench` compares the shim's throughput with this one's.

use std::sync::Arc;

use hyper::server::conn::http1;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime::{Error, Result};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

struct State {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: wasmtime_wasi_http::default_hooks() }
    }
}

async fn handle(
    engine: Engine,
    pre: ProxyPre<State>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<HyperOutgoingBody>> {
    let state = State { wasi: WasiCtx::builder().build(), http: WasiHttpCtx::new(), table: ResourceTable::new() };
    let mut store = Store::new(&engine, state);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let req = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
    let out = store.data_mut().http().new_response_outparam(tx)?;
    let task = tokio::spawn(async move {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
    });
    match rx.await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(code)) => Err(Error::msg(format!("handler error: {code:?}"))),
        Err(_) => Err(Error::msg(format!("no response: {:?}", task.await))),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(addr)) = (args.get(1), args.get(2)) else {
        return Err(Error::msg("usage: wasmcell-http-baseline COMPONENT.wasm IP:PORT"));
    };
    let mut config = Config::new();
    config.allocation_strategy(wasmtime::InstanceAllocationStrategy::pooling());
    let engine = Engine::new(&config)?;
    let component = Component::from_file(&engine, path).map_err(|e| Error::msg(format!("compile {path}: {e:?}")))?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(Error::msg)?;
    eprintln!("serving {path} on {addr}");
    let shared = Arc::new((engine, pre));
    loop {
        let (conn, _) = listener.accept().await.map_err(Error::msg)?;
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (engine, pre) = (shared.0.clone(), shared.1.clone());
                async move { handle(engine, pre, req).await }
            });
            let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(conn), svc).await;
        });
    }
}
