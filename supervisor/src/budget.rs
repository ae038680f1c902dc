//! The memory budget of this machine: the bytes a model may use.
//!
//! - Linux: `MemAvailable` from `/proc/meminfo`, lowered to the room left under this
//!   process's cgroup v2 `memory.max` (`memory.max - memory.current`) when a limit is set,
//!   or under a cgroup v1 `memory.limit_in_bytes` on hosts whose memory controller is v1.
//! - macOS: the GPU wired-memory limit `iogpu.wired_limit_mb` when an administrator set
//!   it (non-zero); otherwise Metal's default recommended working set, which on Apple
//!   Silicon is about two thirds of `hw.memsize` up to 36 GiB of RAM and three quarters
//!   above (the values `MTLDevice.recommendedMaxWorkingSetSize` reports: 8 GiB → 5.3 GiB,
//!   16 GiB → 10.7 GiB, 64 GiB → 48 GiB).
//! - `--budget SIZE` overrides both.
use estimate::Bytes;

/// A budget and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Bytes the model may use.
    pub bytes: Bytes,
    /// How it was determined, for people (`MemAvailable`, `cgroup memory.max`, …).
    pub source: String,
}

/// The budget: `overridden` when given, else this machine's.
pub fn budget(overridden: Option<Bytes>) -> Result<Budget, String> {
    match overridden {
        Some(bytes) => Ok(Budget {
            bytes,
            source: "--budget".to_string(),
        }),
        None => detect(),
    }
}

/// This machine's budget.
#[cfg(target_os = "linux")]
pub fn detect() -> Result<Budget, String> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| format!("/proc/meminfo: cannot read: {e}"))?;
    let available = mem_available(&meminfo).ok_or("/proc/meminfo: no MemAvailable line")?;
    let mut b = Budget {
        bytes: Bytes(available),
        source: "MemAvailable".to_string(),
    };
    let limits = [
        (cgroup_room(), "cgroup memory.max"),
        (cgroup_v1_room(), "cgroup v1 memory.limit_in_bytes"),
    ];
    for (room, source) in limits {
        if let Some(room) = room.filter(|&r| r < b.bytes.0) {
            b = Budget {
                bytes: Bytes(room),
                source: source.to_string(),
            };
        }
    }
    Ok(b)
}

/// This machine's budget.
#[cfg(target_os = "macos")]
pub fn detect() -> Result<Budget, String> {
    if let Some(mb) = sysctl_u64("iogpu.wired_limit_mb").filter(|&mb| mb > 0) {
        return Ok(Budget {
            bytes: Bytes(mb * Bytes::MIB),
            source: "iogpu.wired_limit_mb".to_string(),
        });
    }
    let memsize = sysctl_u64("hw.memsize").ok_or("sysctl hw.memsize failed")?;
    Ok(Budget {
        bytes: Bytes(metal_recommended_working_set(memsize)),
        source: "Metal recommended working set".to_string(),
    })
}

/// This machine's budget.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn detect() -> Result<Budget, String> {
    Err("cannot determine this system's memory; pass --budget SIZE".to_string())
}

/// Metal's default recommended working set for `memsize` bytes of unified memory.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub fn metal_recommended_working_set(memsize: u64) -> u64 {
    if memsize > 36 * Bytes::GIB {
        memsize / 4 * 3
    } else {
        memsize / 3 * 2
    }
}

#[cfg(target_os = "macos")]
fn sysctl_u64(name: &str) -> Option<u64> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 8];
    let mut len: libc::size_t = buf.len();
    // SAFETY: `cname` is a valid C string, `buf` is 8 writable bytes and `len` says so;
    // the kernel writes at most `len` bytes and updates `len`.
    let rc = unsafe {
        libc::sysctlbyname(
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    match len {
        4 => Some(u64::from(u32::from_ne_bytes([
            buf[0], buf[1], buf[2], buf[3],
        ]))),
        8 => Some(u64::from_ne_bytes(buf)),
        _ => None,
    }
}

/// `MemAvailable` in bytes from the text of `/proc/meminfo`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemAvailable:")?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        kb.checked_mul(1024)
    })
}

