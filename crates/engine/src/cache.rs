//! Compile once: compiled artifacts cached on disk by content digest and
//! engine compatibility, so the second start of any component costs what
//! instantiation costs.
//!
//! Trust: Wasmtime deserializes native code without verifying it, so only
//! files this cache wrote are ever loaded. The directory is created 0700
//! (root-only on a node), entries are written to a private temp file and
//! renamed into place (never seen half-written), and each entry carries the
//! SHA-256 of its payload, checked before loading: a truncated or corrupt
//! entry is deleted and recompiled, never loaded.
//!
//! Concurrency: one shim per container means several processes may start
//! the same component at once; an exclusive `flock` per entry makes the
//! first compile and the others wait and load its result.

use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmcell_oci::WasmKind;

/// Default location on a node.
pub const DEFAULT_DIR: &str = "/var/lib/wasmcell/cache";
/// Default bound on the cache's total size.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

const MAGIC: &[u8; 8] = b"WCELLC01";
const HEADER: usize = 8 + 32;

/// Where and how big.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: DEFAULT_DIR.into(),
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl CacheConfig {
    /// `WASMCELL_CACHE_DIR` (empty or `off` disables the cache) and
    /// `WASMCELL_CACHE_MAX_MB`, from the shim's environment (containerd's).
    pub fn from_env() -> Option<Self> {
        let mut c = CacheConfig::default();
        if let Ok(d) = std::env::var("WASMCELL_CACHE_DIR") {
            if d.is_empty() || d == "off" {
                return None;
            }
            c.dir = d.into();
        }
        if let Some(mb) = std::env::var("WASMCELL_CACHE_MAX_MB").ok().and_then(|v| v.parse::<u64>().ok()) {
            c.max_bytes = mb << 20;
        }
        Some(c)
    }
}

/// How an artifact was obtained (for logs and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Loaded from the cache.
    Hit,
    /// Compiled and stored.
    Compiled,
    /// Compiled; a bad entry was found and replaced.
    Repaired,
}

#[derive(Debug)]
pub struct Cache {
    config: CacheConfig,
    engine_key: String,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

impl Cache {
    pub fn open(config: CacheConfig, engine: &wasmtime::Engine) -> Result<Self, String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.dir)
            .map_err(|e| io("create cache dir", &config.dir, e))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = format!("{:016x}", h.finish());
        Ok(Cache { config, engine_key })
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// The entry path for these bytes.
    pub fn entry(&self, wasm: &[u8], kind: WasmKind) -> PathBuf {
        let digest = hex::encode(Sha256::digest(wasm));
        let k = match kind {
            WasmKind::Component => "c",
            WasmKind::Module => "m",
        };
        self.config.dir.join(format!("{digest}-{}-{k}.cwasm", self.engine_key))
    }

