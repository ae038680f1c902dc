//! The worker's real memory, as the OS sees it: Linux RSS from `/proc/<pid>/statm`,
//! macOS `phys_footprint` from `proc_pid_rusage`.

/// The footprint of process `pid` in bytes, or `None` once it is gone.
#[cfg(target_os = "linux")]
pub fn footprint(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
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

#[cfg(test)]
mod tests {
    #[test]
    fn own_footprint_is_plausible() {
        let f = super::footprint(std::process::id() as i32).unwrap_or(0);
        assert!(f > 1 << 20 && f < 1 << 40, "footprint {f}");
        assert_eq!(super::footprint(i32::MAX), None);
    }
}
