use std::path::Path;

use thiserror::Error;

use crate::classify::{classify, NotWasm, WasmKind};

/// Largest Wasm file a container may name (guards the shim's memory against a
/// hostile image; real components are tens of MB at most).
pub const MAX_WASM_BYTES: u64 = 512 << 20;

#[derive(Debug, Error)]
pub enum EntrypointError {
    #[error("cannot open rootfs {path}: {source}")]
    Rootfs {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("entrypoint {0} not found in the container's rootfs (check the image's entrypoint / process.args[0])")]
    NotFound(String),
    #[error("entrypoint {0} resolves outside the container's rootfs")]
    Escapes(String),
    #[error("entrypoint {0} is a directory, not a .wasm file")]
    IsDir(String),
    #[error("entrypoint {0} is not a regular file (a FIFO, socket or device), not a .wasm file")]
    NotAFile(String),
    #[error("entrypoint {path} is {size} bytes, more than the {max}-byte limit")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("cannot read entrypoint {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("entrypoint {path}: {reason}")]
    NotWasm { path: String, reason: NotWasm },
}

/// A Wasm file of a container's rootfs: opened, checked to be a regular
/// file of at most [`MAX_WASM_BYTES`], classified from its header, and not
/// read yet (a start that finds the file's compiled form in a cache only
/// needs to hash it).
#[derive(Debug)]
pub struct WasmFile {
    file: std::fs::File,
    len: u64,
    /// Component or core module.
    pub kind: WasmKind,
    /// The path inside the rootfs, for messages.
    pub path: String,
}

/// What names one version of a file on a host, without reading it: its
/// filesystem and inode, size and modification and change times.
///
/// Any write to the file moves its change time, which no process can set,
/// and a new file in a reused inode gets a new change time; so while the
/// file keeps this identity its content is the content it had. Only files
/// whose change time has sub-second precision get one: with whole seconds,
/// a reused inode could come back within the same second.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileId {
    /// The identity of open file `f`. `layers_dev`: the device of the
    /// directories an overlay mount stacks, when `f` is on one (an overlay
    /// mount reports the real inode number but a device of its own, new for
    /// each mount); without it a file on an overlay gets no identity.
    pub fn of(f: &std::fs::File, layers_dev: Option<u64>) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = f.metadata().ok()?;
        if m.ctime_nsec() == 0 {
            return None;
        }
        let dev = if on_overlay(f)? { layers_dev? } else { m.dev() };
        let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
        Some(FileId {
            dev,
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }

    /// A file name for this identity.
    pub fn key(&self) -> String {
        format!("{:x}-{:x}-{:x}-{:x}-{:x}", self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)
    }
}

/// Whether `f` is on an overlay mount; `None` if that cannot be told.
fn on_overlay(f: &std::fs::File) -> Option<bool> {
    use nix::sys::statfs::{fstatfs, OVERLAYFS_SUPER_MAGIC};
    Some(fstatfs(f).ok()?.filesystem_type() == OVERLAYFS_SUPER_MAGIC)
}

impl WasmFile {
    /// The open file (positioned reads only: its offset is not used).
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// This file's identity; see [`FileId::of`].
    pub fn id(&self, layers_dev: Option<u64>) -> Option<FileId> {
        FileId::of(&self.file, layers_dev)
    }

    /// Reads the whole file, as long as it was when opened.
    pub fn read_all(&self) -> Result<Vec<u8>, EntrypointError> {
        use std::os::unix::fs::FileExt;
        let mut bytes = vec![0u8; self.len as usize];
        self.file
            .read_exact_at(&mut bytes, 0)
            .map_err(|source| EntrypointError::Io { path: self.path.clone(), source })?;
        Ok(bytes)
    }
}

/// Reads the Wasm file at `guest_path` (absolute, inside the rootfs) and
/// classifies it; see [`open_entrypoint`].
pub fn read_entrypoint(rootfs: &Path, guest_path: &str) -> Result<(Vec<u8>, WasmKind), EntrypointError> {
    let f = open_entrypoint(rootfs, guest_path)?;
    Ok((f.read_all()?, f.kind))
}

/// Opens the Wasm file at `guest_path` (absolute, inside the rootfs) and
/// classifies it. The path resolves as it would inside the container: the
/// kernel treats the rootfs as `/` for every component (`openat2` with
/// `RESOLVE_IN_ROOT`), so `..` stops at the rootfs and an absolute symlink
/// (`/ep.wasm -> /app/main.wasm`) points inside it; no path reaches a host
/// file.
pub fn open_entrypoint(rootfs: &Path, guest_path: &str) -> Result<WasmFile, EntrypointError> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::os::fd::AsFd;
    let root = std::fs::File::open(rootfs)
        .map_err(|source| EntrypointError::Rootfs { path: rootfs.display().to_string(), source })?;
    let rel = match guest_path.trim_start_matches('/') {
        "" => ".",
        r => r,
    };
    let path = guest_path.to_string();
    let open_err = |e: nix::Error| match e {
        nix::Error::ENOENT | nix::Error::ENOTDIR => EntrypointError::NotFound(path.clone()),
        nix::Error::EXDEV => EntrypointError::Escapes(path.clone()),
        e => EntrypointError::Io { path: path.clone(), source: e.into() },
    };
    let resolve = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    // Only a regular file is read. A FIFO (an image layer can carry one)
    // opened for reading would block the shim until a writer appears, so:
    // a look through an O_PATH handle first (opening nothing), then a
    // non-blocking open and a check of what was actually opened (the name
    // may have been swapped in between).
    let look = openat2(root.as_fd(), rel, OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC).resolve(resolve))
        .map_err(open_err)?;
    let kind =
        std::fs::File::from(look).metadata().map_err(|source| EntrypointError::Io { path: path.clone(), source })?;
    if kind.is_dir() {
        return Err(EntrypointError::IsDir(path));
    }
    if !kind.is_file() {
        return Err(EntrypointError::NotAFile(path));
    }
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let file = std::fs::File::from(
        openat2(root.as_fd(), rel, OpenHow::new().flags(flags).resolve(resolve)).map_err(open_err)?,
    );
    let meta = file.metadata().map_err(|source| EntrypointError::Io { path: path.clone(), source })?;
    if meta.is_dir() {
        return Err(EntrypointError::IsDir(path));
    }
    if !meta.is_file() {
        return Err(EntrypointError::NotAFile(path));
    }
    if meta.len() > MAX_WASM_BYTES {
        return Err(EntrypointError::TooLarge { path, size: meta.len(), max: MAX_WASM_BYTES });
    }
    let mut head = [0u8; 16];
    let n = read_head(&file, &mut head).map_err(|source| EntrypointError::Io { path: path.clone(), source })?;
    let kind = classify(&head[..n]).map_err(|reason| EntrypointError::NotWasm { path: path.clone(), reason })?;
    Ok(WasmFile { file, len: meta.len(), kind, path })
}

