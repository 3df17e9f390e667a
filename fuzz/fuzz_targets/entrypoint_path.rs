//! Arbitrary `process.args[0]` against a rootfs full of escaping symlinks:
//! the file outside the rootfs is never read.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Seg {
    Slash,
    Dot,
    DotDot,
    Name(u8),
    Raw(String),
}

const NAMES: &[&str] = &[
    "app.wasm", "bin", "tool.wasm", "sub", "back", "abs.wasm", "rel.wasm", "up", "parent", "self",
    "loop", "inner.wasm", "etc", "passwd", "notes.txt", "secret.wasm", "rootfs", "missing",
];

fuzz_target!(|segs: Vec<Seg>| {
    let mut path = String::new();
    for s in &segs {
        match s {
            Seg::Slash => path.push('/'),
            Seg::Dot => path.push('.'),
            Seg::DotDot => path.push_str(".."),
            Seg::Name(i) => path.push_str(NAMES[*i as usize % NAMES.len()]),
            Seg::Raw(r) => path.push_str(r),
        }
    }
    wasmcell_fuzz::check_entrypoint(&path);
});
