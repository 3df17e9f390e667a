//! Arbitrary JSON as an image manifest or index, and an arbitrary entrypoint:
//! which manifest and which Wasm layer a container runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First line: the entrypoint; the rest: the manifest or index.
    let (entry, json) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"/app.wasm"[..], data),
    };
    wasmcell_fuzz::check_layers(json, &String::from_utf8_lossy(entry));
});
