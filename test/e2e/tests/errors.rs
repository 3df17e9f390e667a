//! Bad input gets a clear error at create/start, and leaves nothing behind.

use wasmcell_e2e::Containerd;

fn write(c: &Containerd, name: &str, bytes: &[u8]) -> String {
    let p = c.dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

/// Runs `file` as the entrypoint of an image of its own and returns ctr's output.
fn run_image(c: &Containerd, id: &str, file: String, entry: &str) -> wasmcell_e2e::Ran {
    let name = format!("wasmcell.test/{id}:latest");
    c.import_image(&name, &[format!("{file}:{entry}")], &["--entrypoint", entry]);
    c.ctr(&["run", "--rm", "--platform", "wasi/wasm", "--runtime", wasmcell_e2e::RUNTIME, &name, id])
}

fn assert_refused(c: &Containerd, r: &wasmcell_e2e::Ran, id: &str, needle: &str) {
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains(needle), "expected {needle:?} in ctr's error: {r:?}");
    // Nothing left: no task, no mount, no shim for it.
    c.ctr(&["containers", "rm", id]);
    assert!(!c.ctr(&["task", "ls"]).stdout.contains(id));
    assert!(c.mounts().is_empty(), "mounts left: {:?}", c.mounts());
}

#[test]
fn every_bad_input_is_refused_clearly_and_cleanly() {
    let c = Containerd::start();

    let r = c.run("missing", &[], &["/nope.wasm"]);
    assert_refused(&c, &r, "missing", "/nope.wasm not found in the container's rootfs");

    let f = write(&c, "notwasm.txt", b"just some text\n");
    let r = run_image(&c, "notwasm", f, "/app.wasm");
    assert_refused(&c, &r, "notwasm", "not WebAssembly");

    let f = write(&c, "elf", b"\x7fELF\x02\x01\x01\0\0\0\0\0");
    let r = run_image(&c, "native", f, "/app.wasm");
    assert_refused(&c, &r, "native", "native ELF executable");

    let f = write(&c, "bad.wasm", b"\0asm\x01\0\0\0\x01\xff\xff\xff\xff");
    let r = run_image(&c, "malformed", f, "/app.wasm");
    assert_refused(&c, &r, "malformed", "invalid WebAssembly");

    let component =
        wat::parse_str(r#"(component (import "wasi:nothere/thing@0.1.0" (instance (export "f" (func)))))"#).unwrap();
    let f = write(&c, "imports.wasm", &component);
    let r = run_image(&c, "badimport", f, "/app.wasm");
    assert_refused(&c, &r, "badimport", "wasi:nothere/thing@0.1.0");

    let module = wat::parse_str(r#"(module (import "env" "missing_fn" (func)) (func (export "_start")))"#).unwrap();
    let f = write(&c, "imports-core.wasm", &module);
    let r = run_image(&c, "badcoreimport", f, "/app.wasm");
    assert_refused(&c, &r, "badcoreimport", "missing_fn");

    let module = wat::parse_str(r#"(module (func (export "main")))"#).unwrap();
    let f = write(&c, "nostart.wasm", &module);
    let r = run_image(&c, "nostart", f, "/app.wasm");
    assert_refused(&c, &r, "nostart", "_start");

    let component = wat::parse_str(r#"(component)"#).unwrap();
    let f = write(&c, "norun.wasm", &component);
    let r = run_image(&c, "norun", f, "/app.wasm");
    assert_refused(&c, &r, "norun", "wasi:cli/run");

    // Valid Wasm beyond the shim's per-instance limits (8 tables): said so,
    // not called invalid. It is compiled (in the shim's compiler child) and
    // refused when loaded.
    let module =
        wat::parse_str(format!(r#"(module {} (func (export "_start")))"#, "(table 1 funcref) ".repeat(9))).unwrap();
    let f = write(&c, "tables.wasm", &module);
    let r = run_image(&c, "toobig", f, "/app.wasm");
    assert_refused(&c, &r, "toobig", "per-instance limits");
    assert!(!r.stderr.contains("invalid WebAssembly"), "{r:?}");

    let r = c.run("escape", &[], &["/../../../../etc/passwd"]);
    assert_refused(&c, &r, "escape", "process.args[0]");

    // After all that, a good container still runs, and no compiler child
    // of any shim outlived its compile.
    c.run("good", &[], &["/hello.wasm"]).ok();
    let compilers = std::process::Command::new("pgrep").args(["-f", "compile-wasm"]).output().unwrap();
    assert!(compilers.stdout.is_empty(), "compiler processes left: {}", String::from_utf8_lossy(&compilers.stdout));
    c.stop_and_check_clean();
}
