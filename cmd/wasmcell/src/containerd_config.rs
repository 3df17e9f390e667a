//! `wasmcell containerd-config add|remove`: register the CRI runtime handler
//! `wasmtime` in containerd's config.toml, and take it out again.
//!
//! The file is read with `toml_edit`; the change itself is one block of lines
//! between two marker comments,
//!
//! ```text
//! # wasmcell runtime handler
//! [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime]
//!   runtime_type = "io.containerd.wasmtime.v1"
//!   pod_annotations = ["wasmcell.dev/*"]
//!   container_annotations = ["wasmcell.dev/*"]
//! # end wasmcell runtime handler
//! ```
//!
//! appended to the file (after one blank line) or rewritten in place. The
//! rest of the file is never re-serialised, so every byte outside the block
//! (comments, quoting, indentation, line endings, a missing final newline)
//! stays as it was, and `remove` can give back the original bytes. Every new
//! text is parsed again before it is written, and must register the runtime
//! as intended; a file that cannot be edited safely is refused with an error
//! and left alone.
//!
//! What `add` does, by the file's schema (its top-level `version`: none means
//! 1; 2 is containerd 1.x; 3 is containerd 2.x; anything else is refused):
//! - the table `<cri>.containerd.runtimes.wasmtime` with `runtime_type =
//!   "io.containerd.wasmtime.v1"`, `<cri>` being `plugins.cri` (version 1),
//!   `plugins."io.containerd.grpc.v1.cri"` (2) or
//!   `plugins."io.containerd.cri.v1.runtime"` (3), and `pod_annotations` /
//!   `container_annotations` = `["wasmcell.dev/*"]`: containerd's CRI passes
//!   a pod's (a container's) annotations to a runtime only when its handler
//!   lists them, and wasmcell's grants (`wasmcell.dev/keyvalue`) are
//!   annotations;
//! - for version 1 and 2, when the file does not register runc there and runc
//!   is its default runtime (`default_runtime_name` unset or "runc"), also
//!   `runc` (`io.containerd.runc.v2`): containerd 1.x replaces its built-in
//!   runtime list with the file's, and without its default runtime its CRI
//!   plugin refuses to load. Another runtime of the file (a second wasmcell
//!   handler such as `wasmtime-strict`) does not stand in for runc;
//! - the file before the block is appended is kept as
//!   `<config>.wasmcell-backup`;
//! - no file: it is created as `version = 2` (read by containerd 1.6 to 2.x)
//!   holding only the block, runc included; its directory must exist;
//! - a `wasmtime` runtime registered without the markers is left alone if its
//!   runtime_type is wasmcell's (with a warning if it does not pass the
//!   `wasmcell.dev/*` annotations), and is an error otherwise;
//! - a marked block that differs from this one (an older installer's, without
//!   the annotations) is rewritten in place.
//!
//! `remove` takes the block (and the blank line `add` put before it) out. If
//! the result is the backup, the backup's bytes are put back and the backup is
//! deleted; a file that `add` created is deleted.
//!
//! Writes go to a temporary file in the same directory, which is renamed over
//! the config (through a symbolic link: over its target), with the config's
//! mode and owner: containerd never reads a half-written file.

use std::ffi::OsString;
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use toml_edit::{DocumentMut, Item, TableLike};

pub const MARK_BEGIN: &str = "# wasmcell runtime handler";
pub const MARK_END: &str = "# end wasmcell runtime handler";
pub const RUNTIME_TYPE: &str = "io.containerd.wasmtime.v1";
pub const RUNC_TYPE: &str = "io.containerd.runc.v2";
/// The first lines of a config file that `add` created.
const CREATED_HEADER: &str = "# Created by the wasmcell node installer: there was no containerd config\n\
# file, containerd ran on its built-in defaults. 'install.sh uninstall'\n\
# deletes this file again as long as it holds nothing else.\n";
/// What a created file holds besides the block.
const CREATED_BASE: &str = "version = 2\n";
const BACKUP_SUFFIX: &str = ".wasmcell-backup";
/// The annotations containerd's CRI passes to the runtime: wasmcell's grants.
pub const ANNOTATIONS: &str = "wasmcell.dev/*";

/// The CRI plugin section that holds `containerd.runtimes`, by schema.
fn plugin_keys(schema: i64) -> &'static [&'static str] {
    match schema {
        1 => &["plugins", "cri"],
        2 => &["plugins", "io.containerd.grpc.v1.cri"],
        _ => &["plugins", "io.containerd.cri.v1.runtime"],
    }
}

/// `plugin_keys(schema)` + containerd.runtimes.
fn runtimes_keys(schema: i64) -> Vec<&'static str> {
    let mut k = plugin_keys(schema).to_vec();
    k.extend(["containerd", "runtimes"]);
    k
}

