//! What every fuzz target checks, beyond "does not panic".
//!
//! The properties are the ones the crates promise a hostile container:
//! whatever the spec says, the grants name only absolute, normalized guest
//! paths; whatever bytes an image holds, the engine accepts only valid Wasm;
//! whatever `args[0]` is, the entrypoint is read from inside the rootfs.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use oci_spec::runtime::Spec;
use wasmcell_engine::{Engine, EngineError};
use wasmcell_grants::{grants, DirSource, Grants, Options, Role};
use wasmcell_oci::WasmKind;

/// The bundle every spec is judged against (only joined, never read).
pub const BUNDLE: &str = "/run/containerd/io.containerd.runtime.v2.task/default/fuzz";

/// A guest path as `normalize_abs` makes it: `/` or `/a/b`, with no empty,
/// `.` or `..` component.
pub fn is_clean_abs(p: &str) -> bool {
    p == "/"
        || (p.starts_with('/')
            && !p.ends_with('/')
            && p[1..].split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
}

/// Parses `bytes` as a `config.json` and, if it parses, checks its grants.
pub fn check_spec_bytes(bytes: &[u8]) {
    if let Ok(spec) = wasmcell_grants::parse_spec(bytes) {
        check_spec(&spec);
    }
}

/// Grants for `spec`, as the shim computes them: annotations from the spec.
pub fn check_spec(spec: &Spec) {
    let _ = wasmcell_grants::network_of(spec);
    let annotations = spec.annotations().clone().unwrap_or_default();
    let options = Options {
        bundle: PathBuf::from(BUNDLE),
    };
    match grants(spec, &annotations, &options) {
        Ok(g) => check_grants(&g),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// Properties of any grants the crate hands out.
pub fn check_grants(g: &Grants) {
    let p = &g.program;
    assert!(!p.argv.is_empty(), "grants without argv");
    assert!(is_clean_abs(&p.entrypoint) && p.entrypoint != "/", "entrypoint {:?}", p.entrypoint);
    assert!(is_clean_abs(&p.cwd), "cwd {:?}", p.cwd);
    for (i, (k, _)) in p.env.iter().enumerate() {
        assert!(!k.is_empty() && !k.contains('='), "env key {k:?}");
        assert!(!p.env[..i].iter().any(|(o, _)| o == k), "duplicate env key {k:?}");
    }
    assert_eq!(g.root.guest, "/");
    for d in &g.dirs {
        assert!(is_clean_abs(&d.guest) && d.guest != "/", "dir at {:?}", d.guest);
        if let DirSource::Host(h) = &d.source {
            let h = h.to_str().expect("bind source from a JSON string");
            assert!(is_clean_abs(h), "bind source {h:?}");
        }
    }
    for h in &g.hidden {
        assert!(is_clean_abs(&h.destination), "hidden at {:?}", h.destination);
    }
    let l = &g.limits;
    assert!(l.memory_bytes.is_none_or(|b| b > 0));
    assert!(l.instances.is_none_or(|n| n > 0));
    assert!(l.cpu_shares.is_none_or(|n| n > 0));
    if let Some(c) = l.cpu {
        assert!(c.quota_us > 0 && (1_000..=1_000_000).contains(&c.period_us), "{c:?}");
        assert!(c.cores() > 0.0);
    }
    match &g.role {
        Role::Standalone => {}
        Role::Sandbox { id } => assert!(!id.is_empty()),
        Role::PodMember { sandbox_id } => assert!(!sandbox_id.is_empty()),
    }
    let rows = g.rows();
    assert_eq!(rows[0].setting, "process.args[0]");
    let text = g.to_string();
    assert!(text.starts_with("SETTING"));
    for r in &rows {
        assert!(text.contains(&r.setting) && text.contains(&r.grant), "row {r:?} missing from the table");
    }
}

/// The shim's engine, made once per process, without a compile cache.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::new().expect("Wasmtime engine"))
}

/// What the shim does with the Wasm file a container names: classify it,
/// then compile and link it. Returns the kind and the outcome, if classified.
pub fn check_wasm(bytes: &[u8]) -> Option<(WasmKind, Result<(), String>)> {
    let _ = wasmcell_oci::component_interfaces(bytes);
    let kind = match wasmcell_oci::classify(bytes) {
        Ok(k) => k,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return None;
        }
    };
    let outcome = match engine().prepare(bytes, kind, Default::default()) {
        Ok(program) => {
            // Accepted only if it is valid Wasm by the most permissive reading.
            let mut v = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
            if let Err(e) = v.validate_all(bytes) {
                panic!("engine accepted a {kind:?} that wasmparser rejects: {e}");
            }
            if kind == WasmKind::Module {
                assert!(matches!(program, wasmcell_engine::Program::Module(_)));
            } else {
                assert!(!matches!(program, wasmcell_engine::Program::Module(_)));
            }
            Ok(())
        }
        Err(e) => {
            assert!(!matches!(e, EngineError::Setup(_)), "setup error for a guest: {e}");
            let msg = e.to_string();
            assert!(!msg.is_empty());
            Err(msg)
        }
    };
    Some((kind, outcome))
}

/// A rootfs with files, directories and symlinks that try to leave it, and a
/// file outside it that no entrypoint may ever read.
pub struct Rootfs {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub outside: PathBuf,
}

/// Marker only the file outside the rootfs holds.
pub const SECRET: &[u8] = b"SECRET-OUTSIDE-THE-ROOTFS";

pub fn rootfs() -> &'static Rootfs {
    static ROOTFS: OnceLock<Rootfs> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().to_path_buf();
        let outside = base.join("secret.wasm");
        let mut secret = b"\0asm\x01\0\0\0".to_vec();
        secret.extend_from_slice(SECRET);
        std::fs::write(&outside, &secret).unwrap();
        let root = base.join("rootfs");
        std::fs::create_dir_all(root.join("bin/sub")).unwrap();
        std::fs::write(root.join("app.wasm"), b"\0asm\x01\0\0\0inside").unwrap();
        std::fs::write(root.join("bin/tool.wasm"), b"\0asm\x0d\0\x01\0inside").unwrap();
        std::fs::write(root.join("notes.txt"), b"not wasm").unwrap();
        let links: &[(&str, &Path)] = &[
            ("abs.wasm", &outside),
            ("rel.wasm", Path::new("../secret.wasm")),
            ("up", Path::new("../../../../../../..")),
            ("parent", Path::new("..")),
            ("self", Path::new(".")),
            ("loop", Path::new("loop")),
            ("bin/sub/back", Path::new("../../../secret.wasm")),
            ("inner.wasm", Path::new("bin/tool.wasm")),
            ("etc", Path::new("/etc")),
        ];
        for (name, target) in links {
            symlink(target, root.join(name)).unwrap();
        }
        Rootfs {
            _dir: dir,
            path: root,
            outside,
        }
    })
}

/// Reads `guest_path` as the shim reads an entrypoint; nothing outside the
/// rootfs may come back.
pub fn check_entrypoint(guest_path: &str) {
    let r = rootfs();
    match wasmcell_oci::read_entrypoint(&r.path, guest_path) {
        Ok((bytes, _kind)) => {
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET),
                "entrypoint {guest_path:?} read the file outside the rootfs ({})",
                r.outside.display()
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// An image manifest or index from a content store, and the entrypoint the
/// container names: pick the manifest and the layer without panicking.
pub fn check_layers(json: &[u8], entrypoint: &str) {
    if let Ok(m) = serde_json::from_slice::<oci_spec::image::ImageManifest>(json) {
        if let Ok(l) = wasmcell_oci::layers::pick_wasm_layer(&m, entrypoint) {
            assert!(wasmcell_oci::layers::is_wasm_layer(&l.media_type().to_string()));
        }
    }
    if let Ok(i) = serde_json::from_slice::<oci_spec::image::ImageIndex>(json) {
        match wasmcell_oci::layers::pick_manifest(&i) {
            Ok(_) => assert!(!i.manifests().is_empty()),
            Err(e) => assert!(i.manifests().is_empty(), "{e}"),
        }
    }
}
