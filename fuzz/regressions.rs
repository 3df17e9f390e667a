//! Shared by the crates' stable fuzz regression tests
//! (`crates/{grants,oci,engine}/tests/fuzz_regressions.rs`), which include
//! it with
//!
//! ```ignore
//! #[path = "../../../fuzz/regressions.rs"]
//! mod regressions;
//! ```
//!
//! It is not part of the fuzz crate (nothing here names it): it lives beside
//! the targets whose committed seed corpus it reads.

// Each including test uses what it needs of this file.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The committed seed corpus of fuzz target `target`
/// (`test/fuzz-corpus/<target>/`): every file's path and bytes, sorted by
/// path. Panics, naming the directory, when it cannot be read.
pub fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    // CARGO_MANIFEST_DIR of the including crate: crates/<name>.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test/fuzz-corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

/// Runs `f`, failing if it takes longer than `limit` (checked afterwards).
pub fn timed<T>(what: &str, limit: Duration, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    assert!(t.elapsed() < limit, "{what} took {:?} (limit {limit:?})", t.elapsed());
    out
}