/// A dotted key as a table header spells it: bare keys bare, others quoted.
fn dotted(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| {
            if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                k.to_string()
            } else {
                format!("\"{}\"", k.replace('\\', "\\\\").replace('"', "\\\""))
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn runtime_table(schema: i64, name: &str) -> String {
    let mut k = runtimes_keys(schema);
    k.push(name);
    dotted(&k)
}

/// The marked block for `schema`; `runc` also registers runc.
pub fn render_block(schema: i64, runc: bool) -> String {
    let mut b = format!("{MARK_BEGIN}\n");
    if runc {
        b.push_str("# runc, containerd's default runtime: this file did not register it, and\n");
        b.push_str("# containerd 1.x keeps only the runtimes a config file lists.\n");
        b.push_str(&format!("[{}]\n  runtime_type = \"{RUNC_TYPE}\"\n", runtime_table(schema, "runc")));
    }
    b.push_str(&format!("[{}]\n  runtime_type = \"{RUNTIME_TYPE}\"\n", runtime_table(schema, "wasmtime")));
    b.push_str(&format!("  pod_annotations = [\"{ANNOTATIONS}\"]\n  container_annotations = [\"{ANNOTATIONS}\"]\n"));
    b.push_str(MARK_END);
    b.push('\n');
    b
}

// --- reading ------------------------------------------------------------------

fn parse(text: &str, what: &str) -> Result<DocumentMut> {
    text.parse::<DocumentMut>().map_err(|e| anyhow!("{what} is not valid TOML: {e}"))
}

/// "an integer", "a string", "an inline table", ...
fn a(item: &Item) -> String {
    let t = item.type_name();
    let article = if t.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {t}")
}

/// Where the path to a schema's `containerd.runtimes` leads.
enum Runtimes<'a> {
    /// Some table on the way is not there (so neither are the runtimes).
    Missing,
    /// The runtimes table (`inline`: it, or a table on the way, is an inline
    /// table, given as a value, so no `[table]` can be added below it).
    Found { table: &'a dyn TableLike, inline: Option<String> },
    /// A key on the way holds something other than a table.
    WrongType { path: String, found: String },
}

fn runtimes(doc: &DocumentMut, schema: i64) -> Runtimes<'_> {
    let keys = runtimes_keys(schema);
    let mut table: &dyn TableLike = doc.as_table();
    let mut inline = None;
    for (i, key) in keys.iter().enumerate() {
        let Some(item) = table.get(key) else { return Runtimes::Missing };
        let path = dotted(&keys[..=i]);
        match item.as_table_like() {
            Some(t) => {
                if item.is_inline_table() && inline.is_none() {
                    inline = Some(path);
                }
                table = t;
            }
            None => return Runtimes::WrongType { path, found: a(item) },
        }
    }
    Runtimes::Found { table, inline }
}

/// The CRI plugin's default runtime in a file: its
/// `containerd.default_runtime_name`, "runc" when unset.
fn default_runtime(doc: &DocumentMut, schema: i64) -> String {
    let mut item = doc.as_item();
    for key in plugin_keys(schema).iter().chain(&["containerd", "default_runtime_name"]) {
        match item.as_table_like().and_then(|t| t.get(key)) {
            Some(i) => item = i,
            None => return "runc".to_string(),
        }
    }
    item.as_str().unwrap_or("runc").to_string()
}

/// A runtime named wasmtime, as a file defines it.
enum Wasmtime {
    Absent,
    /// A table; its runtime_type ("" when not a string or not set).
    Defined(String),
    /// Not a table.
    WrongType(String),
}

fn wasmtime(runtimes: &dyn TableLike) -> Wasmtime {
    match runtimes.get("wasmtime") {
        None => Wasmtime::Absent,
        Some(item) => match item.as_table_like() {
            Some(t) => Wasmtime::Defined(t.get("runtime_type").and_then(Item::as_str).unwrap_or("").to_string()),
            None => Wasmtime::WrongType(a(item)),
        },
    }
}

/// Whether the runtime wasmtime's `pod_annotations` let wasmcell's
/// annotation `wasmcell.dev/keyvalue` through (as containerd matches them:
/// Go's `path.Match`, whose `*` and `?` never match a `/`).
fn passes_annotations(runtimes: &dyn TableLike) -> bool {
    let Some(patterns) = runtimes.get("wasmtime").and_then(|w| w.get("pod_annotations")).and_then(Item::as_array)
    else {
        return false;
    };
    patterns.iter().filter_map(|p| p.as_str()).any(|p| glob(p.as_bytes(), b"wasmcell.dev/keyvalue"))
}

/// Go's `path.Match` for `*` and `?` (other characters literal).
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).take_while(|&i| i == 0 || s[i - 1] != b'/').any(|i| glob(rest, &s[i..])),
        Some((b'?', rest)) => s.first().is_some_and(|&c| c != b'/') && glob(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// The schema a file declares: its top-level `version`, 1 if none.
fn schema(doc: &DocumentMut, name: &str) -> Result<i64> {
    match doc.get("version") {
        None => Ok(1),
        Some(item) => match item.as_integer() {
            Some(v @ 1..=3) => Ok(v),
            Some(v) => bail!(
                "{name}: config version {v} is not one this command knows (1, 2 or 3); \
                 add the runtime handler by hand (docs/install.md)"
            ),
            None => bail!("{name}: `version` is {}, not an integer", a(item)),
        },
    }
}

/// The lines of a text, each with its line ending.
fn lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').collect()
}

fn is_line(line: &str, what: &str) -> bool {
    line.trim() == what
}

/// The marked blocks of a text: (first line, last line) pairs.
fn blocks(lines: &[&str], name: &str) -> Result<Vec<(usize, usize)>> {
    let mut out = Vec::new();
    let mut open = None;
    for (i, l) in lines.iter().enumerate() {
        match open {
            None if is_line(l, MARK_BEGIN) => open = Some(i),
            Some(b) if is_line(l, MARK_END) => {
                out.push((b, i));
                open = None;
            }
            _ => {}
        }
    }
    if open.is_some() {
        bail!("{name} has the line '{MARK_BEGIN}' but no '{MARK_END}' after it; remove the partial block by hand");
    }
    Ok(out)
}

/// The text with its marked blocks removed, each with the one blank line
/// before it that `add` wrote; with `replacement`, the first block is
/// replaced by it instead (its blank line stays) and later ones removed.
fn splice(lines: &[&str], blocks: &[(usize, usize)], replacement: Option<&str>) -> String {
    let mut drop = vec![false; lines.len()];
    let mut insert_at = None;
    for (n, &(b, e)) in blocks.iter().enumerate() {
        drop[b..=e].iter_mut().for_each(|d| *d = true);
        if n == 0 && replacement.is_some() {
            insert_at = Some(b);
        } else if b > 0 && !drop[b - 1] && lines[b - 1].trim().is_empty() {
            drop[b - 1] = true;
        }
    }
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        if insert_at == Some(i) {
            out.push_str(replacement.unwrap_or_default());
        }
        if !drop[i] {
            out.push_str(l);
        }
    }
    out
}

