//! Small constructors that turn MLX, I/O and format errors into [`WorkerError`]s.

use protocol::{WorkerError, WorkerErrorKind};

/// A `load_failed` error.
pub fn load_failed(message: impl Into<String>) -> WorkerError {
    WorkerError {
        kind: WorkerErrorKind::LoadFailed,
        message: message.into(),
    }
}

/// A `bad_request` error.
pub fn bad_request(message: impl Into<String>) -> WorkerError {
    WorkerError {
        kind: WorkerErrorKind::BadRequest,
        message: message.into(),
    }
}

/// An MLX error; allocation failures get their own kind so the supervisor can tell.
pub fn mlx(context: &str, err: impl std::fmt::Display) -> WorkerError {
    let text = err.to_string();
    let kind = if protocol::failure::is_allocation_failure(&text) {
        WorkerErrorKind::AllocationFailed
    } else {
        WorkerErrorKind::Internal
    };
    WorkerError {
        kind,
        message: format!("{context}: {text}"),
    }
}

/// Extension to attach a context to MLX results.
pub trait MlxResultExt<T> {
    /// Maps the error to a [`WorkerError`] with `context` in front.
    fn ctx(self, context: &str) -> Result<T, WorkerError>;
}

impl<T, E: std::fmt::Display> MlxResultExt<T> for Result<T, E> {
    fn ctx(self, context: &str) -> Result<T, WorkerError> {
        self.map_err(|e| mlx(context, e))
    }
}
