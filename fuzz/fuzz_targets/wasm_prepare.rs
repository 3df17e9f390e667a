//! Arbitrary bytes as the Wasm file a container names: classify, then
//! compile and link. Invalid input must be an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wasmcell_fuzz::check_wasm(data);
});
