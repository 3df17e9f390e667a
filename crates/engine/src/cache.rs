//! Compile once: compiled artifacts cached on disk by content digest and
//! engine compatibility, so the second start of any component costs what
//! instantiation costs.
//!
//! Trust: Wasmtime deserializes native code without verifying it, so only
//! files this cache wrote are ever loaded. The directory is created 0700
//! (root-only on a node), entries are written to private temp files and
//! renamed into place (never seen half-written), and each artifact has a
//! side file with its length and checksum (XXH3-128), checked before
//! loading: a truncated or corrupt entry is deleted and recompiled, never
//! loaded. Entries are named by the BLAKE3 of the Wasm, so Wasm crafted to
//! collide with another tenant's cannot take its entry.
//!
//! Cost: the artifact itself is Wasmtime's own file format, so a hit maps it
//! (`deserialize_file`) instead of copying it into the heap: code pages and
//! memory images are shared through the page cache by every shim running
//! that component, and a warm start of a large component costs a checksum
//! pass over the mapped artifact, not reads and copies of tens of MB.
//!
//! Identities: a warm start need not read the Wasm at all. Next to the
//! entries, `ids/` maps a rootfs file's identity (filesystem, inode, size,
//! modification and change times; see [`wasmcell_oci::FileId`]) to the
//! BLAKE3 of its content, recorded when the file was first hashed. A write
//! to the file moves its change time, so a changed file is a new identity
//! and is hashed again. The map only names an entry; an entry missing or
//! bad still means the Wasm is read and checked against the name.
//!
//! Concurrency: one shim per container means several processes may start
//! the same component at once; an exclusive `flock` per entry makes the
//! first compile and the others wait and load its result.

use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use wasmcell_oci::{FileId, WasmKind};

/// Default location on a node.
pub const DEFAULT_DIR: &str = "/var/lib/wasmcell/cache";
/// Default bound on the cache's total size.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;
/// Bound on the number of file identities remembered (a few bytes each).
const MAX_IDS: usize = if cfg!(test) { 64 } else { 4096 };

/// The side file: magic, artifact length (u64 LE), XXH3-128 of the artifact
/// (LE). The checksum guards against truncation and corruption, not against
/// a forger: whoever could write the artifact could write this file too, so
/// a fast non-cryptographic hash is the right tool. The cache *key*, which
/// a tenant's Wasm bytes choose, is cryptographic (BLAKE3).
const MAGIC: &[u8; 8] = b"WCELLS03";
const SUM_LEN: usize = 8 + 8 + 16;

