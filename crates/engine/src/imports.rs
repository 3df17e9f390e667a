//! Saying why a component cannot link: which of its imports wasmcell does not
//! serve, and what it does serve. Wasmtime reports only the first import it
//! could not match, in terms of types ("has the wrong type: function
//! implementation is missing"); a user needs every interface the host lacks,
//! by name and version.

use wasmtime::component::{Component, Linker};

/// The interface families the linker serves: (package, versions) with the
/// version as `major.minor`, under which any patch links (the component
/// model's semver rules).
const SERVED: &[(&str, &[&str])] = &[
    ("wasi:cli", &["0.2", "0.3"]),
    ("wasi:clocks", &["0.2", "0.3"]),
    ("wasi:filesystem", &["0.2", "0.3"]),
    ("wasi:io", &["0.2"]),
    ("wasi:random", &["0.2", "0.3"]),
    ("wasi:sockets", &["0.2", "0.3"]),
    ("wasi:http", &["0.2", "0.3"]),
    ("wasi:config", &["0.2"]),
    ("wasi:keyvalue", &["0.2"]),
];

/// What wasmcell serves, for messages.
pub const SERVED_FAMILIES: &str = "WASI 0.2.x (wasi:cli, wasi:clocks, wasi:filesystem, wasi:io, wasi:random, \
     wasi:sockets), WASI 0.3.x (wasi:cli, wasi:clocks, wasi:filesystem, wasi:random, wasi:sockets), and wasi:http \
     0.2.x (incoming-handler, outgoing-handler) and 0.3.x (handler, client), wasi:config/store 0.2.0-rc.1, and \
     wasi:keyvalue 0.2.0-draft (store, atomics, batch; with a grant)";

/// Whether an import name (`pkg:ns/iface@1.2.3`) is of a family in
/// [`SERVED`]. Unversioned and non-`wasi` names are not.
pub(crate) fn family_served(name: &str) -> bool {
    let Some((path, version)) = name.split_once('@') else { return false };
    let Some((package, _iface)) = path.split_once('/') else { return false };
    let mut parts = version.split('.');
    let (Some(major), Some(minor)) = (parts.next(), parts.next()) else { return false };
    let minor = minor.split(['-', '+']).next().unwrap_or(minor);
    let mm = format!("{major}.{minor}");
    SERVED.iter().any(|(p, vs)| *p == package && vs.contains(&mm.as_str()))
}

/// The import Wasmtime named in a link error ("component imports instance
/// `X`, but ..."), if any.
fn named_by(err: &wasmtime::Error) -> Option<String> {
    let text = format!("{err:#}");
    let rest = &text[text.find("component imports ")?..];
    let start = rest.find('`')? + 1;
    let len = rest[start..].find('`')?;
    Some(rest[start..start + len].to_string())
}

/// A link error that names every import of `component` outside the served
/// families, plus the one Wasmtime stopped at, lists what is served, and
/// keeps Wasmtime's own words last.
pub(crate) fn explain<T: 'static>(linker: &Linker<T>, component: &Component, err: wasmtime::Error) -> wasmtime::Error {
    let engine = linker.engine();
    let mut missing: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .filter(|name| !family_served(name))
        .collect();
    if let Some(n) = named_by(&err) {
        if !missing.contains(&n) {
            missing.push(n);
        }
    }
    if missing.is_empty() {
        return err;
    }
    let list = missing.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    wasmtime::format_err!(
        "the component imports {} that wasmcell does not serve: {list}; wasmcell serves {SERVED_FAMILIES} \
         (Wasmtime: {err:#})",
        if missing.len() == 1 { "an interface" } else { "interfaces" },
    )
}

/// The import modules a core module may use: WASI preview 1.
const P1_MODULES: &[&str] = &["wasi_snapshot_preview1"];

/// A Wasm file's top-level exports and imports, read without compiling it.
struct Shape {
    component: bool,
    /// Export names.
    exports: Vec<String>,
    /// A core module exports a `_start` function.
    start: bool,
    /// A component's import names.
    imports: Vec<String>,
    /// A core module's imports from modules no WASI host provides, as
    /// `module::name`.
    foreign: Vec<String>,
}

/// `None` when the file does not parse (the compiler says where).
fn shape(wasm: &[u8]) -> Option<Shape> {
    let mut s = Shape { component: false, exports: Vec::new(), start: false, imports: Vec::new(), foreign: Vec::new() };
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.ok()? {
            wasmparser::Payload::Version { encoding, .. } => {
                if depth == 0 {
                    s.component = encoding == wasmparser::Encoding::Component;
                }
                depth += 1;
            }
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentExportSection(r) if depth == 1 => {
                s.exports.extend(r.into_iter().flatten().map(|e| e.name.name.to_string()));
            }
            wasmparser::Payload::ComponentImportSection(r) if depth == 1 => {
                s.imports.extend(r.into_iter().flatten().map(|i| i.name.name.to_string()));
            }
            wasmparser::Payload::ExportSection(r) if depth == 1 => {
                for e in r {
                    let e = e.ok()?;
                    s.start |= e.name == "_start" && e.kind == wasmparser::ExternalKind::Func;
                    s.exports.push(e.name.to_string());
                }
            }
            wasmparser::Payload::ImportSection(r) if depth == 1 => {
                for i in r.into_imports() {
                    let i = i.ok()?;
                    if !P1_MODULES.contains(&i.module) {
                        s.foreign.push(format!("{}::{}", i.module, i.name));
                    }
                }
            }
            _ => {}
        }
    }
    Some(s)
}

