//! Memory evidence at a worker's death: whether its memory was at a limit it ran under
//! (its address space or data segment at its rlimit, MLX's active memory at the limit it
//! was given, its footprint near the ceiling, its cgroup at `memory.max`), and whether the
//! kernel's OOM killer acted while it lived (the cgroup's `oom_kill` counter, read at
//! spawn and at death).

use std::path::{Path, PathBuf};

use protocol::MemoryEvidence;

/// A process limit counts as reached when the use is within 10% of it: the allocation
/// that was refused was larger than what was left.
const PROCESS_LIMIT_PCT: u64 = 90;
/// MLX's active memory within 10% of the memory limit it was given.
const MLX_LIMIT_PCT: u64 = 90;
/// The footprint over 70% of the ceiling (the sampler may have missed the last rise).
const CEILING_PCT: u64 = 70;

/// The limits a worker runs under.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_AS`: the one it inherits from this process, lowered by `--rlimit-as`.
    pub rlimit_as: Option<u64>,
    /// `RLIMIT_DATA`, inherited.
    pub rlimit_data: Option<u64>,
    /// The supervisor's footprint ceiling.
    pub ceiling: Option<u64>,
    /// The memory limit MLX was given (the budget).
    pub mlx: Option<u64>,
}

/// The worker's memory when it died: its last words (the fatal handler's line), else the
/// supervisor's last samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Virtual size (what `RLIMIT_AS` limits).
    pub vm: u64,
    /// Data segment (what `RLIMIT_DATA` limits), when known.
    pub data: Option<u64>,
    /// RSS / phys_footprint.
    pub footprint: u64,
    /// MLX's active memory, from the last telemetry.
    pub mlx_active: u64,
}

impl Limits {
    /// The limits of a worker started with `rlimit_as` (`--rlimit-as`), `ceiling` and
    /// MLX's memory limit `mlx`, in this process's rlimits.
    pub fn new(rlimit_as: Option<u64>, ceiling: Option<u64>, mlx: Option<u64>) -> Limits {
        let (inherited, data) = crate::budget::own_rlimits();
        Limits {
            rlimit_as: match (inherited, rlimit_as) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            rlimit_data: data,
            ceiling,
            mlx,
        }
    }

    /// The first limit `u` was at, as evidence.
    pub fn reached(&self, u: &Usage) -> Option<MemoryEvidence> {
        let near =
            |used: u64, limit: u64, pct: u64| used.saturating_mul(100) >= limit.saturating_mul(pct);
        let evidence = |which: &str, limit: u64, used: u64| MemoryEvidence {
            which: which.to_string(),
            limit: Some(limit),
            used: Some(used),
            text: None,
        };
        if let Some(l) = self.rlimit_as.filter(|&l| near(u.vm, l, PROCESS_LIMIT_PCT)) {
            return Some(evidence("RLIMIT_AS", l, u.vm));
        }
        if let (Some(l), Some(d)) = (self.rlimit_data, u.data) {
            if near(d, l, PROCESS_LIMIT_PCT) {
                return Some(evidence("RLIMIT_DATA", l, d));
            }
        }
        if let Some(l) = self
            .mlx
            .filter(|&l| u.mlx_active > 0 && near(u.mlx_active, l, MLX_LIMIT_PCT))
        {
            return Some(evidence("MLX memory limit", l, u.mlx_active));
        }
        if let Some(c) = self.ceiling.filter(|&c| near(u.footprint, c, CEILING_PCT)) {
            return Some(evidence("memory ceiling", c, u.footprint));
        }
        None
    }
}

/// The cgroup a worker runs in (its supervisor's): where the kernel counts the times its
/// usage hit `memory.max` and the OOM kills in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    dir: PathBuf,
    v1: bool,
}

/// A cgroup's memory counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// OOM kills in the cgroup (v2 `memory.events` `oom_kill`, v1 `memory.oom_control`
    /// `oom_kill`).
    pub oom_kill: u64,
    /// The times its usage hit the limit (v2 `memory.events` `max`, v1 `memory.failcnt`).
    pub max: u64,
    /// The kernel's OOM kills on the whole machine (`/proc/vmstat` `oom_kill`): the
    /// global OOM killer of a host without a cgroup limit.
    pub global_oom_kill: u64,
}

impl Cgroup {
    /// This process's cgroup, v2 when it has memory events, else the v1 memory
    /// controller's.
    #[cfg(target_os = "linux")]
    pub fn of_this_process() -> Option<Cgroup> {
        if let Some(dir) =
            crate::budget::cgroup_v2_dir().filter(|d| d.join("memory.events").exists())
        {
            return Some(Cgroup { dir, v1: false });
        }
        crate::budget::cgroup_v1_dir()
            .filter(|d| d.join("memory.oom_control").exists())
            .map(|dir| Cgroup { dir, v1: true })
    }

