use containerd_shim_protos::ttrpc;
use thiserror::Error;

/// Every failure of a task RPC, mapped to a ttrpc status code in one place
/// (`From<ShimError> for ttrpc::Error`). Messages reach the `ctr` user.
#[derive(Debug, Error)]
pub enum ShimError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("container {0}: not found")]
    NotFound(String),
    #[error("container {0}: already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Internal(String),
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        let code = match &e {
            ShimError::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            ShimError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            ShimError::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            ShimError::Unimplemented(_) => ttrpc::Code::UNIMPLEMENTED,
            ShimError::Internal(_) => ttrpc::Code::INTERNAL,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}

impl From<wasmcell_grants::GrantError> for ShimError {
    fn from(e: wasmcell_grants::GrantError) -> Self {
        ShimError::InvalidArgument(e.to_string())
    }
}

impl From<wasmcell_oci::EntrypointError> for ShimError {
    fn from(e: wasmcell_oci::EntrypointError) -> Self {
        ShimError::InvalidArgument(e.to_string())
    }
}

impl From<wasmcell_engine::EngineError> for ShimError {
    fn from(e: wasmcell_engine::EngineError) -> Self {
        ShimError::InvalidArgument(e.to_string())
    }
}
