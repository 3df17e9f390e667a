//! Hostile Wasm, on stable: the committed fuzz corpus
//! (`test/fuzz-corpus/wasm_prepare`) and hand-written modules, each
//! classified and then compiled and linked by `Engine::prepare` as the shim
//! does at Create. Invalid input must be an `Err` naming why; extreme but
//! valid limits may prepare (the store's limiter and the pool bound them at
//! instantiation) but must not panic or take long.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use regressions::corpus;
use wasmcell_engine::{Engine, EngineError, Program};
use wasmcell_oci::{classify, WasmKind};

#[path = "../../../fuzz/regressions.rs"]
mod regressions;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::new().expect("engine"))
}

/// Classify, then prepare, within `limit`; `None` if it is not Wasm at all.
fn prepare(bytes: &[u8], limit: Duration) -> Option<Result<Program, EngineError>> {
    let t = Instant::now();
    let kind = classify(bytes).ok()?;
    let r = engine().prepare(bytes, kind, Default::default());
    assert!(t.elapsed() < limit, "prepare took {:?} (limit {limit:?})", t.elapsed());
    if let Err(e) = &r {
        assert!(!matches!(e, EngineError::Setup(_)), "{e}");
        assert!(!e.to_string().is_empty());
    }
    Some(r)
}

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn corpus_replays_with_the_expected_outcome() {
    let files = corpus("wasm_prepare");
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let r = prepare(bytes, SECOND);
        let ok = matches!(r, Some(Ok(_)));
        match name {
            "start.wasm" | "fd-write.wasm" => assert!(ok, "{name}: {:?}", r.map(|r| r.err())),
            "header-only.wasm" | "start-is-memory.wasm" | "component-empty.wasm" => {
                assert!(matches!(r, Some(Err(EngineError::NoEntry { .. }))), "{name}")
            }
            "unknown-import.wasm" => assert!(matches!(r, Some(Err(EngineError::Link(_)))), "{name}"),
            "garbage-after-header.wasm" | "truncated-section.wasm" | "component-garbage.wasm" => {
                assert!(matches!(r, Some(Err(EngineError::Compile(_)))), "{name}")
            }
            "elf.bin" | "script.sh" | "text.wat" | "wasm-v2.wasm" => assert!(r.is_none(), "{name}"),
            // Extreme limits: either way, but bounded (checked in prepare).
            _ => {}
        }
    }
}