/// What the file says apart from the block(s) of an earlier add: parsed, and
/// as text. The blocks themselves need not be valid (two copies of the block
/// are a duplicate table): they are replaced or removed.
fn outside_blocks(
    current: &str,
    lines: &[&str],
    marked: &[(usize, usize)],
    name: &str,
) -> Result<(DocumentMut, String)> {
    let whole = parse(current, name);
    if marked.is_empty() {
        return Ok((whole?, current.to_string()));
    }
    let base = splice(lines, marked, None);
    match parse(&base, &format!("{name} without the wasmcell block")) {
        Ok(doc) => Ok((doc, base)),
        // The whole file's error has the file's own line numbers.
        Err(e) => Err(whole.err().unwrap_or(e)),
    }
}

// --- planning -------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
pub enum AddAction {
    /// Nothing to change.
    Keep,
    /// Append the block (back the file up first).
    Append,
    /// Rewrite the marked block in place.
    Replace,
    /// Create the file.
    Create,
}

#[derive(Debug)]
pub struct AddPlan {
    pub action: AddAction,
    /// The whole new file (for Keep: the current one).
    pub text: String,
    /// The block as written.
    pub block: String,
    pub schema: i64,
    /// What to tell the user, in order: (is a warning, message).
    pub notes: Vec<(bool, String)>,
}

/// What `add` does to a config holding `current` (None: no such file);
/// `name` is how messages call the file.
pub fn plan_add(current: Option<&str>, name: &str) -> Result<AddPlan> {
    let Some(current) = current else {
        let block = render_block(2, true);
        let text = format!("{CREATED_HEADER}{CREATED_BASE}\n{block}");
        verify(&text, 2, true, name, "")?;
        return Ok(AddPlan {
            action: AddAction::Create,
            text,
            block,
            schema: 2,
            notes: vec![(
                false,
                format!("{name} does not exist: containerd runs on its built-in defaults; creating it (version = 2)"),
            )],
        });
    };
    let lines = lines(current);
    let marked = blocks(&lines, name)?;
    let (doc, _) = outside_blocks(current, &lines, &marked, name)?;
    let schema = schema(&doc, name)?;
    let table = runtime_table(schema, "wasmtime");
    let mut notes: Vec<(bool, String)> = Vec::new();

    if schema == 1 {
        notes.push((
            true,
            format!(
                "{name} is a version 1 config (no 'version = 2' line). containerd 1.x reads it, but containerd 2.x \
             ignores the CRI settings of a version 1 file, this handler included; convert it with \
             'containerd config migrate'."
            ),
        ));
    }
    if let Some(d) = doc.get("disabled_plugins") {
        let cri = ["cri", "io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"];
        if d.as_array().is_some_and(|a| a.iter().any(|v| v.as_str().is_some_and(|s| cri.contains(&s)))) {
            notes.push((
                true,
                format!(
                "{name} disables the CRI plugin (disabled_plugins = {}): Kubernetes cannot use this containerd until \
                 it is enabled",
                d.to_string().trim()
            ),
            ));
        }
    }

    let (existing, has_runc, inline, annotated) = match runtimes(&doc, schema) {
        Runtimes::Missing => (Wasmtime::Absent, false, None, false),
        Runtimes::WrongType { path, found } => {
            bail!(
                "{name}: {path} is {found}, not a table, so the table [{table}] cannot be added; fix the file by hand"
            )
        }
        Runtimes::Found { table: t, inline } => (wasmtime(t), t.contains_key("runc"), inline, passes_annotations(t)),
    };
    // containerd 1.x replaces its built-in runtimes (runc) with the file's,
    // and its CRI plugin does not load without the default runtime: runc is
    // needed when it is the default (default_runtime_name unset or "runc")
    // and the file, outside the block, does not register it. Another
    // handler (wasmtime-strict, a kata) is no runc. (containerd 2.x merges
    // its runtimes with the file's, but also reads version 1 and 2 files.)
    let needs_runc = schema != 3 && !has_runc && default_runtime(&doc, schema) == "runc";
    match existing {
        Wasmtime::WrongType(found) => {
            bail!("{name}: {table} is {found}, not a table; fix or remove it by hand")
        }
        Wasmtime::Defined(t) => {
            if !marked.is_empty() {
                bail!(
                    "{name} defines the runtime wasmtime both inside the wasmcell block and outside it (a duplicate \
                     table: containerd refuses such a file); remove one by hand"
                );
            }
            if t != RUNTIME_TYPE {
                bail!(
                    "{name} already defines a runtime named wasmtime with runtime_type \"{t}\", not \
                     \"{RUNTIME_TYPE}\"; fix or remove it by hand"
                );
            }
            notes.push((
                false,
                format!("{name} already registers runtime wasmtime (added by hand, without the wasmcell markers): left as is"),
            ));
            if !annotated {
                notes.push((
                    true,
                    format!(
                        "{name}: the runtime wasmtime does not list pod_annotations = [\"{ANNOTATIONS}\"], so \
                         containerd's CRI does not pass a pod's wasmcell.dev/keyvalue annotation to wasmcell; add \
                         pod_annotations = [\"{ANNOTATIONS}\"] and container_annotations = [\"{ANNOTATIONS}\"] to \
                         [{table}]"
                    ),
                ));
            }
            if needs_runc {
                notes.push((
                    true,
                    format!(
                        "{name} does not register runc, the default runtime: containerd 1.x then has no runc, and its \
                         CRI plugin does not load; add [{}] with runtime_type = \"{RUNC_TYPE}\"",
                        runtime_table(schema, "runc")
                    ),
                ));
            }
            return Ok(AddPlan {
                action: AddAction::Keep,
                text: current.to_string(),
                block: String::new(),
                schema,
                notes,
            });
        }
        Wasmtime::Absent => {}
    }
    if let Some(path) = inline {
        bail!(
            "{name} gives {path} as a value (an inline table), so the table [{table}] cannot be added to it; add \
             the runtime wasmtime (runtime_type = \"{RUNTIME_TYPE}\") there by hand"
        );
    }
    for other in [1, 2, 3] {
        if other == schema {
            continue;
        }
        if let Runtimes::Found { table: t, .. } = runtimes(&doc, other) {
            if !matches!(wasmtime(t), Wasmtime::Absent) {
                notes.push((
                    true,
                    format!(
                    "{name} also defines a runtime wasmtime in the section of schema {other} ({}); a version {schema} \
                     file registers CRI runtimes under [{table}]",
                    dotted(plugin_keys(other))
                ),
                ));
            }
        }
    }
    if marked.is_empty() && doc.contains_key("imports") {
        notes.push((
            true,
            format!(
            "{name} uses 'imports'. On containerd 1.6, an imported file that defines the CRI plugin section replaces \
             this file's CRI section, including the block added here; if so, put the block in that file instead."
        ),
        ));
    }

    let runc = needs_runc;
    let block = render_block(schema, runc);
    let (action, text) = if let Some(&(b, e)) = marked.first() {
        if marked.len() == 1 && lines[b..=e].concat() == block {
            notes.push((false, format!("{name} already has the wasmcell runtime handler: left as is")));
            (AddAction::Keep, current.to_string())
        } else {
            (AddAction::Replace, splice(&lines, &marked, Some(&block)))
        }
    } else {
        // The block starts on a line of its own, after one blank line.
        let nl = if !current.is_empty() && !current.ends_with('\n') { "\n" } else { "" };
        (AddAction::Append, format!("{current}{nl}\n{block}"))
    };
    if action != AddAction::Keep {
        verify(&text, schema, runc, name, &table)?;
    }
    Ok(AddPlan { action, text, block, schema, notes })
}

