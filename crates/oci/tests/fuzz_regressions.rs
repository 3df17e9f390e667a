//! Hostile Wasm files, entrypoint paths and image manifests, on stable: the
//! committed fuzz corpora (`test/fuzz-corpus/{wasm_prepare,image_layers}`)
//! and hand-written cases. Each must end in a clear `Err` or a bounded `Ok`,
//! without a panic, quickly.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::image::{ImageIndex, ImageManifest};
use regressions::{corpus, timed};
use serde_json::json;
use wasmcell_oci::classify::NotWasm;
use wasmcell_oci::layers::{is_wasm_layer, pick_manifest, pick_wasm_layer, LayerError};
use wasmcell_oci::{classify, component_interfaces, read_entrypoint, EntrypointError, WasmKind};

#[path = "../../../fuzz/regressions.rs"]
mod regressions;

#[test]
fn wasm_corpus_classifies_without_panic() {
    let files = corpus("wasm_prepare");
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        let _ = component_interfaces(bytes);
        let name = path.file_name().unwrap().to_str().unwrap();
        match classify(bytes) {
            Ok(WasmKind::Module) => assert!(bytes.starts_with(b"\0asm\x01\0\0\0"), "{name}"),
            Ok(WasmKind::Component) => assert!(bytes.starts_with(b"\0asm\x0d\0\x01\0"), "{name}"),
            Err(e) => assert!(!e.to_string().is_empty(), "{name}"),
        }
    }
    let kind = |n: &str| classify(&files.iter().find(|(p, _)| p.ends_with(n)).unwrap().1);
    assert_eq!(kind("elf.bin"), Err(NotWasm::Elf));
    assert_eq!(kind("script.sh"), Err(NotWasm::Script));
    assert_eq!(kind("text.wat"), Err(NotWasm::Text));
    assert_eq!(kind("wasm-v2.wasm"), Err(NotWasm::UnsupportedVersion([2, 0, 0, 0])));
    assert_eq!(kind("component-garbage.wasm"), Ok(WasmKind::Component));
}

#[test]
fn short_and_odd_headers() {
    for bytes in
        [&b"\0"[..], b"\0a", b"\0asm", b"\0asm\x01", b"\0asm\x01\0\0", b"\x7f", b"#", b"(", b"  (module", b"\xff\xfe"]
    {
        assert!(classify(bytes).is_err(), "{bytes:?}");
        assert_eq!(component_interfaces(bytes), (vec![], vec![]));
    }
    // Non-UTF-8 after a text-like start: reported lossily, no panic.
    assert!(classify(b"(modul\xff\xfe\xfd").is_err());
    assert!(matches!(classify("é(module".as_bytes()), Err(NotWasm::Unknown(_))));
}

#[test]
fn a_100mb_module_of_garbage_is_classified_by_its_header_only() {
    let mut bytes = vec![0xa5u8; 100 << 20];
    bytes[..8].copy_from_slice(b"\0asm\x01\0\0\0");
    assert_eq!(timed("classify 100 MB", Duration::from_secs(1), || classify(&bytes)), Ok(WasmKind::Module));
    let mut comp = bytes;
    comp[..8].copy_from_slice(b"\0asm\x0d\0\x01\0");
    let (i, e) = timed("component_interfaces of 100 MB", Duration::from_secs(2), || component_interfaces(&comp));
    assert!(i.is_empty() && e.is_empty());
}

/// A rootfs with symlinks that try to leave it, and a secret beside it.
fn rootfs() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let secret = d.path().join("secret.wasm");
    std::fs::write(&secret, b"\0asm\x01\0\0\0SECRET").unwrap();
    let root = d.path().join("rootfs");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("app.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(root.join("b"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(root.join("x.wasm"), b"\0asm\x01\0\0\0").unwrap();
    symlink(&secret, root.join("abs.wasm")).unwrap();
    symlink("../secret.wasm", root.join("rel.wasm")).unwrap();
    symlink("../../../secret.wasm", root.join("a/b/deep.wasm")).unwrap();
    symlink("../../../../../../../../..", root.join("up")).unwrap();
    symlink("loop", root.join("loop")).unwrap();
    symlink("/proc/self/root", root.join("procroot")).unwrap();
    (d, root)
}