/// Room under a cgroup v2 limit: `memory.max - memory.current`, or `None` for `max`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub fn cgroup_limit_room(max: &str, current: &str) -> Option<u64> {
    let max: u64 = max.trim().parse().ok()?;
    let current: u64 = current.trim().parse().unwrap_or(0);
    Some(max.saturating_sub(current))
}

#[cfg(target_os = "linux")]
fn cgroup_room() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let dir = std::path::Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    // The tightest limit on the path up to the root applies.
    let mut room: Option<u64> = None;
    for d in dir
        .ancestors()
        .take_while(|d| d.starts_with("/sys/fs/cgroup"))
    {
        let Ok(max) = std::fs::read_to_string(d.join("memory.max")) else {
            continue;
        };
        let current = std::fs::read_to_string(d.join("memory.current")).unwrap_or_default();
        if let Some(r) = cgroup_limit_room(&max, &current) {
            room = Some(room.map_or(r, |x| x.min(r)));
        }
    }
    room
}

/// Room under a cgroup v1 memory limit (hosts with the legacy or hybrid hierarchy, where
/// the v2 tree has no memory controller): `memory.limit_in_bytes - memory.usage_in_bytes`.
/// v1 spells "no limit" as a huge number (2^63 rounded down to a page).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub fn cgroup_v1_limit_room(limit: &str, usage: &str) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok()?;
    if limit >= 1 << 62 {
        return None;
    }
    let usage: u64 = usage.trim().parse().unwrap_or(0);
    Some(limit.saturating_sub(usage))
}

#[cfg(target_os = "linux")]
fn cgroup_v1_room() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = cgroup.lines().find_map(|l| {
        let (_, rest) = l.split_once(':')?;
        let (controllers, path) = rest.split_once(':')?;
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    })?;
    let root = std::path::Path::new("/sys/fs/cgroup/memory");
    let dir = root.join(rel.trim().trim_start_matches('/'));
    let mut room: Option<u64> = None;
    for d in dir.ancestors().take_while(|d| d.starts_with(root)) {
        let Ok(limit) = std::fs::read_to_string(d.join("memory.limit_in_bytes")) else {
            continue;
        };
        let usage = std::fs::read_to_string(d.join("memory.usage_in_bytes")).unwrap_or_default();
        if let Some(r) = cgroup_v1_limit_room(&limit, &usage) {
            room = Some(room.map_or(r, |x| x.min(r)));
        }
    }
    room
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo() {
        let text = "MemTotal:       16314564 kB\nMemFree:  1 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(mem_available(text), Some(12_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn cgroup_room_is_limit_minus_usage() {
        assert_eq!(cgroup_limit_room("max\n", "100"), None);
        assert_eq!(cgroup_limit_room("1000\n", "300\n"), Some(700));
        assert_eq!(cgroup_limit_room("1000", "3000"), Some(0));
    }

    #[test]
    fn cgroup_v1_room_ignores_the_unlimited_sentinel() {
        assert_eq!(
            cgroup_v1_limit_room("9223372036854771712\n", "6302961664\n"),
            None
        );
        assert_eq!(
            cgroup_v1_limit_room("4294967296\n", "1073741824\n"),
            Some(3 << 30)
        );
        assert_eq!(cgroup_v1_limit_room("100", "300"), Some(0));
        assert_eq!(cgroup_v1_limit_room("garbage", "1"), None);
    }

    #[test]
    fn metal_default_working_set() {
        assert_eq!(
            metal_recommended_working_set(16 * Bytes::GIB),
            16 * Bytes::GIB / 3 * 2
        );
        assert_eq!(
            metal_recommended_working_set(64 * Bytes::GIB),
            48 * Bytes::GIB
        );
    }

    #[test]
    fn override_wins() {
        let b = budget(Some(Bytes(5))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.bytes, Bytes(5));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn detects_something_on_linux() {
        let b = detect().unwrap_or_else(|e| panic!("{e}"));
        assert!(b.bytes.0 > 0);
    }
}
