//! The worker's real memory, as the OS sees it: Linux RSS from `/proc/<pid>/statm`,
//! macOS `phys_footprint` from `proc_pid_rusage`.

/// The footprint of process `pid` in bytes, or `None` once it is gone.
#[cfg(target_os = "linux")]
pub fn footprint(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// Virtual size of process `pid` in bytes (what `RLIMIT_AS` limits).
#[cfg(target_os = "linux")]
pub fn virtual_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().next()?.parse().ok()?;
    Some(pages * page_size())
}

/// Data segment of process `pid` in bytes (`statm`'s data: what `RLIMIT_DATA` limits,
/// plus the stack).
#[cfg(target_os = "linux")]
pub fn data_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(5)?.parse().ok()?;
    Some(pages * page_size())
}

/// CPU time (user + system) process `pid` has used.
#[cfg(target_os = "linux")]
pub fn cpu_time(pid: i32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()?
        .max(1);
    Some(std::time::Duration::from_millis(ticks * 1000 / hz))
}

#[cfg(target_os = "linux")]
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).unwrap_or(4096)
}

#[cfg(target_os = "macos")]
pub fn footprint(pid: i32) -> Option<u64> {
    let mut info = std::mem::MaybeUninit::<libc::rusage_info_v2>::zeroed();
    // SAFETY: the buffer is a rusage_info_v2, the flavor asked for.
    let rc = unsafe {
        libc::proc_pid_rusage(
            pid,
            libc::RUSAGE_INFO_V2,
            info.as_mut_ptr() as *mut libc::rusage_info_t,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: filled by proc_pid_rusage.
    Some(unsafe { info.assume_init() }.ri_phys_footprint)
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn footprint(_pid: i32) -> Option<u64> {
    None
}

/// Not measured off Linux: the stall detector then decides on progress alone.
#[cfg(not(target_os = "linux"))]
pub fn virtual_bytes(_pid: i32) -> Option<u64> {
    None
}

#[cfg(not(target_os = "linux"))]
pub fn data_bytes(_pid: i32) -> Option<u64> {
    None
}

#[cfg(not(target_os = "linux"))]
pub fn cpu_time(_pid: i32) -> Option<std::time::Duration> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_footprint_is_plausible() {
        let f = super::footprint(std::process::id() as i32).unwrap_or(0);
        assert!(f > 1 << 20 && f < 1 << 40, "footprint {f}");
        assert_eq!(super::footprint(i32::MAX), None);
    }

    /// Spinning shows in the CPU time it reads. The spin runs until the CPU time (not the
    /// wall clock) has grown, so a loaded machine that gives this thread a small share of
    /// a core only makes it take longer; a reader that never sees the time grow fails at
    /// the wall-clock cap.
    #[cfg(target_os = "linux")]
    #[test]
    fn own_cpu_time_and_virtual_size() {
        let me = std::process::id() as i32;
        let before = super::cpu_time(me).expect("the own process's CPU time");
        let want = before + std::time::Duration::from_millis(100);
        let cap = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut x = 0u64;
        let mut after = before;
        while after < want {
            assert!(
                std::time::Instant::now() < cap,
                "the CPU time did not grow by 100 ms in 60 s of spinning: {before:?} → {after:?}"
            );
            for _ in 0..100_000 {
                x = x.wrapping_mul(31).wrapping_add(7);
            }
            std::hint::black_box(x);
            after = super::cpu_time(me).expect("the own process's CPU time");
        }
        assert!(super::virtual_bytes(me).unwrap_or(0) >= super::footprint(me).unwrap_or(0));
    }
}