/// A new text must parse and register what `add` means to register.
fn verify(text: &str, schema: i64, runc: bool, name: &str, table: &str) -> Result<()> {
    let doc = text.parse::<DocumentMut>().map_err(|e| {
        anyhow!(
            "{name}: adding the table [{table}] would not give valid TOML, so the file was left alone; add the \
             runtime wasmtime (runtime_type = \"{RUNTIME_TYPE}\") by hand:\n{e}"
        )
    })?;
    let Runtimes::Found { table: t, .. } = runtimes(&doc, schema) else {
        bail!("{name}: the edited file does not register the runtime wasmtime; left alone")
    };
    let ok = matches!(wasmtime(t), Wasmtime::Defined(ref ty) if ty == RUNTIME_TYPE)
        && passes_annotations(t)
        && (!runc || t.get("runc").and_then(|r| r.get("runtime_type")).and_then(Item::as_str) == Some(RUNC_TYPE));
    if !ok {
        bail!("{name}: the edited file does not register the runtime wasmtime as intended; left alone");
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
pub enum RemoveAction {
    /// Nothing to change.
    Keep,
    /// Delete the file (`add` created it).
    Delete,
    /// Put the backup's bytes back and delete the backup.
    Restore,
    /// Write the text without the block.
    Strip,
}

#[derive(Debug)]
pub struct RemovePlan {
    pub action: RemoveAction,
    /// For Strip, the new file.
    pub text: String,
    pub notes: Vec<(bool, String)>,
}

/// What `remove` does to a config holding `current`, with `backup` the
/// backup `add` made (if there is one).
pub fn plan_remove(current: &str, backup: Option<&[u8]>, name: &str) -> Result<RemovePlan> {
    let lines = lines(current);
    let marked = blocks(&lines, name)?;
    let (doc, text) = outside_blocks(current, &lines, &marked, name)?;
    if marked.is_empty() {
        let by_hand = [1, 2, 3].into_iter().any(|s| match runtimes(&doc, s) {
            Runtimes::Found { table, .. } => !matches!(wasmtime(table), Wasmtime::Absent),
            _ => false,
        });
        let note = if by_hand {
            format!("{name} registers a runtime wasmtime that the installer did not add: left as is")
        } else {
            format!("{name} has no wasmcell runtime handler: nothing to remove there")
        };
        return Ok(RemovePlan { action: RemoveAction::Keep, text: current.to_string(), notes: vec![(false, note)] });
    }
    if text == format!("{CREATED_HEADER}{CREATED_BASE}") {
        return Ok(RemovePlan { action: RemoveAction::Delete, text, notes: Vec::new() });
    }
    if let Some(b) = backup {
        // add appended a newline to a last line that had none.
        let mut b = b.to_vec();
        if !b.is_empty() && !b.ends_with(b"\n") {
            b.push(b'\n');
        }
        if b == text.as_bytes() {
            return Ok(RemovePlan { action: RemoveAction::Restore, text, notes: Vec::new() });
        }
    }
    Ok(RemovePlan { action: RemoveAction::Strip, text, notes: Vec::new() })
}

// --- files ----------------------------------------------------------------------

fn backup_path(config: &Path) -> PathBuf {
    let mut p = OsString::from(config.as_os_str());
    p.push(BACKUP_SUFFIX);
    PathBuf::from(p)
}

/// The config's text, None if there is no file; errors for anything but a
/// regular file (or a symbolic link to one) holding UTF-8.
fn read_config(config: &Path) -> Result<Option<String>> {
    let name = config.display();
    match fs::metadata(config) {
        Ok(m) if m.is_file() => {}
        Ok(_) => bail!("{name} is not a regular file"),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if fs::symlink_metadata(config).is_ok() {
                bail!("{name} is a symbolic link to a file that does not exist");
            }
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("read {name}")),
    }
    let bytes = fs::read(config).with_context(|| format!("read {name}"))?;
    String::from_utf8(bytes).map(Some).map_err(|_| anyhow!("{name} is not valid TOML: it is not UTF-8 text"))
}

/// Replaces the file at `path` (through a symbolic link: its target) with
/// `bytes`, by writing a temporary file in the same directory and renaming
/// it: readers see the old file or the new one, never a part. The new file
/// gets the mode and owner of `like` (None: 0644, the caller's owner).
fn write_atomic(path: &Path, bytes: &[u8], like: Option<&Path>) -> Result<()> {
    let target = if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        fs::canonicalize(path).with_context(|| format!("resolve {}", path.display()))?
    } else {
        path.to_path_buf()
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{base}.wasmcell-tmp"))
        .tempfile_in(&dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    let (mode, owner) = match like {
        Some(l) => {
            let m = fs::metadata(l).with_context(|| format!("stat {}", l.display()))?;
            (m.permissions().mode() & 0o7777, Some((m.uid(), m.gid())))
        }
        None => (0o644, None),
    };
    let result = (|| -> std::io::Result<()> {
        tmp.write_all(bytes)?;
        tmp.as_file().set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            let m = tmp.as_file().metadata()?;
            if (m.uid(), m.gid()) != (uid, gid) {
                std::os::unix::fs::fchown(tmp.as_file(), Some(uid), Some(gid))?;
            }
        }
        tmp.as_file().sync_all()
    })();
    result.with_context(|| format!("write {}", tmp.path().display()))?;
    tmp.persist(&target).map_err(|e| anyhow!("rename over {}: {}", target.display(), e.error))?;
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
fn mode_of(path: &Path) -> Result<u32> {
    Ok(fs::metadata(path).with_context(|| format!("stat {}", path.display()))?.permissions().mode() & 0o7777)
}

fn print_notes(notes: &[(bool, String)]) {
    for (warning, m) in notes {
        if *warning {
            eprintln!("warning: {m}");
        } else {
            println!("{m}");
        }
    }
}

fn indented(block: &str) -> String {
    block.lines().map(|l| format!("    {l}\n")).collect()
}

/// `wasmcell containerd-config add`. With `check`, only decides: errors as
/// `add` would, prints nothing else and changes nothing.
pub fn add(config: &Path, check: bool) -> Result<()> {
    let name = config.display().to_string();
    let current = read_config(config)?;
    if current.is_none() {
        let dir = config.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.is_dir() {
            bail!(
                "neither {name} nor its directory exists: is containerd installed, and is this the config file it \
                 reads?"
            );
        }
    }
    let plan = plan_add(current.as_deref(), &name)?;
    if check {
        return Ok(());
    }
    print_notes(&plan.notes);
    match plan.action {
        AddAction::Keep => {}
        AddAction::Create => {
            write_atomic(config, plan.text.as_bytes(), None)?;
            println!("created {name} with the runtime handler 'wasmtime'");
        }
        AddAction::Append => {
            let backup = backup_path(config);
            write_atomic(&backup, current.as_deref().unwrap_or_default().as_bytes(), Some(config))?;
            println!("previous config saved as {}", backup.display());
            write_atomic(config, plan.text.as_bytes(), Some(config))?;
            print!(
                "added the runtime handler 'wasmtime' to {name} (config version {}):\n{}",
                plan.schema,
                indented(&plan.block)
            );
        }
        AddAction::Replace => {
            write_atomic(config, plan.text.as_bytes(), Some(config))?;
            print!("rewrote the wasmcell block in {name} (config version {}):\n{}", plan.schema, indented(&plan.block));
        }
    }
    Ok(())
}

/// `wasmcell containerd-config remove`; `check` as for [`add`].
pub fn remove(config: &Path, check: bool) -> Result<()> {
    let name = config.display().to_string();
    let Some(current) = read_config(config)? else {
        if !check {
            println!("no containerd config at {name}: nothing to remove there");
        }
        return Ok(());
    };
    let backup = backup_path(config);
    let backup_bytes = match fs::read(&backup) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("read {}", backup.display())),
    };
    let plan = plan_remove(&current, backup_bytes.as_deref(), &name)?;
    if check {
        return Ok(());
    }
    print_notes(&plan.notes);
    match plan.action {
        RemoveAction::Keep => {}
        RemoveAction::Delete => {
            fs::remove_file(config).with_context(|| format!("delete {name}"))?;
            println!("deleted {name}, which the installer had created");
        }
        RemoveAction::Restore => {
            write_atomic(config, backup_bytes.as_deref().unwrap_or_default(), Some(config))?;
            fs::remove_file(&backup).with_context(|| format!("delete {}", backup.display()))?;
            println!("restored {name} as it was before install (and deleted {})", backup.display());
        }
        RemoveAction::Strip => {
            write_atomic(config, plan.text.as_bytes(), Some(config))?;
            println!("removed the wasmcell runtime handler from {name}");
            if backup_bytes.is_some() {
                println!(
                    "{name} was edited after install, so it was not replaced by {} (the file before install); delete \
                     that when no longer needed",
                    backup.display()
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = r#"version = 2
root = "/var/lib/containerd"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      # the runtimes
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = true
"#;

    const V3: &str = r#"version = 3
[plugins]
  [plugins.'io.containerd.cri.v1.runtime']
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
"#;

    const V2_NO_RUNTIMES: &str = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \"/usr/lib/cni\"\n";

    const V1: &str = "root = \"/var/lib/containerd\"\n[plugins.cri]\n  [plugins.cri.containerd.runtimes.runc]\n    runtime_type = \"io.containerd.runc.v2\"\n";

    fn add_text(current: &str) -> AddPlan {
        plan_add(Some(current), "config.toml").unwrap()
    }

    fn add_err(current: &str) -> String {
        format!("{:#}", plan_add(Some(current), "config.toml").unwrap_err())
    }

    /// The runtime_type of runtime `name` in schema's section, read by toml_edit.
    fn runtime_type(text: &str, schema: i64, name: &str) -> Option<String> {
        let doc: DocumentMut = text.parse().unwrap();
        let Runtimes::Found { table, .. } = runtimes(&doc, schema) else { return None };
        table.get(name)?.get("runtime_type")?.as_str().map(String::from)
    }

    #[test]
    fn v2_appends_only_the_wasmtime_table() {
        let p = add_text(V2);
        assert_eq!(p.action, AddAction::Append);
        assert_eq!(p.schema, 2);
        assert_eq!(
            p.text,
            format!(
                "{V2}\n{MARK_BEGIN}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\n  \
                 runtime_type = \"{RUNTIME_TYPE}\"\n  pod_annotations = [\"wasmcell.dev/*\"]\n  \
                 container_annotations = [\"wasmcell.dev/*\"]\n{MARK_END}\n"
            )
        );
        assert_eq!(runtime_type(&p.text, 2, "wasmtime").as_deref(), Some(RUNTIME_TYPE));
        assert_eq!(runtime_type(&p.text, 2, "runc").as_deref(), Some(RUNC_TYPE));
        assert!(p.notes.iter().all(|(w, _)| !w), "{:?}", p.notes);
    }

    /// The string array `key` of runtime `name` in schema's section.
    fn runtime_list(text: &str, schema: i64, name: &str, key: &str) -> Vec<String> {
        let doc: DocumentMut = text.parse().unwrap();
        let Runtimes::Found { table, .. } = runtimes(&doc, schema) else { return Vec::new() };
        let Some(a) = table.get(name).and_then(|t| t.get(key)).and_then(Item::as_array) else { return Vec::new() };
        a.iter().map(|v| v.as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn every_schema_passes_the_wasmcell_annotations() {
        let created = plan_add(None, "c").unwrap().text;
        for (text, schema) in [(add_text(V1).text, 1), (add_text(V2).text, 2), (add_text(V3).text, 3), (created, 2)] {
            for key in ["pod_annotations", "container_annotations"] {
                assert_eq!(runtime_list(&text, schema, "wasmtime", key), ["wasmcell.dev/*"], "{key}:\n{text}");
            }
            // Only wasmcell's handler: runc's table is left as it was.
            assert!(runtime_list(&text, schema, "runc", "pod_annotations").is_empty(), "{text}");
        }
    }

    #[test]
    fn a_block_without_the_annotations_is_rewritten() {
        // What an installer before the annotations wrote.
        let old_block = format!(
            "{MARK_BEGIN}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\n  \
             runtime_type = \"{RUNTIME_TYPE}\"\n{MARK_END}\n"
        );
        let p = add_text(&format!("{V2}\n{old_block}"));
        assert_eq!(p.action, AddAction::Replace);
        assert_eq!(p.text, add_text(V2).text);
        assert_eq!(plan_remove(&p.text, Some(V2.as_bytes()), "c").unwrap().action, RemoveAction::Restore);
    }

    #[test]
    fn annotation_patterns_match_as_containerd_matches_them() {
        for (pattern, passes) in [
            ("wasmcell.dev/*", true),
            ("wasmcell.dev/keyvalue", true),
            ("*/*", true),
            ("wasmcell.*/k?yvalue", true),
            ("*", false),
            ("wasmcell.dev/", false),
            ("example.com/*", false),
        ] {
            assert_eq!(glob(pattern.as_bytes(), b"wasmcell.dev/keyvalue"), passes, "{pattern}");
        }
    }

    #[test]
    fn v3_uses_the_containerd_2_section_and_no_runc() {
        let p = add_text(V3);
        assert!(p.text.starts_with(V3));
        assert!(p.text.contains("\n[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.wasmtime]\n"));
        assert_eq!(p.text.matches("runtimes.runc]").count(), 1);
        assert_eq!(runtime_type(&p.text, 3, "wasmtime").as_deref(), Some(RUNTIME_TYPE));
        // Version 3 without any runtime: containerd 2.x keeps its runc.
        let p = add_text("version = 3\n");
        assert!(!p.text.contains("runc"), "{}", p.text);
    }

    #[test]
    fn no_runtimes_registers_runc_too() {
        let p = add_text(V2_NO_RUNTIMES);
        assert!(p.text.starts_with(V2_NO_RUNTIMES));
        assert_eq!(runtime_type(&p.text, 2, "runc").as_deref(), Some(RUNC_TYPE));
        assert_eq!(runtime_type(&p.text, 2, "wasmtime").as_deref(), Some(RUNTIME_TYPE));
        assert_eq!(p.block, render_block(2, true));
    }

    #[test]
    fn another_handler_is_no_runc() {
        // A file without runc, whose only runtime is a second wasmcell handler
        // added by hand: runc still goes into the block.
        let strict = "\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime-strict]\n  \
                      runtime_type = \"io.containerd.wasmtime.v1\"\n  \
                      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime-strict.options]\n    \
                      ConfigPath = \"/etc/wasmcell/strict.toml\"\n";
        let p = add_text(&format!("{V2_NO_RUNTIMES}{strict}"));
        assert_eq!(p.block, render_block(2, true));
        // Added after install: a second install keeps runc in the block.
        let installed = add_text(V2_NO_RUNTIMES).text;
        let p = add_text(&format!("{installed}{strict}"));
        assert_eq!(p.action, AddAction::Keep, "{}", p.text);
        assert_eq!(runtime_type(&p.text, 2, "runc").as_deref(), Some(RUNC_TYPE));
        // Another default runtime, registered: no runc.
        let crun = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"crun\"\n\
                    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.crun]\n  runtime_type = \"io.containerd.runc.v2\"\n";
        assert_eq!(add_text(crun).block, render_block(2, false));
    }

    #[test]
    fn version_1_uses_plugins_cri_and_warns() {
        let p = add_text(V1);
        assert_eq!(p.schema, 1);
        assert!(p.text.contains("[plugins.cri.containerd.runtimes.wasmtime]\n"));
        assert_eq!(runtime_type(&p.text, 1, "wasmtime").as_deref(), Some(RUNTIME_TYPE));
        assert!(p.notes.iter().any(|(w, m)| *w && m.contains("version 1")), "{:?}", p.notes);
    }

    #[test]
    fn add_is_idempotent_byte_for_byte() {
        for original in [V1, V2, V3, V2_NO_RUNTIMES, "version = 2\nroot = \"/x\"", "", "version = 2\r\n[grpc]\r\n"] {
            let once = add_text(original);
            assert_ne!(once.action, AddAction::Keep, "{original:?}");
            let twice = add_text(&once.text);
            assert_eq!(twice.action, AddAction::Keep, "{original:?}");
            assert_eq!(twice.text, once.text);
            assert!(twice.notes.iter().any(|(_, m)| m.contains("left as is")));
        }
        let created = plan_add(None, "c").unwrap();
        assert_eq!(created.action, AddAction::Create);
        assert_eq!(add_text(&created.text).action, AddAction::Keep);
    }

    #[test]
    fn add_then_remove_gives_back_the_original() {
        // Without a backup: exact for any file that ends in a newline.
        for original in [V1, V2, V3, V2_NO_RUNTIMES, "", "version = 2\n\n\n", "version = 2\r\n[grpc]\r\n  # x\r\n"] {
            let added = add_text(original).text;
            let r = plan_remove(&added, None, "c").unwrap();
            assert_eq!(r.action, RemoveAction::Strip);
            assert_eq!(r.text, original);
        }
        // With the backup add made: exact for any file.
        let original = "version = 2\nroot = \"/x\"";
        let added = add_text(original).text;
        assert!(added.starts_with("version = 2\nroot = \"/x\"\n\n# wasmcell"));
        let r = plan_remove(&added, Some(original.as_bytes()), "c").unwrap();
        assert_eq!(r.action, RemoveAction::Restore);
        // A file created by add is deleted again.
        let created = plan_add(None, "c").unwrap().text;
        assert_eq!(plan_remove(&created, None, "c").unwrap().action, RemoveAction::Delete);
    }

    #[test]
    fn remove_after_edits_keeps_them() {
        let added = add_text(V2).text;
        let edited = added.replace("pause:3.9", "pause:3.10");
        let r = plan_remove(&edited, Some(V2.as_bytes()), "c").unwrap();
        assert_eq!(r.action, RemoveAction::Strip);
        assert_eq!(r.text, V2.replace("pause:3.9", "pause:3.10"));
        // Nothing of ours: nothing to do.
        let r = plan_remove(V2, None, "c").unwrap();
        assert_eq!(r.action, RemoveAction::Keep);
        assert!(r.notes[0].1.contains("nothing to remove"));
    }

    #[test]
    fn outdated_block_is_rewritten_in_place() {
        let good = add_text(V2_NO_RUNTIMES).text;
        let old = good.replace(&render_block(2, true), &render_block(2, false));
        let trailer = "# a later comment\n";
        let p = add_text(&format!("{old}{trailer}"));
        assert_eq!(p.action, AddAction::Replace);
        assert_eq!(p.text, format!("{good}{trailer}"));
        // Two blocks (a duplicate table, so not valid TOML) become one; remove
        // takes both.
        let twice = format!("{good}\n{}", render_block(2, true));
        assert!(twice.parse::<DocumentMut>().is_err());
        let p = add_text(&twice);
        assert_eq!(p.action, AddAction::Replace);
        assert_eq!(p.text, good);
        assert_eq!(plan_remove(&twice, None, "c").unwrap().text, V2_NO_RUNTIMES);
    }

    #[test]
    fn wasmtime_registered_by_hand() {
        let by_hand = format!(
            "{V2}\n# by hand\n[ plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes.wasmtime ]\n  runtime_type = '{RUNTIME_TYPE}'\n"
        );
        let p = add_text(&by_hand);
        assert_eq!(p.action, AddAction::Keep);
        assert_eq!(p.text, by_hand);
        assert!(p.notes.iter().any(|(_, m)| m.contains("already registers runtime wasmtime")));
        assert!(p.notes.iter().any(|(w, m)| *w && m.contains("pod_annotations")), "{:?}", p.notes);
        let annotated = format!("{by_hand}  pod_annotations = ['wasmcell.dev/*']\n");
        assert!(add_text(&annotated).notes.iter().all(|(w, _)| !w), "{:?}", add_text(&annotated).notes);
        let r = plan_remove(&by_hand, None, "c").unwrap();
        assert_eq!(r.action, RemoveAction::Keep);
        assert!(r.notes[0].1.contains("did not add"));

        // Also as dotted keys or an inline table.
        let dotted = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes.wasmtime.runtime_type = \"io.containerd.wasmtime.v1\"\nruntimes.runc.runtime_type = \"io.containerd.runc.v2\"\n";
        assert_eq!(add_text(dotted).action, AddAction::Keep);
        let inline = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes = { wasmtime = { runtime_type = \"io.containerd.wasmtime.v1\" } }\n";
        assert_eq!(add_text(inline).action, AddAction::Keep);

        // Another runtime_type: refused.
        let wrong = format!(
            "{V2}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\n  runtime_type = \"io.containerd.runc.v2\"\n"
        );
        assert!(add_err(&wrong).contains("already defines a runtime named wasmtime"), "{}", add_err(&wrong));
        // Inside and outside the block: refused.
        let both = format!(
            "{}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime.options]\n",
            add_text(V2).text
        );
        assert!(add_err(&both).contains("both inside the wasmcell block and outside it"), "{}", add_err(&both));
    }

    #[test]
    fn configs_that_cannot_be_edited_are_refused() {
        let cases = [
            ("version = 2\n[plugins\n", "is not valid TOML"),
            ("version = 2\n[grpc]\n[grpc]\n", "is not valid TOML"),
            ("version = 4\n", "config version 4"),
            ("version = \"2\"\n", "not an integer"),
            ("version = 2\nplugins = \"x\"\n", "plugins is a string, not a table"),
            (
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\ncontainerd = 3\n",
                "plugins.\"io.containerd.grpc.v1.cri\".containerd is an integer, not a table",
            ),
            (
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes]\nwasmtime = \"x\"\n",
                "runtimes.wasmtime is a string, not a table",
            ),
            (
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\ncontainerd = { runtimes = { runc = { runtime_type = \"io.containerd.runc.v2\" } } }\n",
                "as a value (an inline table)",
            ),
            ("version = 2\n# wasmcell runtime handler\n", "remove the partial block by hand"),
            ("version = 2\n[[plugins]]\n", "plugins is an array of tables, not a table"),
        ];
        for (text, want) in cases {
            let e = add_err(text);
            assert!(e.contains(want), "{text:?}: {e}");
        }
        assert!(format!("{:#}", plan_remove("[a\n", None, "c").unwrap_err()).contains("not valid TOML"));
    }

    #[test]
    fn warnings() {
        let p = add_text("version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\nimports = [\"/etc/x.toml\"]\n[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.wasmtime]\nruntime_type = \"x\"\n");
        let warnings: Vec<&String> = p.notes.iter().filter(|(w, _)| *w).map(|(_, m)| m).collect();
        assert!(warnings.iter().any(|m| m.contains("disables the CRI plugin")), "{warnings:?}");
        assert!(warnings.iter().any(|m| m.contains("uses 'imports'")), "{warnings:?}");
        assert!(warnings.iter().any(|m| m.contains("schema 3")), "{warnings:?}");
    }

    // --- files ---

    fn tmp_config(text: Option<&str>, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let c = d.path().join("config.toml");
        if let Some(t) = text {
            fs::write(&c, t).unwrap();
            fs::set_permissions(&c, fs::Permissions::from_mode(mode)).unwrap();
        }
        (d, c)
    }

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn files_add_and_remove_restore_bytes_mode_and_directory() {
        let original = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"p\"";
        let (d, c) = tmp_config(Some(original), 0o600);
        add(&c, false).unwrap();
        let added = fs::read_to_string(&c).unwrap();
        assert_eq!(runtime_type(&added, 2, "wasmtime").as_deref(), Some(RUNTIME_TYPE));
        assert_eq!(mode_of(&c).unwrap(), 0o600);
        assert_eq!(fs::read_to_string(backup_path(&c)).unwrap(), original);
        assert_eq!(mode_of(&backup_path(&c)).unwrap(), 0o600);
        assert_eq!(entries(d.path()), ["config.toml", "config.toml.wasmcell-backup"]);
        add(&c, false).unwrap();
        assert_eq!(fs::read_to_string(&c).unwrap(), added);
        remove(&c, false).unwrap();
        assert_eq!(fs::read_to_string(&c).unwrap(), original);
        assert_eq!(mode_of(&c).unwrap(), 0o600);
        assert_eq!(entries(d.path()), ["config.toml"]);
        remove(&c, false).unwrap();
        assert_eq!(fs::read_to_string(&c).unwrap(), original);
    }

    #[test]
    fn files_created_and_deleted_again() {
        let (d, c) = tmp_config(None, 0);
        add(&c, true).unwrap();
        assert!(!c.exists(), "--check changes nothing");
        add(&c, false).unwrap();
        let created = fs::read_to_string(&c).unwrap();
        assert!(created.lines().any(|l| l == "version = 2"));
        assert_eq!(runtime_type(&created, 2, "runc").as_deref(), Some(RUNC_TYPE));
        assert_eq!(mode_of(&c).unwrap(), 0o644);
        remove(&c, true).unwrap();
        assert!(c.exists(), "--check changes nothing");
        remove(&c, false).unwrap();
        assert!(entries(d.path()).is_empty());
        // No directory: an error.
        let e = add(&d.path().join("nope/config.toml"), true).unwrap_err();
        assert!(e.to_string().contains("nor its directory exists"), "{e}");
    }

    #[test]
    fn files_refused_are_left_alone() {
        let (d, c) = tmp_config(Some("version = 2\n[plugins\n"), 0o644);
        for check in [true, false] {
            assert!(format!("{:#}", add(&c, check).unwrap_err()).contains("not valid TOML"));
        }
        assert_eq!(fs::read_to_string(&c).unwrap(), "version = 2\n[plugins\n");
        assert_eq!(entries(d.path()), ["config.toml"]);
        fs::write(&c, b"\xff\xfe").unwrap();
        assert!(format!("{:#}", add(&c, false).unwrap_err()).contains("not UTF-8"));
        fs::remove_file(&c).unwrap();
        fs::create_dir(&c).unwrap();
        assert!(format!("{:#}", add(&c, false).unwrap_err()).contains("not a regular file"));
    }

    #[test]
    fn files_keep_their_owner() {
        let (_d, c) = tmp_config(Some(V2), 0o644);
        if std::os::unix::fs::chown(&c, Some(1234), Some(1235)).is_err() {
            eprintln!("note: not root, the owner is not checked");
            return;
        }
        add(&c, false).unwrap();
        let m = fs::metadata(&c).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 1235));
        let m = fs::metadata(backup_path(&c)).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 1235));
        remove(&c, false).unwrap();
        let m = fs::metadata(&c).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 1235));
    }

    #[test]
    fn files_through_a_symlink_edit_its_target() {
        let (d, real) = tmp_config(Some(V2), 0o640);
        let link = d.path().join("link.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        add(&link, false).unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(runtime_type(&fs::read_to_string(&real).unwrap(), 2, "wasmtime").as_deref(), Some(RUNTIME_TYPE));
        assert_eq!(mode_of(&real).unwrap(), 0o640);
        remove(&link, false).unwrap();
        assert_eq!(fs::read_to_string(&real).unwrap(), V2);
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(entries(d.path()), ["config.toml", "link.toml"]);
    }
}
