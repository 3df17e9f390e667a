//! Arbitrary bytes as a bundle's `config.json`: parse, grants, explain table.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wasmcell_fuzz::check_spec_bytes(data);
});