    /// Reads and verifies an entry. `Ok(None)`: absent. `Err`: present but bad.
    fn read(path: &Path) -> Result<Option<Vec<u8>>, String> {
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("open", path, e)),
        };
        // Header and payload are read apart, the payload into a buffer of
        // its final size: a large artifact (tens of MB) is copied once.
        let len = f.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let mut header = [0u8; HEADER];
        if len < HEADER || f.read_exact(&mut header).is_err() || &header[..8] != MAGIC {
            return Err(format!("{}: not a wasmcell cache entry", path.display()));
        }
        let mut data = Vec::with_capacity(len - HEADER);
        f.read_to_end(&mut data).map_err(|e| io("read", path, e))?;
        if Sha256::digest(&data).as_slice() != &header[8..HEADER] {
            return Err(format!("{}: checksum mismatch (truncated or corrupt)", path.display()));
        }
        // Recently used: eviction goes by modification time.
        let _ = f.set_modified(SystemTime::now());
        Ok(Some(data))
    }

    fn write(&self, path: &Path, payload: &[u8]) -> Result<(), String> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let result = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&Sha256::digest(payload))?;
            f.write_all(payload)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("write cache entry", path, e));
        }
        Ok(())
    }

    /// The serialized artifact for `wasm`: from the cache, or compiled with
    /// `compile` and stored. Errors of the cache itself (full disk, read-only
    /// directory) never fail the caller: it compiles without caching.
    pub fn get_or_compile(
        &self,
        wasm: &[u8],
        kind: WasmKind,
        compile: impl FnOnce() -> Result<Vec<u8>, String>,
    ) -> Result<(Vec<u8>, Outcome), String> {
        let path = self.entry(wasm, kind);
        if let Ok(Some(bytes)) = Self::read(&path) {
            return Ok((bytes, Outcome::Hit));
        }
        let lock_path = path.with_extension("lock");
        let lock = OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(&lock_path);
        let _guard = match lock {
            Ok(f) => nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).ok(),
            Err(e) => {
                log::warn!("compile cache: {}; compiling without it", io("lock", &lock_path, e));
                None
            }
        };
        // Someone may have compiled it while we waited for the lock.
        let mut outcome = Outcome::Compiled;
        match Self::read(&path) {
            Ok(Some(bytes)) => return Ok((bytes, Outcome::Hit)),
            Ok(None) => {}
            Err(e) => {
                log::warn!("compile cache: {e}; discarding the entry");
                let _ = std::fs::remove_file(&path);
                outcome = Outcome::Repaired;
            }
        }
        let bytes = compile()?;
        match self.write(&path, &bytes) {
            Ok(()) => self.evict(&path),
            Err(e) => log::warn!("compile cache: {e}; continuing without caching"),
        }
        Ok((bytes, outcome))
    }

    /// Removes least-recently-used entries until the cache fits its bound,
    /// never the entry just written.
    fn evict(&self, keep: &Path) {
        let Ok(rd) = std::fs::read_dir(&self.config.dir) else { return };
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = rd
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.config.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                let _ = std::fs::remove_file(path.with_extension("lock"));
                total -= len;
            }
        }
    }

    /// Total size of the cached entries.
    pub fn size(&self) -> u64 {
        std::fs::read_dir(&self.config.dir)
            .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
            .unwrap_or(0)
    }

    /// Checks the directory is private (0700); the cache refuses to load
    /// from a directory others could write to.
    pub fn is_private(&self) -> bool {
        std::fs::metadata(&self.config.dir).is_ok_and(|m| m.permissions().mode() & 0o077 == 0)
    }
}

/// Loads a component artifact returned by [`Cache::get_or_compile`].
pub(crate) fn load_component(
    engine: &wasmtime::Engine,
    artifact: &[u8],
) -> Result<wasmtime::component::Component, crate::EngineError> {
    // SAFETY: `artifact` comes from `Cache::get_or_compile`: either it was
    // just produced by `Engine::precompile_component` of an engine with the
    // same configuration, or it was read from an entry this cache wrote (in a
    // root-only directory, through temp file + rename) and whose SHA-256
    // matched the one recorded at write time. Wasmtime also checks that the
    // artifact was made by a compatible engine before using it.
    unsafe { wasmtime::component::Component::deserialize(engine, artifact) }
        .map_err(|e| crate::EngineError::Compile(format!("cached artifact: {e:#}")))
}

