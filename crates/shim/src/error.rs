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
    Unavailable(String),
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
            ShimError::Unavailable(_) => ttrpc::Code::UNAVAILABLE,
            ShimError::Internal(_) => ttrpc::Code::INTERNAL,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}

impl From<wasmcell_grants::GrantError> for ShimError {
    /// Every rejected spec rule is the request's fault.
    fn from(e: wasmcell_grants::GrantError) -> Self {
        ShimError::InvalidArgument(e.to_string())
    }
}

impl From<wasmcell_oci::EntrypointError> for ShimError {
    fn from(e: wasmcell_oci::EntrypointError) -> Self {
        use wasmcell_oci::EntrypointError as E;
        match e {
            // Reading the node's own files failed: not the request's fault.
            E::Io { .. } => ShimError::Internal(e.to_string()),
            // What the image holds (or lacks) at its entrypoint.
            E::Rootfs { .. }
            | E::NotFound(_)
            | E::Escapes(_)
            | E::IsDir(_)
            | E::NotAFile(_)
            | E::TooLarge { .. }
            | E::NotWasm { .. } => ShimError::InvalidArgument(e.to_string()),
        }
    }
}

impl From<wasmcell_engine::EngineError> for ShimError {
    fn from(e: wasmcell_engine::EngineError) -> Self {
        use wasmcell_engine::EngineError as E;
        match &e {
            // What the image's Wasm is or needs: the request's fault; so is
            // what its grants or the handler's policy do not allow.
            E::Compile(_) | E::Link(_) | E::NoEntry { .. } | E::Denied(_) => ShimError::InvalidArgument(e.to_string()),
            // Valid, but beyond what this node gives one instance or compile.
            E::TooBig(_) | E::TooCostly(_) | E::CompilerKilled(_) => ShimError::FailedPrecondition(e.to_string()),
            // Changed under us: retrying may succeed.
            E::Changed(_) => ShimError::Unavailable(e.to_string()),
            // The node's failures, never the image's.
            E::Setup(_) | E::Context { .. } | E::Io { .. } | E::Compiler(_) => ShimError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmcell_engine::EngineError as E;

    fn code(e: impl Into<ShimError>) -> ttrpc::Code {
        match ttrpc::Error::from(e.into()) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_engine_error_has_its_code() {
        let s = || "x".to_string();
        let table = [
            (E::Compile(s()), ttrpc::Code::INVALID_ARGUMENT),
            (E::Link(s()), ttrpc::Code::INVALID_ARGUMENT),
            (E::NoEntry { what: s() }, ttrpc::Code::INVALID_ARGUMENT),
            (E::TooBig(s()), ttrpc::Code::FAILED_PRECONDITION),
            (E::TooCostly(s()), ttrpc::Code::FAILED_PRECONDITION),
            (E::CompilerKilled(s()), ttrpc::Code::FAILED_PRECONDITION),
            (E::Changed(s()), ttrpc::Code::UNAVAILABLE),
            (E::Setup(s()), ttrpc::Code::INTERNAL),
            (E::Context { what: s(), reason: s() }, ttrpc::Code::INTERNAL),
            (E::Io { what: s(), reason: s() }, ttrpc::Code::INTERNAL),
            (E::Compiler(s()), ttrpc::Code::INTERNAL),
        ];
        for (e, want) in table {
            let msg = e.to_string();
            assert_eq!(code(e), want, "{msg}");
        }
        // An I/O failure is never called invalid WebAssembly.
        assert!(!E::Io { what: "/rootfs/a.wasm".into(), reason: "EIO".into() }
            .to_string()
            .contains("invalid WebAssembly"));
    }

    #[test]
    fn each_shim_error_has_its_code() {
        let table = [
            (ShimError::InvalidArgument("x".into()), ttrpc::Code::INVALID_ARGUMENT),
            (ShimError::NotFound("x".into()), ttrpc::Code::NOT_FOUND),
            (ShimError::AlreadyExists("x".into()), ttrpc::Code::ALREADY_EXISTS),
            (ShimError::FailedPrecondition("x".into()), ttrpc::Code::FAILED_PRECONDITION),
            (ShimError::Unimplemented("x".into()), ttrpc::Code::UNIMPLEMENTED),
            (ShimError::Unavailable("x".into()), ttrpc::Code::UNAVAILABLE),
            (ShimError::Internal("x".into()), ttrpc::Code::INTERNAL),
        ];
        for (e, want) in table {
            assert_eq!(code(e), want);
        }
        use wasmcell_oci::EntrypointError as P;
        assert_eq!(code(P::NotFound("/a.wasm".into())), ttrpc::Code::INVALID_ARGUMENT);
        let eio = || std::io::Error::from_raw_os_error(libc::EIO);
        assert_eq!(code(P::Io { path: "/a.wasm".into(), source: eio() }), ttrpc::Code::INTERNAL);
    }
}
