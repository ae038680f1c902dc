//! The worker's errors: a cancellation, and MLX's allocation failures told apart from
//! its other errors.

use protocol::{WorkerError, WorkerErrorKind};

pub(super) fn cancelled() -> WorkerError {
    WorkerError {
        kind: WorkerErrorKind::Cancelled,
        message: "cancelled".into(),
    }
}

/// When the process's address space is within 15% of its `RLIMIT_AS`, says so: any MLX
/// error then most likely comes from an allocation the OS refused (MLX's CPU backend
/// reports it as whatever failed next, e.g. "Unable to read from file").
fn address_space_pressure() -> Option<String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let limit: u64 = lim.rlim_cur;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let vm = pages * u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    (vm.saturating_mul(100) >= limit.saturating_mul(85)).then(|| {
        format!(
            "address space {} MiB of its {} MiB RLIMIT_AS: an allocation was refused",
            vm >> 20,
            limit >> 20
        )
    })
}

/// MLX reports allocation failures as ordinary errors; give them their own kind.
pub(super) fn mlx_error(e: WorkerError) -> WorkerError {
    if matches!(
        e.kind,
        WorkerErrorKind::LoadFailed | WorkerErrorKind::Internal
    ) {
        if let Some(why) = address_space_pressure() {
            return WorkerError {
                kind: WorkerErrorKind::AllocationFailed,
                message: format!("{} ({why})", e.message),
            };
        }
    }
    let alloc = protocol::failure::is_allocation_failure(&e.message);
    if alloc && e.kind == WorkerErrorKind::Internal {
        WorkerError {
            kind: WorkerErrorKind::AllocationFailed,
            ..e
        }
    } else {
        e
    }
}
