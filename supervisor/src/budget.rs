//! The memory budget of this machine: the bytes a model may use. Every limit the worker
//! will run under is read, each gives its room, and the smallest room wins ([`Budget`]
//! names it and lists the others):
//!
//! - Linux: `MemAvailable` from `/proc/meminfo`; the room left under this process's
//!   cgroup v2 `memory.max` (`memory.max - memory.current`) when a limit is set, or under
//!   a cgroup v1 `memory.limit_in_bytes` on hosts whose memory controller is v1.
//! - macOS: the GPU wired-memory limit `iogpu.wired_limit_mb` when an administrator set
//!   it (non-zero); otherwise Metal's default recommended working set, which on Apple
//!   Silicon is about two thirds of `hw.memsize` up to 36 GiB of RAM and three quarters
//!   above (the values `MTLDevice.recommendedMaxWorkingSetSize` reports: 8 GiB → 5.3 GiB,
//!   16 GiB → 10.7 GiB, 64 GiB → 48 GiB).
//! - Both: the process limits a worker inherits (`ulimit -v`, `ulimit -d`) or is given
//!   (`run --rlimit-as`): `RLIMIT_AS` and `RLIMIT_DATA`. A fresh worker already uses part
//!   of them before it loads anything (its libraries, MLX's and the BLAS threads' stacks
//!   and heaps): the room is the limit less that measured overhead
//!   ([`WORKER_ADDRESS_SPACE`], [`WORKER_DATA`]).
//! - `--budget SIZE` overrides them all.
use estimate::Bytes;
use serde::Serialize;

/// The address space of a worker that has started MLX and its threads, before the
/// model's memory: measured as the `VmPeak` of an `mlxsup-worker` serving a 0.3M-parameter
/// model on Linux x86-64, MLX 0.32 CPU backend, 2 cores (411 MiB: libmlx and OpenBLAS
/// mapped, thread stacks, glibc's malloc arenas, MLX's I/O thread pool while it loads),
/// rounded up to 448 MiB. More cores start more threads, each reserving a stack and
/// possibly an arena: on a larger machine the true figure is higher, and a failure at
/// the limit is still classified by its evidence.
pub const WORKER_ADDRESS_SPACE: u64 = 448 * Bytes::MIB;
/// The data segment (`VmData`: private writable mappings, what `RLIMIT_DATA` limits since
/// Linux 4.7) of the same worker: 57 MiB measured, rounded up to 96 MiB.
pub const WORKER_DATA: u64 = 96 * Bytes::MIB;

/// A budget and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Bytes the model may use.
    pub bytes: Bytes,
    /// How it was determined, for people (`MemAvailable`, `cgroup memory.max`, …): the
    /// source of the smallest room.
    pub source: String,
    /// Every limit that was read, with its room (the smallest is `bytes`).
    pub limits: Vec<Limit>,
}

/// One limit the worker will run under and the room it leaves (`info --json`'s and
/// `inspect --json`'s `budget_limits`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Limit {
    /// `MemAvailable`, `cgroup memory.max`, `RLIMIT_AS`, …
    pub source: String,
    /// The limit itself; `None` for what is free (`MemAvailable`, the Metal working set).
    pub limit_bytes: Option<u64>,
    /// What already counts against it before the model loads: the cgroup's usage, a
    /// fresh worker's address space or data segment.
    pub used_bytes: u64,
    /// What is left for the model.
    pub room_bytes: u64,
}

impl Limit {
    fn free(source: &str, room: u64) -> Limit {
        Limit {
            source: source.to_string(),
            limit_bytes: None,
            used_bytes: 0,
            room_bytes: room,
        }
    }
}

impl Limit {
    /// For people: `RLIMIT_AS 683.6 MiB, less 420 MiB already used`, or just the source
    /// for what is free.
    pub fn describe(&self) -> String {
        match self.limit_bytes {
            Some(l) => format!(
                "{} {}, less {} already used",
                self.source,
                Bytes(l),
                Bytes(self.used_bytes)
            ),
            None => self.source.clone(),
        }
    }
}