#[test]
fn entrypoint_path_tricks_stay_in_the_rootfs() {
    let (_d, root) = rootfs();
    let read = |p: &str| read_entrypoint(&root, p);
    let escapes = [
        "/../../etc/passwd",
        "/../secret.wasm",
        "../secret.wasm",
        "./a/../../secret.wasm",
        "/abs.wasm",
        "/rel.wasm",
        "/a/b/deep.wasm",
        "/up/etc/passwd",
        "/procroot/etc/passwd",
        "/a/b/../../../secret.wasm",
    ];
    for p in escapes {
        // None of these names a file inside the rootfs (resolved with the
        // rootfs as `/`), so each fails; above all, none reads the secret.
        match read(p) {
            Ok((bytes, _)) => panic!("{p:?} read {} bytes: {:?}", bytes.len(), String::from_utf8_lossy(&bytes)),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    assert!(read("/loop").is_err());
    // Paths that stay inside are fine however they are spelled.
    assert!(read("//x.wasm").is_ok());
    assert!(read("/a/../app.wasm").is_ok());
    // `..` above the rootfs stays at it, as `/..` is `/` in the container:
    // this is the rootfs's own /b, never a file beside the rootfs.
    assert_eq!(read("./a/../../b").unwrap().0, b"\0asm\x01\0\0\0");
    assert!(read("/").is_err());
    assert!(read("").is_err());
    assert!(matches!(read("/a"), Err(EntrypointError::IsDir(_))));
    assert!(read("/a\0b.wasm").is_err());
    assert!(read(&format!("/{}", "a".repeat(5000))).is_err());
    assert!(read(&"/a".repeat(3000)).is_err());
}

#[test]
fn an_oversized_entrypoint_is_refused_before_it_is_read() {
    let (_d, root) = rootfs();
    let f = std::fs::File::create(root.join("huge.wasm")).unwrap();
    f.set_len(wasmcell_oci::entrypoint::MAX_WASM_BYTES + 1).unwrap(); // sparse
    let r = timed("oversized entrypoint", Duration::from_secs(1), || read_entrypoint(&root, "/huge.wasm"));
    assert!(matches!(r, Err(EntrypointError::TooLarge { .. })), "{r:?}");
}

/// A FIFO (a tar layer can carry one) named as the entrypoint: opening it for
/// reading blocks until a writer appears, which a hostile image never
/// provides. Create must fail, not hang.
#[test]
fn a_fifo_entrypoint_does_not_hang() {
    let (_d, root) = rootfs();
    let fifo = root.join("fifo.wasm");
    nix_mkfifo(&fifo);
    let (tx, rx) = std::sync::mpsc::channel();
    let r2 = root.clone();
    std::thread::spawn(move || {
        let _ = tx.send(read_entrypoint(&r2, "/fifo.wasm").map(|(b, _)| b.len()));
    });
    let got = rx.recv_timeout(Duration::from_secs(2));
    if got.is_err() {
        // Unblock the reader so the thread ends.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
    }
    let got = got.expect("read_entrypoint on a FIFO hung for 2 s");
    assert!(got.is_err(), "a FIFO is not a Wasm file: {got:?}");
}

fn nix_mkfifo(p: &Path) {
    let st = std::process::Command::new("mkfifo").arg(p).status().unwrap();
    assert!(st.success());
}

#[test]
fn layers_corpus_replays_without_panic() {
    let files = corpus("image_layers");
    assert!(!files.is_empty());
    for (path, data) in files {
        let (entry, body) = match data.iter().position(|b| *b == b'\n') {
            Some(i) => (String::from_utf8_lossy(&data[..i]).into_owned(), &data[i + 1..]),
            None => ("/app.wasm".to_string(), &data[..]),
        };
        let mut parsed = false;
        if let Ok(m) = serde_json::from_slice::<ImageManifest>(body) {
            parsed = true;
            if let Ok(l) = pick_wasm_layer(&m, &entry) {
                assert!(is_wasm_layer(l.media_type().as_ref()), "{}", path.display());
            }
        }
        if let Ok(i) = serde_json::from_slice::<ImageIndex>(body) {
            parsed = true;
            assert_eq!(pick_manifest(&i).is_ok(), !i.manifests().is_empty());
        }
        assert!(parsed, "{} parses as neither manifest nor index", path.display());
    }
}

fn manifest(layers: Vec<serde_json::Value>) -> ImageManifest {
    serde_json::from_value(json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": format!("sha256:{}", "0".repeat(64)), "size": 2},
        "layers": layers
    }))
    .unwrap()
}

#[test]
fn hostile_layer_titles_and_counts() {
    let layer = |i: usize, title: &str| {
        json!({"mediaType": "application/wasm", "digest": format!("sha256:{i:064x}"), "size": 8,
               "annotations": {"org.opencontainers.image.title": title}})
    };
    // 10,000 Wasm layers: picking one is linear and the error stays printable.
    let many: Vec<_> = (0..10_000).map(|i| layer(i, &format!("m{i}.wasm"))).collect();
    let m = manifest(many);
    let hit = timed("10,000 layers", Duration::from_secs(1), || pick_wasm_layer(&m, "/m9999.wasm")).unwrap();
    assert!(hit.digest().to_string().ends_with(&format!("{:064x}", 9999)[60..]));
    assert!(matches!(pick_wasm_layer(&m, "/none.wasm"), Err(LayerError::Ambiguous { count: 10_000, .. })));
    // Titles and entrypoints that are paths, empty, or only slashes.
    let m = manifest(vec![layer(1, "../../etc/app.wasm"), layer(2, "")]);
    assert!(pick_wasm_layer(&m, "app.wasm").unwrap().digest().to_string().ends_with('1'));
    assert!(pick_wasm_layer(&m, "/").unwrap().digest().to_string().ends_with('2'));
    assert!(pick_wasm_layer(&m, "").is_ok());
    assert!(matches!(pick_wasm_layer(&m, "///x"), Err(LayerError::Ambiguous { .. })));
}
