//! The supervision core, one for `mlxsup run` and the daemon: spawn a worker, talk to
//! it, watch it, and turn its end into a [`Failure`](protocol::Failure) with evidence.
//!
//! A [`WorkerHandle`] is the handle on one worker process in its own process group, run
//! by an actor task that always reads its socket ([`worker`]). Around it: a thread that
//! reaps it with `wait4` (exit status and peak RSS), a thread that keeps the bounded tail
//! of its stderr, and the watchdogs ([`watchdog`]: the hard ceiling on its sampled
//! footprint, the stall detector). Every signal the supervisor sends is recorded, so a
//! SIGKILL it did not send is known to come from the OS. Every failure report is built in
//! one place ([`report`]); workers are forked from one long-lived thread ([`spawner`]).

pub mod footprint;
pub mod pressure;
pub mod reap;
pub mod report;
pub mod runtime_dir;
mod spawn;
mod spawner;
pub mod stderr_tail;
pub mod watchdog;
mod worker;

use std::{path::PathBuf, time::Duration};

use protocol::Failure;

pub use report::ReportContext;
pub use worker::{End, Status, Update, WorkerHandle, WorkerState};

/// Default stall timeout: long enough for one step of a huge model or a slow disk.
pub const DEFAULT_STALL: Duration = Duration::from_secs(120);

/// What spawning and watching a worker needs (what a report needs is [`ReportContext`]).
#[derive(Clone, Debug)]
pub struct SpawnOptions {
    pub worker_exe: PathBuf,
    pub runtime_dir: PathBuf,
    pub handshake_timeout: Duration,
    /// No message (telemetry is the heartbeat) for this long → unresponsive.
    pub heartbeat_timeout: Duration,
    /// A request whose worker finishes no work and uses almost no CPU for this long is
    /// stalled (a deadlock inside MLX, say) → unresponsive.
    pub stall_timeout: Duration,
    /// Footprint sampling period of the hard ceiling.
    pub sample_interval: Duration,
    /// Kill the worker when its footprint passes this.
    pub memory_ceiling: Option<u64>,
    /// Linux: run the worker under this `RLIMIT_AS`.
    pub rlimit_as: Option<u64>,
}

impl SpawnOptions {
    /// Options for a short utility job in a worker (info, make-model): no ceiling,
    /// generous timeouts.
    pub fn utility() -> SpawnOptions {
        SpawnOptions {
            worker_exe: default_worker_exe(),
            runtime_dir: runtime_dir::default_path(),
            handshake_timeout: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            stall_timeout: DEFAULT_STALL,
            sample_interval: Duration::from_millis(100),
            memory_ceiling: None,
            rlimit_as: None,
        }
    }
}

/// Where the worker binary is: `MLXSUP_WORKER`, else beside this executable.
pub fn default_worker_exe() -> PathBuf {
    if let Some(p) = std::env::var_os("MLXSUP_WORKER") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("mlxsup-worker")))
        .unwrap_or_else(|| PathBuf::from("mlxsup-worker"))
}

/// Why a worker could not be started.
#[derive(Debug)]
pub enum SpawnError {
    /// mlxsup's own side failed (socket directory, the worker binary): exit 1.
    Setup(String),
    /// The worker started and failed (died before connecting, bad handshake).
    Failed(Box<Failure>),
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::Setup(m) => f.write_str(m),
            SpawnError::Failed(x) => write!(f, "the worker failed: {}: {}", x.kind, x.advice),
        }
    }
}