impl Budget {
    /// Where the budget came from, for people: the deciding limit with its numbers.
    pub fn describe(&self) -> String {
        self.limits
            .iter()
            .find(|l| l.source == self.source && l.room_bytes == self.bytes.0)
            .map_or_else(|| self.source.clone(), Limit::describe)
    }

    /// The budget of the smallest room among `limits` (the first of equals).
    fn smallest(limits: Vec<Limit>) -> Option<Budget> {
        let min = limits.iter().min_by_key(|l| l.room_bytes)?;
        Some(Budget {
            bytes: Bytes(min.room_bytes),
            source: min.source.clone(),
            limits: limits.clone(),
        })
    }
}

/// The budget: `overridden` when given, else this machine's.
pub fn budget(overridden: Option<Bytes>) -> Result<Budget, String> {
    budget_for(overridden, None)
}

/// The budget of a worker that will also run under `rlimit_as` (`run --rlimit-as`): the
/// lower of it and the limit the worker inherits.
pub fn budget_for(overridden: Option<Bytes>, rlimit_as: Option<u64>) -> Result<Budget, String> {
    match overridden {
        Some(bytes) => Ok(Budget {
            bytes,
            source: "--budget".to_string(),
            limits: vec![Limit::free("--budget", bytes.0)],
        }),
        None => {
            let mut limits = machine()?;
            limits.extend(process_limits(rlimit_as));
            Budget::smallest(limits).ok_or_else(|| "no memory limit could be read".to_string())
        }
    }
}

/// This machine's budget.
pub fn detect() -> Result<Budget, String> {
    budget_for(None, None)
}

/// The process limits a worker runs under, each less what a fresh worker already uses.
fn process_limits(rlimit_as: Option<u64>) -> Vec<Limit> {
    let mut out = Vec::new();
    let (inherited, data) = own_rlimits();
    let as_limit = match (inherited, rlimit_as) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(limit) = as_limit {
        out.push(process_limit("RLIMIT_AS", limit, WORKER_ADDRESS_SPACE));
    }
    if let Some(limit) = data {
        out.push(process_limit("RLIMIT_DATA", limit, WORKER_DATA));
    }
    out
}

/// The room under a process limit of `limit` bytes for a worker that uses `overhead`.
pub fn process_limit(source: &str, limit: u64, overhead: u64) -> Limit {
    Limit {
        source: source.to_string(),
        limit_bytes: Some(limit),
        used_bytes: overhead,
        room_bytes: limit.saturating_sub(overhead),
    }
}

/// This process's soft `RLIMIT_AS` and `RLIMIT_DATA` (its workers inherit them), each
/// `None` when unlimited.
#[cfg(unix)]
pub fn own_rlimits() -> (Option<u64>, Option<u64>) {
    fn get(resource: Resource) -> Option<u64> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        let rc = unsafe { libc::getrlimit(resource, &mut lim) };
        (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
    }
    (get(libc::RLIMIT_AS), get(libc::RLIMIT_DATA))
}

#[cfg(target_os = "linux")]
type Resource = libc::__rlimit_resource_t;
#[cfg(all(unix, not(target_os = "linux")))]
type Resource = libc::c_int;

#[cfg(not(unix))]
pub fn own_rlimits() -> (Option<u64>, Option<u64>) {
    (None, None)
}

/// The machine's limits: what is free, and the cgroup's room.
#[cfg(target_os = "linux")]
fn machine() -> Result<Vec<Limit>, String> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| format!("/proc/meminfo: cannot read: {e}"))?;
    let available = mem_available(&meminfo).ok_or("/proc/meminfo: no MemAvailable line")?;
    let mut out = vec![Limit::free("MemAvailable", available)];
    out.extend(cgroup_room());
    out.extend(cgroup_v1_room());
    Ok(out)
}

