use thiserror::Error;

/// Why a guest cannot be prepared. Messages are shown to the `ctr` user.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("cannot set up Wasmtime: {0}")]
    Setup(String),
    #[error("invalid WebAssembly: {0}")]
    Compile(String),
    #[error("cannot link: {0}")]
    Link(String),
    #[error("{what}")]
    NoEntry { what: String },
    #[error("cannot set up the guest's {what}: {reason}")]
    Context { what: String, reason: String },
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
        EngineError::Compile(chain(&e))
    }
    pub(crate) fn link(e: wasmtime::Error) -> Self {
        EngineError::Link(chain(&e))
    }
}
