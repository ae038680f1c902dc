//! Memory telemetry: MLX's own counters plus the process footprint the OS sees.

use std::time::Instant;

use protocol::{Phase, Telemetry};

/// Takes one sample. MLX's counters are read through its allocator, which is safe to
/// query while another thread computes.
pub fn sample(start: Instant, phase: Phase, progress: u64) -> Telemetry {
    let mem = |r: Result<usize, _>| r.map(|v| v as u64).unwrap_or(0);
    Telemetry {
        t_ms: start.elapsed().as_millis() as u64,
        phase,
        active_bytes: mem(mlx_rs::memory::active_memory()),
        peak_bytes: crate::peak::peak(),
        cache_bytes: mem(mlx_rs::memory::cache_memory()),
        footprint_bytes: footprint_bytes().unwrap_or(0),
        progress,
    }
}

/// The process's resident set size, from `/proc/self/statm`.
#[cfg(target_os = "linux")]
pub fn footprint_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// The process's physical footprint (what Activity Monitor and jetsam count), from
/// `proc_pid_rusage`.
#[cfg(target_os = "macos")]
pub fn footprint_bytes() -> Option<u64> {
    let mut info = std::mem::MaybeUninit::<libc::rusage_info_v2>::zeroed();
    // SAFETY: the buffer is a rusage_info_v2, the flavor asked for.
    let rc = unsafe {
        libc::proc_pid_rusage(
            std::process::id() as libc::c_int,
            libc::RUSAGE_INFO_V2,
            info.as_mut_ptr() as *mut libc::rusage_info_t,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: proc_pid_rusage filled it.
    Some(unsafe { info.assume_init() }.ri_phys_footprint)
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn footprint_bytes() -> Option<u64> {
    None
}
