//! Compile once: the second start of a component loads the cached artifact;
//! a corrupt entry is recompiled, never loaded.

use wasmcell_e2e::Containerd;

fn entries(c: &Containerd) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(c.dir.path().join("cache"))
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "cwasm")).collect())
        .unwrap_or_default()
}

#[test]
fn second_start_hits_the_cache_and_corruption_is_repaired() {
    let c = Containerd::start();
    c.run("first", &[], &["/hello.wasm"]).ok();
    let e = entries(&c);
    assert_eq!(e.len(), 1, "one artifact cached: {e:?}");
    let meta = std::fs::metadata(c.dir.path().join("cache")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o700, "cache dir is private");

    // The rootfs file's identity (through the overlay, the snapshotter's
    // filesystem and the real inode) is recorded with the entry's digest.
    let ids: Vec<_> = std::fs::read_dir(c.dir.path().join("cache/ids")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let digest: String = std::fs::read(&ids[0]).unwrap().iter().map(|b| format!("{b:02x}")).collect();
    let name = e[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(&format!("{digest}-")), "{name} is named by {digest}");

    c.run("second", &[], &["/hello.wasm"]).ok();
    let log = c.log();
    assert!(log.contains("compile cache Hit"), "second start loads from the cache");
    assert!(
        log.contains("/hello.wasm: digest known from the file's identity, not read"),
        "second start does not hash the Wasm"
    );

    // Corrupt the entry: the next start still runs, from a fresh compile.
    let mut data = std::fs::read(&e[0]).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x5a;
    std::fs::write(&e[0], &data).unwrap();
    let r = c.run("third", &[], &["/hello.wasm"]);
    r.ok();
    assert!(r.stdout.contains("hello from wasmcell"));
    assert!(c.log().contains("compile cache Repaired"), "corrupt entry detected and replaced");
    c.stop_and_check_clean();
}

#[test]
fn unusable_cache_directory_still_runs_containers() {
    let c = Containerd::start_bare();
    // A file where the cache directory should be: the cache cannot open.
    std::fs::write(c.dir.path().join("cache"), b"in the way").unwrap();
    c.import_fixtures_pub();
    c.run("nocache", &[], &["/hello.wasm"]).ok();
    assert!(c.log().contains("compile cache disabled"), "the reason is logged");
    c.stop_and_check_clean();
}
