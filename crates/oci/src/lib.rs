//! Which Wasm a container runs, what kind it is, and how to package one.
//!
//! - [`entrypoint`]: read `process.args[0]` from the rootfs without ever
//!   leaving it (no `..`, no symlink out), with errors a `ctr` user can act on.
//! - [`classify`]: component, core module, or not Wasm at all, from the bytes.
//! - [`image`]: build an OCI image-layout tarball from `.wasm` (and other)
//!   files, for `ctr image import --all-platforms`: Wasm in a tar layer, as
//!   Wasm layers, or as a CNCF TAG Runtime Wasm artifact.
//! - [`layers`]: Wasm carried as image layers: which manifest and layer a
//!   container runs.

#![forbid(unsafe_code)]

pub mod classify;
pub mod entrypoint;
pub mod image;
pub mod layers;

pub use classify::{classify, component_interfaces, WasmKind};
pub use entrypoint::{open_entrypoint, read_entrypoint, EntrypointError, FileId, WasmFile};