/// Loads a module artifact returned by [`Cache::get_or_compile`].
pub(crate) fn load_module(engine: &wasmtime::Engine, artifact: &[u8]) -> Result<wasmtime::Module, crate::EngineError> {
    // SAFETY: as for `load_component`: the bytes were produced by
    // `Engine::precompile_module` here or verified against the checksum this
    // cache wrote with them.
    unsafe { wasmtime::Module::deserialize(engine, artifact) }
        .map_err(|e| crate::EngineError::Compile(format!("cached artifact: {e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn cache(dir: &Path, max: u64) -> Cache {
        let engine = wasmtime::Engine::default();
        Cache::open(CacheConfig { dir: dir.join("cache"), max_bytes: max }, &engine).unwrap()
    }

    #[test]
    fn miss_then_hit() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), 1 << 20);
        assert!(c.is_private());
        let (a, o) = c.get_or_compile(b"wasm-a", WasmKind::Module, || Ok(b"artifact-a".to_vec())).unwrap();
        assert_eq!((a.as_slice(), o), (&b"artifact-a"[..], Outcome::Compiled));
        let (a, o) = c.get_or_compile(b"wasm-a", WasmKind::Module, || panic!("must not compile")).unwrap();
        assert_eq!((a.as_slice(), o), (&b"artifact-a"[..], Outcome::Hit));
        // Same bytes as a component are another entry.
        let (_, o) = c.get_or_compile(b"wasm-a", WasmKind::Component, || Ok(b"c".to_vec())).unwrap();
        assert_eq!(o, Outcome::Compiled);
    }

    #[test]
    fn corrupt_or_truncated_entries_are_recompiled_not_loaded() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), 1 << 20);
        c.get_or_compile(b"w", WasmKind::Module, || Ok(vec![7u8; 1000])).unwrap();
        let path = c.entry(b"w", WasmKind::Module);
        // Flip a payload byte.
        let mut data = std::fs::read(&path).unwrap();
        data[HEADER + 10] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        let (a, o) = c.get_or_compile(b"w", WasmKind::Module, || Ok(vec![7u8; 1000])).unwrap();
        assert_eq!((a.len(), o), (1000, Outcome::Repaired));
        // Truncate it.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(HEADER as u64 + 3).unwrap();
        let (_, o) = c.get_or_compile(b"w", WasmKind::Module, || Ok(vec![7u8; 1000])).unwrap();
        assert_eq!(o, Outcome::Repaired);
        // Garbage with no header.
        std::fs::write(&path, b"not ours").unwrap();
        let (_, o) = c.get_or_compile(b"w", WasmKind::Module, || Ok(vec![7u8; 1000])).unwrap();
        assert_eq!(o, Outcome::Repaired);
        let (_, o) = c.get_or_compile(b"w", WasmKind::Module, || panic!("valid now")).unwrap();
        assert_eq!(o, Outcome::Hit);
    }

    #[test]
    fn evicts_least_recently_used_beyond_the_bound() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), 2500);
        let old = SystemTime::now() - std::time::Duration::from_secs(100);
        for (i, name) in [b"a", b"b"].iter().enumerate() {
            c.get_or_compile(*name, WasmKind::Module, || Ok(vec![0u8; 1000])).unwrap();
            let f = File::options().write(true).open(c.entry(*name, WasmKind::Module)).unwrap();
            f.set_modified(old + std::time::Duration::from_secs(i as u64)).unwrap();
        }
        // "a" is used again: "b" becomes the least recently used.
        c.get_or_compile(b"a", WasmKind::Module, || panic!("hit")).unwrap();
        c.get_or_compile(b"c", WasmKind::Module, || Ok(vec![0u8; 1000])).unwrap();
        assert!(c.entry(b"a", WasmKind::Module).exists());
        assert!(!c.entry(b"b", WasmKind::Module).exists(), "LRU entry evicted");
        assert!(c.entry(b"c", WasmKind::Module).exists());
        assert!(c.size() <= 2500 + 200);
    }

    #[test]
    fn concurrent_first_starts_compile_once() {
        let d = tempfile::tempdir().unwrap();
        let c = Arc::new(cache(d.path(), 1 << 20));
        let compiles = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, n) = (c.clone(), compiles.clone());
                std::thread::spawn(move || {
                    c.get_or_compile(b"same", WasmKind::Component, || {
                        n.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        Ok(b"artifact".to_vec())
                    })
                    .unwrap()
                    .0
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), b"artifact");
        }
        assert_eq!(compiles.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn unwritable_cache_still_compiles() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), 1 << 20);
        std::fs::set_permissions(c.dir(), std::fs::Permissions::from_mode(0o500)).unwrap();
        // root ignores permissions; make the entry path a directory instead so the rename fails.
        std::fs::set_permissions(c.dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::create_dir(c.entry(b"x", WasmKind::Module)).unwrap();
        let (a, _) = c.get_or_compile(b"x", WasmKind::Module, || Ok(b"ok".to_vec())).unwrap();
        assert_eq!(a, b"ok");
    }
}
