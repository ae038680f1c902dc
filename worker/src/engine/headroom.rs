//! A check before MLX allocates where it does not check: its CPU backend's copy (the f32
//! upcast) and dequantize write through the buffer the allocator gave them, NULL when a
//! process limit refused it (a SIGSEGV at a small address, seen under `ulimit -v`).
//! Before such a step the worker maps the bytes it will need and unmaps them at once: a
//! refusal (`RLIMIT_AS`, `RLIMIT_DATA`, strict overcommit) is an `allocation_failed`
//! error naming the tensor, while the worker is alive.

use protocol::{WorkerError, WorkerErrorKind};

/// Room asked for beyond the step's own bytes: malloc's and MLX's bookkeeping, and the
/// read buffer of the next tensor.
const SLACK: u64 = 32 << 20;

/// `Ok` when the process can map `bytes` (plus a slack) more now; else an
/// `allocation_failed` error saying what needed them.
pub fn ensure(bytes: u64, what: &str) -> Result<(), WorkerError> {
    let len = usize::try_from(bytes.saturating_add(SLACK)).unwrap_or(usize::MAX);
    // SAFETY: a fresh anonymous private mapping, never read or written, unmapped at once;
    // mmap has no other precondition.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        let err = std::io::Error::last_os_error();
        return Err(WorkerError {
            kind: WorkerErrorKind::AllocationFailed,
            message: format!(
                "{what}: failed to allocate {bytes} bytes: the process cannot map {len} more bytes ({err})"
            ),
        });
    }
    // SAFETY: `p` is the mapping of `len` bytes made above.
    unsafe { libc::munmap(p, len) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A size no process can map is refused as an allocation failure naming the step; a
    /// small one is granted.
    #[test]
    fn what_cannot_be_mapped_is_an_allocation_failure() {
        assert!(ensure(1 << 20, "a small tensor").is_ok());
        let e = ensure(u64::MAX / 2, "upcasting tensor x to f32")
            .err()
            .unwrap_or_else(|| panic!("2^63 bytes were granted"));
        assert_eq!(e.kind, WorkerErrorKind::AllocationFailed);
        assert!(
            e.message
                .starts_with("upcasting tensor x to f32: failed to allocate"),
            "{}",
            e.message
        );
        assert!(protocol::failure::is_allocation_failure(&e.message));
    }
}
