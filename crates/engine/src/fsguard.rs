//! A guest opens regular files, directories and symlinks, nothing else.
//!
//! Device nodes, fifos and sockets can sit in what a guest is granted: an
//! image layer carries `blk`/`chr`/fifo entries that containerd unpacks as
//! real nodes, and a bound host directory holds whatever the host put there.
//! The shim mounts everything a guest reaches `nodev` (the kernel's refusal,
//! EACCES); this is the second line: `wasi:filesystem`'s `open-at` is
//! replaced by one that looks at what the path names before opening it (a
//! fifo's open would block, a device's open can have effects) and at what was
//! opened (the path may have changed in between), and answers `access` for
//! anything but a file, directory or symlink.
//!
//! Core modules (WASIp1) rely on the `nodev` mounts alone; see
//! `docs/security.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystem, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, DescriptorType, ErrorCode, Host as _, HostDescriptor, OpenFlags, PathFlags,
};
use wasmtime_wasi::p3::bindings::filesystem::types as p3;

/// The `wasi:filesystem/types` instance `wasmtime_wasi::p2` defines (its
/// newest 0.2 version; components importing any 0.2.x link against it).
const P2_TYPES: &str = "wasi:filesystem/types@0.2.12";
/// The same for WASI 0.3 (`wasmtime_wasi::p3`).
const P3_TYPES: &str = "wasi:filesystem/types@0.3.0";

/// Whether a guest may hold a descriptor of this type.
pub(crate) fn may_open(t: DescriptorType) -> bool {
    matches!(t, DescriptorType::RegularFile | DescriptorType::Directory | DescriptorType::SymbolicLink)
}

/// Unix seconds of the last refusal logged: at most one line per 10 s, so
/// a guest cannot flood the log by retrying.
static LAST_LOG: AtomicU64 = AtomicU64::new(0);

fn log_refusal(path: &str, t: DescriptorType) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = LAST_LOG.load(Ordering::Relaxed);
    if now >= last + 10 && LAST_LOG.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        log::warn!("guest tried to open {path:?}, a {t:?}: refused (a Wasm guest gets no devices, fifos or sockets from its filesystem)");
    }
}

type OpenAtParams = (Resource<Descriptor>, PathFlags, String, OpenFlags, DescriptorFlags);

/// Replaces `open-at` of [`P2_TYPES`] in `linker` (which must already hold
/// `wasmtime_wasi::p2`'s async definitions) with the guarded one.
pub(crate) fn guard_p2<T: WasiFilesystemView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let defined = linker.instance(P2_TYPES).and_then(|mut types| {
        types.func_wrap_async(
            "[method]descriptor.open-at",
            |mut store, (dir, path_flags, path, oflags, flags): OpenAtParams| {
                Box::new(async move {
                    let mut fs = store.data_mut().filesystem();
                    // What the path names now. Missing is fine (a create);
                    // any other failure is for the open itself to report.
                    let at = Resource::new_borrow(dir.rep());
                    if let Ok(stat) = fs.stat_at(at, path_flags, path.clone()).await {
                        if !may_open(stat.type_) {
                            log_refusal(&path, stat.type_);
                            return Ok((Err(ErrorCode::Access),));
                        }
                    }
                    let opened = match fs.open_at(dir, path_flags, path.clone(), oflags, flags).await {
                        Ok(d) => d,
                        Err(e) => return Ok((Err(fs.convert_error_code(e)?),)),
                    };
                    // What was opened: the path may have been swapped.
                    let t = match fs.get_type(Resource::new_borrow(opened.rep())).await {
                        Ok(t) => t,
                        Err(e) => {
                            HostDescriptor::drop(&mut fs, opened)?;
                            return Ok((Err(fs.convert_error_code(e)?),));
                        }
                    };
                    if !may_open(t) {
                        HostDescriptor::drop(&mut fs, opened)?;
                        log_refusal(&path, t);
                        return Ok((Err(ErrorCode::Access),));
                    }
                    Ok((Ok(opened),))
                })
            },
        )
    });
    linker.allow_shadowing(false);
    defined
}

type OpenAtParams3 = (Resource<Descriptor>, p3::PathFlags, String, p3::OpenFlags, p3::DescriptorFlags);

fn p3_type(t: p3::DescriptorType) -> DescriptorType {
    use p3::DescriptorType as T;
    match t {
        T::BlockDevice => DescriptorType::BlockDevice,
        T::CharacterDevice => DescriptorType::CharacterDevice,
        T::Directory => DescriptorType::Directory,
        T::Fifo => DescriptorType::Fifo,
        T::SymbolicLink => DescriptorType::SymbolicLink,
        T::RegularFile => DescriptorType::RegularFile,
        T::Socket => DescriptorType::Socket,
        _ => DescriptorType::Unknown,
    }
}

/// [`guard_p2`] for WASI 0.3's `open-at` (an async function), in a linker
/// that already holds `wasmtime_wasi::p3`'s definitions. The checks are the
/// same; they go through the p3 host's own `stat-at`, `open-at` and
/// `get-type`.
pub(crate) fn guard_p3<T: WasiFilesystemView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    use p3::HostDescriptorWithStore as Fs;
    linker.allow_shadowing(true);
    let defined =
        linker.instance(P3_TYPES).and_then(|mut types| {
            types.func_wrap_concurrent(
                "[method]descriptor.open-at",
                |accessor, (dir, path_flags, path, oflags, flags): OpenAtParams3| {
                    Box::pin(async move {
                        let fs = &accessor.with_getter::<WasiFilesystem>(T::filesystem);
                        let at = Resource::new_borrow(dir.rep());
                        if let Ok(stat) = <WasiFilesystem as Fs<T>>::stat_at(fs, at, path_flags, path.clone()).await {
                            let t = p3_type(stat.type_);
                            if !may_open(t) {
                                log_refusal(&path, t);
                                return Ok((Err(p3::ErrorCode::Access),));
                            }
                        }
                        let opened =
                            match <WasiFilesystem as Fs<T>>::open_at(fs, dir, path_flags, path.clone(), oflags, flags)
                                .await
                            {
                                Ok(d) => d,
                                Err(e) => return Ok((Err(e.downcast()?),)),
                            };
                        let t = match <WasiFilesystem as Fs<T>>::get_type(fs, Resource::new_borrow(opened.rep())).await
                        {
                            Ok(t) => p3_type(t),
                            Err(e) => {
                                fs.with(|mut s| s.get().table.delete(opened).map(|_| ()))?;
                                return Ok((Err(e.downcast()?),));
                            }
                        };
                        if !may_open(t) {
                            fs.with(|mut s| s.get().table.delete(opened).map(|_| ()))?;
                            log_refusal(&path, t);
                            return Ok((Err(p3::ErrorCode::Access),));
                        }
                        Ok((Ok(opened),))
                    })
                },
            )
        });
    linker.allow_shadowing(false);
    defined
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_directories_and_symlinks_open() {
        use DescriptorType::*;
        let allowed: Vec<_> =
            [Unknown, BlockDevice, CharacterDevice, Directory, Fifo, SymbolicLink, RegularFile, Socket]
                .into_iter()
                .filter(|t| may_open(*t))
                .collect();
        assert_eq!(allowed, vec![Directory, SymbolicLink, RegularFile]);
    }
}
