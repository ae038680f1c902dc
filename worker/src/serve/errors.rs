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
    // What MLX threw in words: an allocation refused (the CPU's, CUDA's, Metal's
    // allocator) or Metal's command buffer out of memory, whether it came while loading
    // or computing.
    let alloc = protocol::failure::is_allocation_failure(&e.message)
        || protocol::failure::is_metal_out_of_memory(&e.message);
    if alloc
        && matches!(
            e.kind,
            WorkerErrorKind::Internal | WorkerErrorKind::LoadFailed
        )
    {
        WorkerError {
            kind: WorkerErrorKind::AllocationFailed,
            ..e
        }
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caught(kind: WorkerErrorKind, message: &str) -> WorkerErrorKind {
        mlx_error(WorkerError {
            kind,
            message: message.into(),
        })
        .kind
    }

    /// What MLX throws when an allocation is refused, on every backend, is caught as an
    /// allocation failure whether it came while loading or computing; other errors keep
    /// their kind. (Run without an address-space limit: the words alone decide.)
    #[test]
    fn mlx_allocation_texts_are_caught_as_allocation_failures() {
        for text in [
            "[malloc] Unable to allocate 4294967296 bytes.",
            "cudaMalloc(&data, size) failed: out of memory.",
            "cudaMallocAsync(&data, size, stream) failed: out of memory",
            "cudaMallocManaged failed: out of memory.",
            "[metal::malloc] Attempting to allocate 9 bytes which is greater than the maximum allowed buffer size of 8 bytes.",
            "[METAL] Command buffer execution failed: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)",
        ] {
            for kind in [WorkerErrorKind::Internal, WorkerErrorKind::LoadFailed] {
                assert_eq!(caught(kind, text), WorkerErrorKind::AllocationFailed, "{text}");
            }
        }
        assert_eq!(
            caught(
                WorkerErrorKind::LoadFailed,
                "unsupported model_type `mamba`"
            ),
            WorkerErrorKind::LoadFailed
        );
        assert_eq!(
            caught(WorkerErrorKind::Internal, "[matmul] shapes do not match"),
            WorkerErrorKind::Internal
        );
    }
}