/// Where and how big.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { dir: DEFAULT_DIR.into(), max_bytes: DEFAULT_MAX_BYTES }
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
    /// Opens (creating it 0700 if missing) the cache directory. Entries are
    /// native code that this process maps and runs, so the directory is the
    /// trust boundary: it is refused (the caller then runs without a cache)
    /// unless it and every directory above it are owned by this process's
    /// user or root and writable by nobody else (a sticky directory such as
    /// `/tmp` is allowed above it, as it lets no one else rename what is in
    /// it). Nothing in a refused directory is read.
    pub fn open(config: CacheConfig, engine: &wasmtime::Engine) -> Result<Self, String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.dir)
            .map_err(|e| io("create cache dir", &config.dir, e))?;
        check_trusted(&config.dir, nix::unistd::geteuid().as_raw())?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = format!("{:016x}", h.finish());
        Ok(Cache { config, engine_key })
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// The artifact path for Wasm whose BLAKE3 is `digest` (see [`digest`]);
    /// its checksum is the same path with the extension `sum`.
    pub fn entry(&self, digest: &blake3::Hash, kind: WasmKind) -> PathBuf {
        let digest = digest.to_hex();
        let k = match kind {
            WasmKind::Component => "c",
            WasmKind::Module => "m",
        };
        self.config.dir.join(format!("{digest}-{}-{k}.cwasm", self.engine_key))
    }

    /// Opens and verifies an entry. `Ok(None)`: absent. `Err`: present but
    /// bad. The returned handle is the very file that was verified.
    fn read(path: &Path) -> Result<Option<File>, String> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("open", path, e)),
        };
        let sum_path = path.with_extension("sum");
        let mut sum = Vec::with_capacity(SUM_LEN);
        match File::open(&sum_path).and_then(|s| s.take(SUM_LEN as u64 + 1).read_to_end(&mut sum)) {
            Ok(SUM_LEN) if &sum[..8] == MAGIC => {}
            Ok(_) => return Err(format!("{}: not a wasmcell checksum", sum_path.display())),
            Err(e) => return Err(io("read", &sum_path, e)),
        }
        let want_len = u64::from_le_bytes(sum[8..16].try_into().expect("8 bytes"));
        let len = f.metadata().map_err(|e| io("stat", path, e))?.len();
        if len != want_len {
            return Err(format!("{}: {len} bytes, {want_len} expected (truncated)", path.display()));
        }
        let hash = checksum_file(&f).map_err(|e| io("read", path, e))?;
        if hash.to_le_bytes() != sum[16..SUM_LEN] {
            return Err(format!("{}: checksum mismatch (corrupt)", path.display()));
        }
        // Recently used: eviction goes by modification time.
        let _ = f.set_modified(SystemTime::now());
        Ok(Some(f))
    }

    /// Writes the checksum, then the artifact: a complete artifact is only
    /// ever seen with its checksum next to it. On any failure nothing of the
    /// entry stays behind.
    fn write(&self, path: &Path, payload: &[u8]) -> Result<(), String> {
        let sum_path = path.with_extension("sum");
        let pid = std::process::id();
        let tmp = path.with_extension(format!("tmp{pid}"));
        let sum_tmp = path.with_extension(format!("sumtmp{pid}"));
        let mut sum = Vec::with_capacity(SUM_LEN);
        sum.extend_from_slice(MAGIC);
        sum.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        sum.extend_from_slice(&xxhash_rust::xxh3::xxh3_128(payload).to_le_bytes());
        let put = |p: &Path, data: &[u8]| -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(p)?;
            f.write_all(data)?;
            f.sync_all()
        };
        let result = put(&sum_tmp, &sum)
            .and_then(|()| put(&tmp, payload))
            .and_then(|()| std::fs::rename(&sum_tmp, &sum_path))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            for p in [&tmp, &sum_tmp, &sum_path] {
                let _ = std::fs::remove_file(p);
            }
            return Err(io("write cache entry", path, e));
        }
        Ok(())
    }

    /// Whether an entry for this Wasm is there (not checked).
    pub fn contains(&self, digest: &blake3::Hash, kind: WasmKind) -> bool {
        self.entry(digest, kind).exists()
    }

    /// The compiled artifact for `wasm` if the cache holds a sound one.
    pub fn get(&self, digest: &blake3::Hash, kind: WasmKind) -> Option<Artifact> {
        match Self::read(&self.entry(digest, kind)) {
            Ok(Some(f)) => Some(Artifact(Art::File(f))),
            _ => None,
        }
    }

    /// The compiled artifact for `wasm`: from the cache, or compiled with
    /// `compile` and stored. Errors of the cache itself (full disk, read-only
    /// directory) never fail the caller: it compiles without caching.
    pub fn get_or_compile<E>(
        &self,
        digest: &blake3::Hash,
        kind: WasmKind,
        compile: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<(Artifact, Outcome), E> {
        let path = self.entry(digest, kind);
        if let Ok(Some(f)) = Self::read(&path) {
            return Ok((Artifact(Art::File(f)), Outcome::Hit));
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
            Ok(Some(f)) => return Ok((Artifact(Art::File(f)), Outcome::Hit)),
            Ok(None) => {}
            Err(e) => {
                log::warn!("compile cache: {e}; discarding the entry");
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(path.with_extension("sum"));
                outcome = Outcome::Repaired;
            }
        }
        let bytes = compile()?;
        match self.write(&path, &bytes) {
            Ok(()) => {
                self.evict(&path);
                // Loaded from the file just written, so that even the first
                // start shares its code pages with the next ones.
                if let Ok(f) = File::open(&path) {
                    return Ok((Artifact(Art::File(f)), outcome));
                }
            }
            Err(e) => log::warn!("compile cache: {e}; continuing without caching"),
        }
        Ok((Artifact::compiled(bytes), outcome))
    }

    fn id_path(&self, id: &FileId) -> PathBuf {
        self.config.dir.join("ids").join(id.key())
    }

    /// The digest recorded for the file with identity `id`, if any.
    pub fn known_digest(&self, id: &FileId) -> Option<blake3::Hash> {
        let bytes = std::fs::read(self.id_path(id)).ok()?;
        Some(blake3::Hash::from_bytes(bytes.try_into().ok()?))
    }

    /// Forgets what was recorded for identity `id`.
    pub fn forget_digest(&self, id: &FileId) {
        let _ = std::fs::remove_file(self.id_path(id));
    }

    /// Records that the file with identity `id` hashes to `digest`. Best
    /// effort: a failure only means the next start hashes the file again.
    pub fn remember_digest(&self, id: &FileId, digest: &blake3::Hash) {
        let path = self.id_path(id);
        let dir = path.parent().expect("ids/ has a parent");
        if std::fs::DirBuilder::new().mode(0o700).create(dir).is_err() && !dir.is_dir() {
            return;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let put = || -> std::io::Result<()> {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?
                .write_all(digest.as_bytes())?;
            std::fs::rename(&tmp, &path)
        };
        if put().is_err() {
            // Nothing stays of a failed write (a full disk): nor the
            // directory, if it holds nothing else.
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_dir(dir);
            return;
        }
        // Keep the map bounded: drop the oldest quarter when it is full
        // (counted from the directory alone; sizes only read then).
        if std::fs::read_dir(dir).map_or(0, |rd| rd.count()) <= MAX_IDS {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        let mut ids: Vec<(SystemTime, PathBuf)> = rd
            .flatten()
            .filter(|e| e.path() != path)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        ids.sort();
        for (_, p) in ids.iter().take(MAX_IDS / 4) {
            let _ = std::fs::remove_file(p);
        }
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
                let _ = std::fs::remove_file(path.with_extension("sum"));
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
}

/// Whether the cache directory `dir` may be trusted by a process of user
/// `uid`; see [`Cache::open`]. The reason when not.
fn check_trusted(dir: &Path, uid: u32) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let dir = std::fs::canonicalize(dir).map_err(|e| io("resolve cache dir", dir, e))?;
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| io("cache dir", &dir, e))?;
    if !meta.is_dir() {
        return Err(format!("cache dir {} is not a directory", dir.display()));
    }
    if meta.uid() != uid {
        return Err(format!(
            "cache dir {} is owned by uid {}, not by this shim's uid {uid}: refusing to load native code from it",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "cache dir {} is writable by group or others (mode {:o}): refusing to load native code from it; chmod 700 it",
            dir.display(),
            meta.mode() & 0o7777
        ));
    }
    for up in dir.ancestors().skip(1) {
        let m = std::fs::metadata(up).map_err(|e| io("cache dir parent", up, e))?;
        let others_write = m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0;
        if (m.uid() != uid && m.uid() != 0) || others_write {
            return Err(format!(
                "{} (above cache dir {}) is owned by uid {} with mode {:o}: another user could replace the cache; refusing it",
                up.display(),
                dir.display(),
                m.uid(),
                m.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// The cache key of Wasm bytes.
pub fn digest(wasm: &[u8]) -> blake3::Hash {
    blake3::hash(wasm)
}

/// The checksum of an artifact file, read through a temporary mapping of
/// it: its pages are the page cache's, shared, and not copied.
fn checksum_file(f: &File) -> std::io::Result<u128> {
    use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
    let len = f.metadata()?.len() as usize;
    let Some(size) = std::num::NonZeroUsize::new(len) else {
        return Ok(xxhash_rust::xxh3::xxh3_128(&[]));
    };
    // SAFETY: a private read-only mapping of `len` bytes of an open file;
    // the slice lives only until the munmap below. Cache entries are never
    // modified in place (only replaced by rename), so the bytes are stable.
    unsafe {
        let at = mmap(None, size, ProtFlags::PROT_READ, MapFlags::MAP_PRIVATE | MapFlags::MAP_POPULATE, f, 0)?;
        let sum = xxhash_rust::xxh3::xxh3_128(std::slice::from_raw_parts(at.as_ptr() as *const u8, len));
        let _ = munmap(at, len);
        Ok(sum)
    }
}

/// A compiled artifact, ready to load: native code that is only ever
/// deserialized through this type, which only the cache (a verified entry)
/// and this crate's compile path (`Artifact::compiled`) can make.
#[derive(Debug)]
pub struct Artifact(Art);

#[derive(Debug)]
enum Art {
    /// An entry of the cache, verified against its checksum; loaded by
    /// mapping it.
    File(File),
    /// Compiled in memory, because the cache could not store it.
    Bytes(Vec<u8>),
    /// Compiled into a sealed in-memory file (a baseline artifact, which
    /// is never cached); loaded by mapping it.
    Sealed(File),
}

impl From<crate::Compiled> for Artifact {
    /// What `Engine::precompile` (or the shim's compiler child running this
    /// same engine configuration) just produced.
    fn from(c: crate::Compiled) -> Self {
        match c {
            crate::Compiled::Bytes(b) => Artifact(Art::Bytes(b)),
            crate::Compiled::Sealed(f) => Artifact(Art::Sealed(f)),
        }
    }
}

impl Artifact {
    /// What `Engine::precompile` (or the shim's compiler child running this
    /// same engine configuration) just produced.
    pub(crate) fn compiled(bytes: Vec<u8>) -> Self {
        Artifact(Art::Bytes(bytes))
    }

    /// Whether this is a cache entry (mapped), rather than bytes in memory.
    pub fn is_cached_file(&self) -> bool {
        matches!(self.0, Art::File(_))
    }

    /// The artifact's bytes (a copy of the file for a cache entry).
    pub fn to_vec(&self) -> std::io::Result<Vec<u8>> {
        match &self.0 {
            Art::Bytes(b) => Ok(b.clone()),
            Art::File(f) | Art::Sealed(f) => {
                use std::os::unix::fs::FileExt;
                let mut v = vec![0u8; f.metadata()?.len() as usize];
                f.read_exact_at(&mut v, 0).map(|()| v)
            }
        }
    }
}

/// The path that names the open file itself, so that what Wasmtime maps is
/// the inode that was verified even if the entry is replaced meanwhile.
fn fd_path(f: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

fn loaded<T>(r: wasmtime::Result<T>) -> Result<T, crate::EngineError> {
    // Loading is where the instance pool checks the module's needs: the
    // same classification as a compile error.
    r.map_err(crate::EngineError::compile)
}

// Why the loaders below are sound (each unsafe block refers here): an
// `Artifact` can only be made by `Cache::get_or_compile`,
// `Artifact::compiled` and `From<Compiled>` (its fields are private to this
// module): either it was just produced by `Engine::precompile` of an engine
// with the same configuration, in this process or in a child running this
// same binary (in memory; written and reopened by this process; or written
// by the child into an in-memory file this process made, gave only to that
// child, and sealed against any change once the child had exited), or
// it is an entry this cache wrote (in a root-only directory, through temp
// file + rename, never modified in place) whose length and XXH3-128 matched
// the checksum recorded at write time, read through the same open file that is
// then mapped. Wasmtime also checks that the artifact was made by a
// compatible engine before using it.

/// Loads a component artifact returned by [`Cache::get_or_compile`].
pub(crate) fn load_component(
    engine: &wasmtime::Engine,
    artifact: &Artifact,
) -> Result<wasmtime::component::Component, crate::EngineError> {
    use wasmtime::component::Component;
    match &artifact.0 {
        // SAFETY: bytes this engine's configuration just compiled (see above).
        Art::Bytes(b) => loaded(unsafe { Component::deserialize(engine, b) }),
        // SAFETY: a cache entry verified against its checksum, or a sealed
        // file just compiled; mapped through the open file (see above).
        Art::File(f) | Art::Sealed(f) => match unsafe { Component::deserialize_file(engine, fd_path(f)) } {
            Ok(c) => Ok(c),
            // No /proc (an unusual host): the verified bytes, copied.
            Err(_) if !Path::new("/proc/self/fd").exists() => {
                let bytes = artifact
                    .to_vec()
                    .map_err(|e| crate::EngineError::Io { what: "cached artifact".into(), reason: e.to_string() })?;
                // SAFETY: the verified entry's bytes, copied (see above).
                loaded(unsafe { Component::deserialize(engine, bytes) })
            }
            Err(e) => loaded(Err(e)),
        },
    }
}

/// Loads a module artifact returned by [`Cache::get_or_compile`].
pub(crate) fn load_module(
    engine: &wasmtime::Engine,
    artifact: &Artifact,
) -> Result<wasmtime::Module, crate::EngineError> {
    use wasmtime::Module;
    match &artifact.0 {
        // SAFETY: bytes this engine's configuration just compiled (see above).
        Art::Bytes(b) => loaded(unsafe { Module::deserialize(engine, b) }),
        Art::File(f) | Art::Sealed(f) => {
            let f = f
                .try_clone()
                .map_err(|e| crate::EngineError::Io { what: "cached artifact".into(), reason: e.to_string() })?;
            // SAFETY: a cache entry verified against its checksum, read from
            // the open file that was verified (see above).
            loaded(unsafe { Module::deserialize_open_file(engine, f) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn cache(dir: &Path, max: u64) -> Cache {
        let engine = wasmtime::Engine::default();
        Cache::open(CacheConfig { dir: dir.join("cache"), max_bytes: max }, &engine).unwrap()
    }

    fn get(
        c: &Cache,
        wasm: &[u8],
        kind: WasmKind,
        compile: impl FnOnce() -> Result<Vec<u8>, String>,
    ) -> Result<(Artifact, Outcome), String> {
        c.get_or_compile(&digest(wasm), kind, compile)
    }

    fn bytes(r: (Artifact, Outcome)) -> (Vec<u8>, Outcome) {
        (r.0.to_vec().unwrap(), r.1)
    }

    fn file_id(n: u64) -> FileId {
        FileId { dev: 1, ino: n, size: 10, mtime_ns: 5, ctime_ns: 7 }
    }

    #[test]
    fn file_identities_map_to_digests_bounded() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), 1 << 20);
        assert_eq!(c.known_digest(&file_id(1)), None);
        c.remember_digest(&file_id(1), &digest(b"one"));
        assert_eq!(c.known_digest(&file_id(1)), Some(digest(b"one")));
        // Any field of the identity differing is another file.
        for other in [
            FileId { dev: 2, ..file_id(1) },
            FileId { size: 11, ..file_id(1) },
            FileId { mtime_ns: 6, ..file_id(1) },
            FileId { ctime_ns: 8, ..file_id(1) },
            file_id(2),
        ] {
            assert_eq!(c.known_digest(&other), None, "{other:?}");
        }
        c.forget_digest(&file_id(1));
        assert_eq!(c.known_digest(&file_id(1)), None);
        // A torn record is no record.
        c.remember_digest(&file_id(3), &digest(b"three"));
        std::fs::write(c.id_path(&file_id(3)), b"short").unwrap();
        assert_eq!(c.known_digest(&file_id(3)), None);
        // Bounded: past MAX_IDS the oldest quarter goes.
        for n in 0..=MAX_IDS as u64 {
            c.remember_digest(&file_id(100 + n), &digest(b"x"));
        }
        let left = std::fs::read_dir(d.path().join("cache/ids")).unwrap().count();
        assert!((MAX_IDS / 2..=MAX_IDS).contains(&left), "{left} identities left");
        assert_eq!(c.known_digest(&file_id(100 + MAX_IDS as u64)), Some(digest(b"x")), "the newest stays");
    }

    /// The trust boundary: a cache dir that another user could write to (or
    /// replace) is refused, and nothing in it is loaded.
    #[test]
    fn untrusted_directories_are_refused() {
        let uid = nix::unistd::geteuid().as_raw();
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        check_trusted(&dir, uid).unwrap();
        for mode in [0o770, 0o707, 0o777] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = check_trusted(&dir, uid).unwrap_err();
            assert!(e.contains("writable by group or others"), "{mode:o}: {e}");
            let engine = wasmtime::Engine::default();
            let opened = Cache::open(CacheConfig { dir: dir.clone(), max_bytes: 1 << 20 }, &engine);
            assert!(opened.is_err(), "Cache::open must refuse mode {mode:o}");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = check_trusted(&dir, uid + 1).unwrap_err();
        assert!(e.contains("owned by uid"), "{e}");
        // A parent others can write to (and not sticky) lets them swap it.
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_trusted(&dir, uid).unwrap_err();
        assert!(e.contains("another user could replace"), "{e}");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        check_trusted(&dir, uid).unwrap();
        // A symlink to a trusted dir is judged by what it points at.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        check_trusted(&link, uid).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn miss_then_hit() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), 1 << 20);
        assert_eq!(std::fs::metadata(c.dir()).unwrap().permissions().mode() & 0o777, 0o700);
        let r = bytes(get(&c, b"wasm-a", WasmKind::Module, || Ok(b"artifact-a".to_vec())).unwrap());
        assert_eq!(r, (b"artifact-a".to_vec(), Outcome::Compiled));
        let (a, o) = get(&c, b"wasm-a", WasmKind::Module, || panic!("must not compile")).unwrap();
        assert!(a.is_cached_file(), "a hit is the cache file itself, to be mapped");
        assert_eq!(bytes((a, o)), (b"artifact-a".to_vec(), Outcome::Hit));
        // Same bytes as a component are another entry.
        let (_, o) = get(&c, b"wasm-a", WasmKind::Component, || Ok(b"c".to_vec())).unwrap();
        assert_eq!(o, Outcome::Compiled);
        // The artifact is stored as is (mappable), its checksum beside it.
        let path = c.entry(&digest(b"wasm-a"), WasmKind::Module);
        assert_eq!(std::fs::read(&path).unwrap(), b"artifact-a");
        assert_eq!(std::fs::metadata(path.with_extension("sum")).unwrap().len(), SUM_LEN as u64);
    }

    #[test]
    fn corrupt_or_truncated_entries_are_recompiled_not_loaded() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), 1 << 20);
        let fresh = || Ok(vec![7u8; 1000]);
        get(&c, b"w", WasmKind::Module, fresh).unwrap();
        let path = c.entry(&digest(b"w"), WasmKind::Module);
        let sum = path.with_extension("sum");
        let expect_repaired = |what: &str| {
            let r = bytes(get(&c, b"w", WasmKind::Module, fresh).unwrap());
            assert_eq!(r, (vec![7u8; 1000], Outcome::Repaired), "{what}");
        };
        // Flip an artifact byte.
        let mut data = std::fs::read(&path).unwrap();
        data[10] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        expect_repaired("flipped byte");
        // Truncate it.
        OpenOptions::new().write(true).open(&path).unwrap().set_len(3).unwrap();
        expect_repaired("truncated artifact");
        // Grown by a byte (same prefix).
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[7]).unwrap();
        expect_repaired("grown artifact");
        // Checksum missing, truncated, or not ours.
        std::fs::remove_file(&sum).unwrap();
        expect_repaired("missing checksum");
        OpenOptions::new().write(true).open(&sum).unwrap().set_len(20).unwrap();
        expect_repaired("truncated checksum");
        std::fs::write(&sum, vec![0u8; SUM_LEN]).unwrap();
        expect_repaired("foreign checksum");
        // Another valid-looking artifact under this entry's name.
        std::fs::write(&path, vec![8u8; 1000]).unwrap();
        expect_repaired("swapped artifact");
        let (_, o) = get(&c, b"w", WasmKind::Module, || panic!("valid now")).unwrap();
        assert_eq!(o, Outcome::Hit);
    }

    #[test]
    fn evicts_least_recently_used_beyond_the_bound() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), 2500);
        let old = SystemTime::now() - std::time::Duration::from_secs(100);
        for (i, name) in [b"a", b"b"].iter().enumerate() {
            get(&c, *name, WasmKind::Module, || Ok(vec![0u8; 1000])).unwrap();
            let f = File::options().write(true).open(c.entry(&digest(*name), WasmKind::Module)).unwrap();
            f.set_modified(old + std::time::Duration::from_secs(i as u64)).unwrap();
        }
        // "a" is used again: "b" becomes the least recently used.
        get(&c, b"a", WasmKind::Module, || panic!("hit")).unwrap();
        get(&c, b"c", WasmKind::Module, || Ok(vec![0u8; 1000])).unwrap();
        assert!(c.entry(&digest(b"a"), WasmKind::Module).exists());
        assert!(!c.entry(&digest(b"b"), WasmKind::Module).exists(), "LRU entry evicted");
        assert!(c.entry(&digest(b"c"), WasmKind::Module).exists());
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
                    get(&c, b"same", WasmKind::Component, || {
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
            assert_eq!(t.join().unwrap().to_vec().unwrap(), b"artifact");
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
        std::fs::create_dir(c.entry(&digest(b"x"), WasmKind::Module)).unwrap();
        let (a, _) = get(&c, b"x", WasmKind::Module, || Ok(b"ok".to_vec())).unwrap();
        assert!(!a.is_cached_file() && a.to_vec().unwrap() == b"ok", "{a:?}");
        let left: Vec<_> = std::fs::read_dir(c.dir()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(
            left.iter().all(|n| n.to_string_lossy().ends_with(".lock") || n.to_string_lossy().ends_with(".cwasm")),
            "no checksum or temp file of the failed write stays: {left:?}"
        );
    }
}
