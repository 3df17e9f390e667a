use thiserror::Error;

/// Why a spec was refused: one variant per rule, each message naming the
/// offending setting so the `ctr`/`kubectl` user can fix it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GrantError {
    #[error("invalid OCI spec: {0}")]
    BadSpec(String),
    #[error("spec has no process to run")]
    NoProcess,
    #[error("process.args is empty: the first argument must name the .wasm file to run")]
    NoArgs,
    #[error("process.terminal is true: Wasm guests have no terminal; run without a tty (drop -t / tty: true)")]
    Terminal,
    #[error("process.env entry {0:?} is not of the form KEY=VALUE")]
    InvalidEnv(String),
    #[error("process.cwd {0:?} must be an absolute path without '..'")]
    InvalidCwd(String),
    #[error("process.args[0] {0:?} must name a file in the rootfs (no '..' leaving it)")]
    InvalidEntrypoint(String),
    #[error("spec has no root filesystem (root.path)")]
    NoRoot,
    #[error("mount destination {0:?} must be an absolute path without '..'")]
    MountDestination(String),
    #[error("mount at {0:?} would replace the root filesystem; mount below / instead")]
    MountOverRoot(String),
    #[error("bind mount at {0:?} has no source")]
    BindWithoutSource(String),
    #[error("bind mount source {path:?} (at {destination:?}) must be an absolute host path without '..'")]
    BindSource { path: String, destination: String },
    #[error("tmpfs mount at {destination:?}: size={value:?} must be a byte count with an optional k, m or g suffix")]
    TmpfsSize { destination: String, value: String },
    #[error("linux.resources.cpu: quota {quota} needs a period between 1000 and 1000000 microseconds, got {period}")]
    CpuPeriod { quota: i64, period: u64 },
    #[error("annotation {name}={value:?}: {why}")]
    Annotation { name: &'static str, value: String, why: String },
    #[error("runtime policy {path}: {why}")]
    Policy { path: String, why: String },
}