    #[cfg(not(target_os = "linux"))]
    pub fn of_this_process() -> Option<Cgroup> {
        None
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its counters now (zeros for what cannot be read).
    pub fn counters(&self) -> Counters {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let global = std::fs::read_to_string("/proc/vmstat")
            .ok()
            .and_then(|t| field(&t, "oom_kill"))
            .unwrap_or(0);
        if self.v1 {
            Counters {
                oom_kill: field(&read("memory.oom_control"), "oom_kill").unwrap_or(0),
                max: read("memory.failcnt").trim().parse().unwrap_or(0),
                global_oom_kill: global,
            }
        } else {
            let events = read("memory.events");
            Counters {
                oom_kill: field(&events, "oom_kill").unwrap_or(0),
                max: field(&events, "max").unwrap_or(0),
                global_oom_kill: global,
            }
        }
    }

    /// The limit and the highest usage the kernel recorded (v2 `memory.max` and
    /// `memory.peak`, v1 `memory.limit_in_bytes` and `memory.max_usage_in_bytes`).
    fn limit_and_peak(&self) -> (Option<u64>, Option<u64>) {
        let read = |name: &str| -> Option<u64> {
            std::fs::read_to_string(self.dir.join(name))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        if self.v1 {
            (
                read("memory.limit_in_bytes").filter(|&l| l < 1 << 62),
                read("memory.max_usage_in_bytes"),
            )
        } else {
            (read("memory.max"), read("memory.peak"))
        }
    }

    /// What changed in the cgroup between `before` (at spawn) and `after` (at death): the
    /// OOM killer acted, or the usage hit the limit.
    pub fn change(&self, before: Counters, after: Counters) -> Option<CgroupChange> {
        let (limit, peak) = self.limit_and_peak();
        let name = self.dir.display().to_string();
        if after.oom_kill > before.oom_kill || after.global_oom_kill > before.global_oom_kill {
            return Some(CgroupChange::OomKill(MemoryEvidence {
                which: "OOM killer".into(),
                limit,
                used: peak,
                text: Some(if after.oom_kill > before.oom_kill {
                    format!(
                        "the kernel's OOM killer in cgroup {name} (oom_kill {} → {})",
                        before.oom_kill, after.oom_kill
                    )
                } else {
                    format!(
                        "the kernel's OOM killer (/proc/vmstat oom_kill {} → {})",
                        before.global_oom_kill, after.global_oom_kill
                    )
                }),
            }));
        }
        (after.max > before.max).then(|| {
            CgroupChange::AtLimit(MemoryEvidence {
                which: "cgroup memory.max".into(),
                limit,
                used: peak,
                text: Some(format!(
                    "cgroup {name} hit its memory limit {} time(s)",
                    after.max - before.max
                )),
            })
        })
    }
}

/// A cgroup's memory news over a worker's life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupChange {
    /// The kernel's OOM killer killed a process (the worker, when it died of SIGKILL).
    OomKill(MemoryEvidence),
    /// The cgroup's usage hit its limit: an allocation was refused or reclaimed for.
    AtLimit(MemoryEvidence),
}

/// The number after `name ` on its own line (`memory.events`, `/proc/vmstat`).
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            rlimit_as: Some(1000),
            rlimit_data: Some(2000),
            ceiling: Some(10_000),
            mlx: Some(5000),
        }
    }

    #[test]
    fn the_limit_reached_is_named_with_its_numbers() {
        let l = limits();
        let at = |u: Usage| l.reached(&u).map(|e| (e.which, e.limit, e.used));
        assert_eq!(
            at(Usage {
                vm: 950,
                ..Usage::default()
            }),
            Some(("RLIMIT_AS".into(), Some(1000), Some(950)))
        );
        assert_eq!(
            at(Usage {
                vm: 100,
                data: Some(1900),
                ..Usage::default()
            }),
            Some(("RLIMIT_DATA".into(), Some(2000), Some(1900)))
        );
        assert_eq!(
            at(Usage {
                mlx_active: 4600,
                ..Usage::default()
            }),
            Some(("MLX memory limit".into(), Some(5000), Some(4600)))
        );
        assert_eq!(
            at(Usage {
                footprint: 8000,
                ..Usage::default()
            }),
            Some(("memory ceiling".into(), Some(10_000), Some(8000)))
        );
        assert_eq!(
            at(Usage {
                vm: 800,
                data: Some(1000),
                footprint: 100,
                mlx_active: 4000,
            }),
            None,
            "far from every limit"
        );
        assert_eq!(Limits::default().reached(&Usage::default()), None);
    }

    #[test]
    fn counters_are_read_from_the_kernels_text() {
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(field(events, "oom_kill"), Some(1));
        assert_eq!(field(events, "max"), Some(12));
        assert_eq!(field(events, "oom"), Some(2));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(field(v1, "oom_kill"), Some(3));
        assert_eq!(field("", "oom_kill"), None);
    }

    #[test]
    fn an_oom_kill_between_spawn_and_death_names_the_oom_killer_and_the_cgroup() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("memory.max"), "1048576\n").unwrap_or_default();
        std::fs::write(dir.path().join("memory.peak"), "1040000\n").unwrap_or_default();
        let cg = Cgroup {
            dir: dir.path().to_path_buf(),
            v1: false,
        };
        let before = Counters::default();
        let after = Counters {
            oom_kill: 1,
            max: 3,
            global_oom_kill: 1,
        };
        let Some(CgroupChange::OomKill(e)) = cg.change(before, after) else {
            panic!("an OOM kill")
        };
        assert_eq!(e.which, "OOM killer");
        assert_eq!((e.limit, e.used), (Some(1_048_576), Some(1_040_000)));
        let text = e.text.unwrap_or_default();
        assert!(
            text.contains("OOM killer") && text.contains(&dir.path().display().to_string()),
            "{text}"
        );
        let hit = Counters {
            max: 1,
            ..Counters::default()
        };
        assert!(matches!(
            cg.change(before, hit),
            Some(CgroupChange::AtLimit(_))
        ));
        assert_eq!(cg.change(before, before), None);
    }
}
