use thiserror::Error;

/// What a file holds, decided from its header bytes (never from its name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WasmKind {
    /// A component (WASI 0.2+): runs as `wasi:cli/command` or `wasi:http/proxy`.
    Component,
    /// A core module: runs `_start` with WASI preview 1.
    Module,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NotWasm {
    #[error("file is empty")]
    Empty,
    #[error("file is a native ELF executable, not WebAssembly; run it with a Linux runtime (runc) instead")]
    Elf,
    #[error("file is a script (starts with #!), not WebAssembly")]
    Script,
    #[error("file is WebAssembly text (.wat); compile it to binary .wasm first")]
    Text,
    #[error("file is not WebAssembly (no \\0asm header; starts with {0})")]
    Unknown(String),
    #[error("WebAssembly header with unsupported version/layer {0:02x?}")]
    UnsupportedVersion([u8; 4]),
}

/// Classifies `bytes` by their 8-byte header.
pub fn classify(bytes: &[u8]) -> Result<WasmKind, NotWasm> {
    if bytes.is_empty() {
        return Err(NotWasm::Empty);
    }
    if wasmparser::Parser::is_component(bytes) {
        return Ok(WasmKind::Component);
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Ok(WasmKind::Module);
    }
    if bytes.starts_with(b"\0asm") && bytes.len() >= 8 {
        let mut v = [0u8; 4];
        v.copy_from_slice(&bytes[4..8]);
        return Err(NotWasm::UnsupportedVersion(v));
    }
    if bytes.starts_with(b"\x7fELF") {
        return Err(NotWasm::Elf);
    }
    if bytes.starts_with(b"#!") {
        return Err(NotWasm::Script);
    }
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(16)]).into_owned();
    if head.trim_start().starts_with("(module") || head.trim_start().starts_with("(component") {
        return Err(NotWasm::Text);
    }
    Err(NotWasm::Unknown(format!("{:02x?}", &bytes[..bytes.len().min(8)])))
}

/// The top-level imports and exports of a component, by name (e.g.
/// `wasi:cli/run@0.2.0`), for the Wasm OCI artifact config. Nested
/// components and modules are skipped. Empty lists for anything unparsable.
pub fn component_interfaces(bytes: &[u8]) -> (Vec<String>, Vec<String>) {
    use wasmparser::{Parser, Payload};
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { break };
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(r) if depth == 0 => {
                imports.extend(r.into_iter().flatten().map(|i| i.name.name.to_string()));
            }
            Payload::ComponentExportSection(r) if depth == 0 => {
                exports.extend(r.into_iter().flatten().map(|e| e.name.name.to_string()));
            }
            _ => {}
        }
    }
    (imports, exports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: Vec<(&[u8], Result<WasmKind, NotWasm>)> = vec![
            (b"\0asm\x01\0\0\0", Ok(WasmKind::Module)),
            (b"\0asm\x0d\0\x01\0", Ok(WasmKind::Component)),
            (b"", Err(NotWasm::Empty)),
            (b"\x7fELF\x02\x01", Err(NotWasm::Elf)),
            (b"#!/bin/sh\n", Err(NotWasm::Script)),
            (b"(module)", Err(NotWasm::Text)),
            (b"\0asm\x02\0\0\0", Err(NotWasm::UnsupportedVersion([2, 0, 0, 0]))),
            (b"hello", Err(NotWasm::Unknown("[68, 65, 6c, 6c, 6f]".into()))),
        ];
        for (bytes, want) in cases {
            assert_eq!(classify(bytes), want, "{bytes:?}");
        }
    }
}