#[test]
fn a_memory_minimum_of_65536_pages() {
    // 4 GiB, the whole wasm32 range: valid Wasm; the pool's slots are that
    // big and the container's memory limit refuses it at instantiation.
    let r = prepare(&wat(r#"(module (memory 65536) (func (export "_start")))"#), SECOND).unwrap();
    eprintln!("memory 65536 pages: {:?}", r.as_ref().err());
    let module = r.as_ref().map(|p| p.world().contains("core module"));
    assert!(matches!(module, Ok(true) | Err(EngineError::Compile(_))), "{:?}", r.err());
    // One page more is not Wasm.
    let mut over = wat(r#"(module (memory 1) (func (export "_start")))"#);
    let at = over.windows(3).position(|w| w == [0x05, 0x03, 0x01]).expect("memory section");
    over.splice(at..at + 5, [0x05, 0x05, 0x01, 0x00, 0x81, 0x80, 0x04]); // min = 65537 (LEB128)
    assert!(matches!(prepare(&over, SECOND).unwrap(), Err(EngineError::Compile(_))));
    // And a 64-bit memory of 2^48 pages.
    let r = prepare(&wat(r#"(module (memory i64 281474976710656) (func (export "_start")))"#), SECOND).unwrap();
    eprintln!("memory i64 2^48 pages: {:?}", r.as_ref().err());
    // Valid memory64, but larger than any pool slot: named as such.
    assert!(matches!(r, Err(EngineError::TooBig(_))), "{:?}", r.err());
}

#[test]
fn a_huge_table_minimum() {
    for t in [
        "(table 4294967295 funcref)",
        "(table 1048577 funcref)",
        "(table 4294967295 4294967295 externref)",
        "(table i64 18446744073709551615 funcref)",
    ] {
        let r = prepare(&wat(&format!(r#"(module {t} (func (export "_start")))"#)), SECOND).unwrap();
        eprintln!("{t}: {:?}", r.as_ref().err());
        assert!(matches!(r, Ok(_) | Err(EngineError::Compile(_) | EngineError::TooBig(_))), "{t}: {:?}", r.err());
    }
}

#[test]
fn a_100mb_module_of_a_valid_header_and_garbage() {
    let mut bytes = vec![0u8; 100 << 20];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for b in bytes.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    bytes[..8].copy_from_slice(b"\0asm\x01\0\0\0");
    assert!(matches!(prepare(&bytes, 2 * SECOND).unwrap(), Err(EngineError::Compile(_))));
    bytes[..8].copy_from_slice(b"\0asm\x0d\0\x01\0");
    assert!(matches!(prepare(&bytes, 2 * SECOND).unwrap(), Err(EngineError::Compile(_))));
}

#[test]
fn a_100mb_module_that_is_one_custom_section() {
    // Valid: a custom section is skipped, and nothing is left to run.
    let len: u32 = 100 << 20;
    let mut bytes = b"\0asm\x01\0\0\0\x00".to_vec();
    let mut n = len + 2; // name length byte + "x"
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        bytes.push(if n > 0 { b | 0x80 } else { b });
        if n == 0 {
            break;
        }
    }
    bytes.extend_from_slice(b"\x01x");
    bytes.resize(bytes.len() + len as usize, 0xee);
    assert!(matches!(prepare(&bytes, 2 * SECOND).unwrap(), Err(EngineError::NoEntry { .. })));
}

#[test]
fn the_kind_must_match_the_bytes() {
    let module = wat(r#"(module (func (export "_start")))"#);
    let component = wat("(component)");
    assert!(matches!(engine().prepare(&module, WasmKind::Component, Default::default()), Err(EngineError::Compile(_))));
    assert!(matches!(engine().prepare(&component, WasmKind::Module, Default::default()), Err(EngineError::Compile(_))));
    assert!(matches!(engine().prepare(b"", WasmKind::Module, Default::default()), Err(EngineError::Compile(_))));
    assert!(matches!(engine().prepare(b"", WasmKind::Component, Default::default()), Err(EngineError::Compile(_))));
}

#[test]
fn entry_points_of_the_wrong_shape() {
    // `_start` must be a function; its signature is checked when it is called.
    for m in [
        r#"(module (global (export "_start") i32 (i32.const 0)))"#,
        r#"(module (table (export "_start") 1 funcref))"#,
        r#"(module (func (export "start")))"#,
    ] {
        assert!(matches!(prepare(&wat(m), SECOND).unwrap(), Err(EngineError::NoEntry { .. })), "{m}");
    }
    let r = prepare(&wat(r#"(module (func (export "_start") (param i32) (result i32) local.get 0))"#), SECOND).unwrap();
    assert!(r.is_ok() || matches!(r, Err(EngineError::NoEntry { .. } | EngineError::Link(_))));
}

#[test]
fn many_imports_that_do_not_exist() {
    let imports: String = (0..10_000).map(|i| format!(r#"(import "env" "f{i}" (func))"#)).collect();
    let r = prepare(&wat(&format!(r#"(module {imports} (func (export "_start")))"#)), SECOND).unwrap();
    assert!(matches!(r, Err(EngineError::Link(_))), "{:?}", r.err());
    // A WASI import of the wrong type is a link error too.
    let r = prepare(
        &wat(r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i64))) (func (export "_start")))"#),
        SECOND,
    )
    .unwrap();
    assert!(matches!(r, Err(EngineError::Link(_))), "{:?}", r.err());
}

#[test]
fn deeply_nested_blocks() {
    let depth = 10_000;
    let body = format!("{}{}", "(block ".repeat(depth), ")".repeat(depth));
    let r = prepare(&wat(&format!(r#"(module (func (export "_start") {body}))"#)), 2 * SECOND).unwrap();
    assert!(matches!(r, Ok(_) | Err(EngineError::Compile(_))), "{:?}", r.err());
}

#[test]
fn more_memories_and_tables_than_the_pool_holds() {
    let mems: String = (0..8).map(|_| "(memory 1)").collect();
    let tables: String = (0..16).map(|_| "(table 1 funcref)").collect();
    for m in [mems, tables] {
        let r = prepare(&wat(&format!(r#"(module {m} (func (export "_start")))"#)), SECOND).unwrap();
        eprintln!("{m}: {:?}", r.as_ref().err());
        assert!(matches!(r, Err(EngineError::TooBig(_))), "{m}: {:?}", r.err());
    }
}
