use thiserror::Error;

/// Why a guest cannot be prepared. Messages are shown to the `ctr` user.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("cannot set up Wasmtime: {0}")]
    Setup(String),
    #[error("invalid WebAssembly: {0}")]
    Compile(String),
    /// Valid Wasm that needs more than the shim gives one instance (tables,
    /// memories, instance size): a limit of wasmcell, not an error in the
    /// guest.
    #[error("the guest needs more than wasmcell's per-instance limits allow: {0}")]
    TooBig(String),
    #[error("cannot link: {0}")]
    Link(String),
    #[error("{what}")]
    NoEntry { what: String },
    #[error("cannot set up the guest's {what}: {reason}")]
    Context { what: String, reason: String },
    /// Reading the Wasm (or a cached artifact) failed: the node's problem,
    /// not the image's.
    #[error("cannot read {what}: {reason}")]
    Io { what: String, reason: String },
    /// The file changed under the shim while it was read; a retry reads it
    /// afresh.
    #[error("{0} changed while it was being read; try again")]
    Changed(String),
    /// Compiling the Wasm cost more than this node allows one compile (time,
    /// or the memory of the container's limit): a compile bomb, or a guest
    /// too large for its limits.
    #[error("the guest is too costly to compile: {0}")]
    TooCostly(String),
    /// The compiler was killed, most likely for the memory the container's
    /// limit leaves it. A first start's baseline compile, which takes more
    /// memory than the optimizing compile, then waits for that one instead.
    #[error("the guest is too costly to compile: {0}")]
    CompilerKilled(String),
    /// The compiler process failed for a reason other than the Wasm (it
    /// could not start, crashed, was killed).
    #[error("compiler process: {0}")]
    Compiler(String),
    /// The guest asks for what its container is not granted, or what the
    /// runtime handler's policy denies: an import, or a Wasm feature.
    #[error("{0}")]
    Denied(String),
}

/// wasmtime's errors carry a chain of contexts; `{:#}` prints all of it on
/// one line, which is what a user needs ("failed to parse ... at offset N").
fn chain(e: &wasmtime::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

impl EngineError {
    pub(crate) fn setup(e: wasmtime::Error) -> Self {
        EngineError::Setup(chain(&e))
    }
    pub(crate) fn compile(e: wasmtime::Error) -> Self {
        Self::compile_message(chain(&e))
    }
    /// A compile error reported as text (by a compiler in another process).
    pub fn compile_message(msg: String) -> Self {
        if exceeds_pool(&msg) {
            EngineError::TooBig(msg)
        } else {
            EngineError::Compile(msg)
        }
    }
    pub(crate) fn link(e: wasmtime::Error) -> Self {
        EngineError::Link(chain(&e))
    }
}

/// Whether a compile error is the pooling allocator refusing a module that
/// is valid but larger than its slots (Wasmtime checks this when the module
/// is created). Matched on the allocator's own wording.
fn exceeds_pool(msg: &str) -> bool {
    [
        "configured maximum",
        "per-instance limit",
        "total tables limit",
        "minimum byte size of",
        "minimum element size of",
        "transitively contains",
        "pooling allocator",
    ]
    .iter()
    .any(|p| msg.contains(p))
}