/// A component's top-level import names (none if it does not parse).
pub(crate) fn component_imports(wasm: &[u8]) -> Vec<String> {
    shape(wasm).filter(|s| s.component).map(|s| s.imports).unwrap_or_default()
}

/// Refuses, before any compile, a core module that cannot run as a WASI
/// command: one without a `_start` function (a reactor or library build,
/// often made for a JavaScript host), or one importing from modules no WASI
/// host provides. Reading imports and exports takes milliseconds even for a
/// large module; compiling it can take half a minute. Malformed modules, and
/// components passed as modules, are left to the compiler, which says what
/// is wrong.
pub(crate) fn check_module(wasm: &[u8]) -> Result<(), crate::EngineError> {
    let Some(Shape { component: false, start, foreign, .. }) = shape(wasm) else { return Ok(()) };
    let shown = |v: &[String]| {
        let mut s = v.iter().take(20).map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ");
        if v.len() > 20 {
            s.push_str(&format!(" and {} more", v.len() - 20));
        }
        s
    };
    match (start, foreign.is_empty()) {
        (true, true) => Ok(()),
        (true, false) => Err(crate::EngineError::Link(format!(
            "the core module imports what no WASI host provides: {}; a core module may import only from \
             `wasi_snapshot_preview1` (WASI preview 1)",
            shown(&foreign)
        ))),
        (false, _) => Err(crate::EngineError::NoEntry {
            what: format!(
                "core module does not export a _start function: it is not a WASI command (only commands can \
                 run as a container; a reactor or a build for another host cannot){}",
                if foreign.is_empty() {
                    String::new()
                } else {
                    format!("; it also imports what no WASI host provides: {}", shown(&foreign))
                }
            ),
        }),
    }
}

/// What a Wasm file would run as, read from its exports and imports without
/// compiling it (for `wasmcell explain`): the world, and the imports wasmcell
/// would refuse.
pub fn describe(wasm: &[u8]) -> String {
    let Some(s) = shape(wasm) else { return "not valid WebAssembly".into() };
    let has = |prefix: &str| s.exports.iter().find(|e| e.starts_with(prefix)).cloned();
    let (world, refused): (String, Vec<String>) = if s.component {
        let world = if let Some(e) = has("wasi:http/handler@0.3") {
            format!("WASI 0.3 HTTP server ({e}), up to {} requests per instance", crate::http3::MAX_CONCURRENT)
        } else if let Some(e) = has("wasi:http/incoming-handler@0.2") {
            format!("WASI 0.2 HTTP server ({e}), an instance per request")
        } else if let Some(e) = has("wasi:cli/run@0.3") {
            format!("WASI 0.3 command ({e})")
        } else if let Some(e) = has("wasi:cli/run@0.2") {
            format!("WASI 0.2 command ({e})")
        } else {
            "nothing: it exports no wasi:cli/run or HTTP handler (refused at create)".into()
        };
        (world, s.imports.iter().filter(|i| !family_served(i)).cloned().collect())
    } else {
        let world = if s.start {
            "WASI preview 1 command (_start)".to_string()
        } else {
            "nothing: a core module without _start (refused at create)".to_string()
        };
        (world, s.foreign)
    };
    if refused.is_empty() {
        world
    } else {
        format!("{world}; refused at create for its imports: {}", refused.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_by_package_and_minor_version() {
        assert!(family_served("wasi:cli/environment@0.2.6"));
        assert!(family_served("wasi:cli/environment@0.3.0"));
        assert!(family_served("wasi:http/handler@0.3.2"));
        assert!(family_served("wasi:http/types@0.3.0-rc-2025-09-16"));
        assert!(family_served("wasi:io/streams@0.2.0"));
        assert!(!family_served("wasi:io/streams@0.3.0"));
        assert!(family_served("wasi:keyvalue/store@0.2.0-draft"));
        assert!(family_served("wasi:config/store@0.2.0-rc.1"));
        assert!(!family_served("wasi:keyvalue/store@0.3.0"));
        assert!(!family_served("wasi:cli/environment@0.4.0"));
        assert!(!family_served("acme:db/query@1.0.0"));
        assert!(!family_served("wasi:cli/environment"));
        assert!(!family_served("env"));
    }

    #[test]
    fn the_import_wasmtime_stopped_at() {
        let e = wasmtime::format_err!(
            "component imports instance `wasi:cli/environment@0.3.0`, but a matching implementation was not found"
        );
        assert_eq!(named_by(&e).as_deref(), Some("wasi:cli/environment@0.3.0"));
        assert_eq!(named_by(&wasmtime::format_err!("something else")), None);
    }
}
