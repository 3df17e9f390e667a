//! Valid core modules from wasm-smith, offered WASI preview 1 imports and
//! often required to export `_start`, so that compilation and linking (not
//! just the parser) see them. Small modules only, to keep executions fast.
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use wasmcell_oci::WasmKind;

/// Imports a WASI command may use (and one the linker does not provide).
const IMPORTS: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func (param i32) (result i32)))
  (import "env" "not_provided" (func (param i32) (result i32)))
)"#;

const START: &str = r#"(module (func (export "_start")))"#;

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("fixed WAT parses")
}

fn module(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    static IMPORTS_WASM: OnceLock<Vec<u8>> = OnceLock::new();
    static START_WASM: OnceLock<Vec<u8>> = OnceLock::new();

    let mut c = wasm_smith::Config::arbitrary(u)?;
    // Bounded size: each execution compiles the module with Cranelift.
    c.max_funcs = c.max_funcs.min(20);
    c.max_instructions = c.max_instructions.min(200);
    c.max_types = c.max_types.min(30);
    c.max_globals = c.max_globals.min(20);
    c.max_data_segments = c.max_data_segments.min(10);
    c.max_element_segments = c.max_element_segments.min(10);
    c.max_elements = c.max_elements.min(100);
    c.max_exports = c.max_exports.min(20);
    c.max_imports = c.max_imports.min(20);
    c.max_memories = c.max_memories.min(6);
    c.max_tables = c.max_tables.min(10);
    // Extreme limits are the point: memories up to 4 GiB (and 64-bit ones),
    // tables up to the default million elements; the pool has to refuse them.
    c.max_type_size = c.max_type_size.min(200);
    c.generate_custom_sections = false;
    if u.arbitrary()? {
        c.available_imports = Some(IMPORTS_WASM.get_or_init(|| wat(IMPORTS)).clone());
    }
    if u.ratio(3, 4)? {
        c.exports = Some(START_WASM.get_or_init(|| wat(START)).clone());
    }
    let m = wasm_smith::Module::new(c, u)?;
    Ok(m.to_bytes())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(bytes) = module(&mut u) else { return };
    // A generated module always has the core header.
    assert_eq!(wasmcell_oci::classify(&bytes), Ok(WasmKind::Module));
    wasmcell_fuzz::check_wasm(&bytes);
});
