//! Exit codes of `mlxsup`, as documented in docs/CONTRACT.md.
use std::process::ExitCode;

/// Every way `mlxsup` ends; the discriminant is the process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// Internal error of mlxsup itself.
    Internal = 1,
    /// Usage error.
    Usage = 2,
    /// Refused by the preflight (`insufficient_memory`); `--force` overrides.
    Refused = 3,
    /// The worker failed (any failure kind); the supervisor itself is fine.
    WorkerFailed = 4,
    /// The model could not be read, before any worker ran.
    BadModel = 5,
    /// Interrupted (Ctrl-C); the worker was stopped cleanly.
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}