/// The machine's limits: the Metal working set.
#[cfg(target_os = "macos")]
fn machine() -> Result<Vec<Limit>, String> {
    if let Some(mb) = sysctl_u64("iogpu.wired_limit_mb").filter(|&mb| mb > 0) {
        return Ok(vec![Limit::free("iogpu.wired_limit_mb", mb * Bytes::MIB)]);
    }
    let memsize = sysctl_u64("hw.memsize").ok_or("sysctl hw.memsize failed")?;
    Ok(vec![Limit::free(
        "Metal recommended working set",
        metal_recommended_working_set(memsize),
    )])
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn machine() -> Result<Vec<Limit>, String> {
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

/// This process's cgroup v2 directory (`/sys/fs/cgroup/…`), where its workers run too.
#[cfg(target_os = "linux")]
pub fn cgroup_v2_dir() -> Option<std::path::PathBuf> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    Some(std::path::Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/')))
}

/// This process's cgroup v1 memory-controller directory, on hosts that have one.
#[cfg(target_os = "linux")]
pub fn cgroup_v1_dir() -> Option<std::path::PathBuf> {
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
    Some(root.join(rel.trim().trim_start_matches('/')))
}

/// The tightest cgroup v2 limit on the path up to the root.
#[cfg(target_os = "linux")]
fn cgroup_room() -> Option<Limit> {
    let dir = cgroup_v2_dir()?;
    tightest(
        &dir,
        "/sys/fs/cgroup",
        "memory.max",
        "memory.current",
        |l, u| cgroup_limit_room(l, u).map(|room| (l.trim().parse().unwrap_or(0), room)),
    )
    .map(|(limit, room)| Limit {
        source: "cgroup memory.max".to_string(),
        limit_bytes: Some(limit),
        used_bytes: limit.saturating_sub(room),
        room_bytes: room,
    })
}

/// The tightest (limit, room) in the files `limit`/`usage` of `dir` and its ancestors
/// under `root`.
#[cfg(target_os = "linux")]
fn tightest(
    dir: &std::path::Path,
    root: &str,
    limit: &str,
    usage: &str,
    room: impl Fn(&str, &str) -> Option<(u64, u64)>,
) -> Option<(u64, u64)> {
    let mut best: Option<(u64, u64)> = None;
    for d in dir.ancestors().take_while(|d| d.starts_with(root)) {
        let Ok(l) = std::fs::read_to_string(d.join(limit)) else {
            continue;
        };
        let u = std::fs::read_to_string(d.join(usage)).unwrap_or_default();
        if let Some(r) = room(&l, &u) {
            if best.is_none_or(|b| r.1 < b.1) {
                best = Some(r);
            }
        }
    }
    best
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
fn cgroup_v1_room() -> Option<Limit> {
    let dir = cgroup_v1_dir()?;
    tightest(
        &dir,
        "/sys/fs/cgroup/memory",
        "memory.limit_in_bytes",
        "memory.usage_in_bytes",
        |l, u| cgroup_v1_limit_room(l, u).map(|room| (l.trim().parse().unwrap_or(0), room)),
    )
    .map(|(limit, room)| Limit {
        source: "cgroup v1 memory.limit_in_bytes".to_string(),
        limit_bytes: Some(limit),
        used_bytes: limit.saturating_sub(room),
        room_bytes: room,
    })
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

    /// The smallest room wins and is named; a process limit's room is the limit less a
    /// fresh worker's use of it.
    #[test]
    fn the_smallest_room_wins() {
        let limits = vec![
            Limit::free("MemAvailable", 20 << 30),
            process_limit("RLIMIT_AS", 700 << 20, 300 << 20),
            process_limit("RLIMIT_DATA", 900 << 20, 100 << 20),
        ];
        let b = Budget::smallest(limits).unwrap_or_else(|| panic!("a budget"));
        assert_eq!(b.bytes, Bytes(400 << 20));
        assert_eq!(b.source, "RLIMIT_AS");
        assert_eq!(b.limits.len(), 3);
        assert_eq!(process_limit("RLIMIT_AS", 1, 300).room_bytes, 0);
        assert!(Budget::smallest(Vec::new()).is_none());
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