/// Fills `buf` from the start of `f` as far as the file goes.
fn read_head(f: &std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn file_identity_changes_with_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.wasm");
        std::fs::write(&p, MODULE).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let Some(id) = FileId::of(&f, None) else {
            // Whole-second timestamps: no identity, by design.
            use std::os::unix::fs::MetadataExt;
            assert_eq!(f.metadata().unwrap().ctime_nsec(), 0);
            return;
        };
        assert_eq!(FileId::of(&f, None), Some(id.clone()), "stable while unchanged");
        assert_eq!(
            FileId::of(&std::fs::File::open(&p).unwrap(), None),
            Some(id.clone()),
            "the file's, not the handle's"
        );
        // Not on an overlay: the layers' device is not used.
        assert_eq!(FileId::of(&f, Some(12345)), Some(id.clone()));
        std::fs::write(&p, [MODULE, MODULE].concat()).unwrap();
        assert_ne!(FileId::of(&f, None), Some(id.clone()), "a write is a new identity");
        // Replaced by a new file under the same name: another inode.
        let q = d.path().join("b.wasm");
        std::fs::write(&q, MODULE).unwrap();
        std::fs::rename(&q, &p).unwrap();
        let now = FileId::of(&std::fs::File::open(&p).unwrap(), None).unwrap();
        assert_ne!(now.ino, id.ino);
    }

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("app.wasm"), MODULE).unwrap();
        std::fs::create_dir(d.path().join("bin")).unwrap();
        std::fs::write(d.path().join("bin/tool.wasm"), MODULE).unwrap();
        std::fs::write(d.path().join("notes.txt"), b"hello").unwrap();
        d
    }

    #[test]
    fn reads_inside_rootfs() {
        let d = rootfs();
        let (bytes, kind) = read_entrypoint(d.path(), "/app.wasm").unwrap();
        assert_eq!((bytes.as_slice(), kind), (MODULE, WasmKind::Module));
        assert!(read_entrypoint(d.path(), "/bin/tool.wasm").is_ok());
    }

    #[test]
    fn refuses_what_is_not_a_wasm_file_in_the_rootfs() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.wasm"), MODULE).unwrap();
        let d = rootfs();
        symlink(outside.path().join("secret.wasm"), d.path().join("abs-link.wasm")).unwrap();
        symlink("../../../../../../../../../../../../tmp", d.path().join("up")).unwrap();

        assert!(matches!(read_entrypoint(d.path(), "/missing.wasm"), Err(EntrypointError::NotFound(_))));
        assert!(matches!(read_entrypoint(d.path(), "/bin"), Err(EntrypointError::IsDir(_))));
        assert!(matches!(read_entrypoint(d.path(), "/notes.txt"), Err(EntrypointError::NotWasm { .. })));
        // Symlinks that leave the rootfs are never followed out of it.
        assert!(read_entrypoint(d.path(), "/abs-link.wasm").is_err());
        assert!(read_entrypoint(d.path(), "/up/x.wasm").is_err());
        assert!(read_entrypoint(d.path(), "/../../etc/passwd").is_err());
        let missing = d.path().join("nope");
        assert!(matches!(read_entrypoint(&missing, "/app.wasm"), Err(EntrypointError::Rootfs { .. })));
    }

    /// An absolute symlink means what it means inside the container: a path
    /// from the rootfs, not from the host's `/` (issue 20, item 7). A host
    /// file at the same absolute path is never what is read.
    #[test]
    fn absolute_symlinks_resolve_inside_the_rootfs() {
        let d = rootfs();
        symlink("/app.wasm", d.path().join("ep_abs.wasm")).unwrap();
        symlink("/bin/../app.wasm", d.path().join("ep_dotdot.wasm")).unwrap();
        symlink("/../../../../app.wasm", d.path().join("ep_above.wasm")).unwrap();
        for link in ["/ep_abs.wasm", "/ep_dotdot.wasm", "/ep_above.wasm"] {
            let (bytes, _) = read_entrypoint(d.path(), link).unwrap_or_else(|e| panic!("{link}: {e}"));
            assert_eq!(bytes, MODULE, "{link}");
        }
        // The host's /tmp/<name> is not the rootfs's.
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("host.wasm"), MODULE).unwrap();
        symlink(host.path().join("host.wasm"), d.path().join("to_host.wasm")).unwrap();
        assert!(matches!(read_entrypoint(d.path(), "/to_host.wasm"), Err(EntrypointError::NotFound(_))));
    }
}
