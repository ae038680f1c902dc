//! The watchdogs around a worker that telemetry alone cannot be: the hard memory ceiling
//! (the supervisor samples the worker's real footprint itself) and the stall detector (no
//! finished work and no CPU, behind a heartbeat that may still be beating).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::sync::watch;

use super::footprint;
use crate::classify::KillReason;

/// How many footprint samples are kept for a report.
pub const KEEP_SAMPLES: usize = 20;
/// Below this share of one core over the stall window, a silent worker is stalled.
const STALL_CPU_SHARE: f64 = 0.05;

/// A signal the supervisor sent, and why.
#[derive(Clone, Debug)]
pub struct Sent {
    pub signal: Signal,
    pub reason: KillReason,
}

/// What the sampler saw and every signal the supervisor sent: shared by the worker's
/// actor and its sampler.
#[derive(Default)]
pub struct Watch {
    pub sent: Vec<Sent>,
    /// (ms since spawn, footprint bytes)
    pub footprints: VecDeque<(u64, u64)>,
    pub max_footprint: u64,
    /// The last virtual size sampled.
    pub virtual_bytes: u64,
    /// The last data segment sampled.
    pub data_bytes: Option<u64>,
}

/// Sends `signal` to the worker's process group, recording it first.
pub fn kill(watch: &Mutex<Watch>, pid: Pid, signal: Signal, reason: KillReason) {
    watch
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .sent
        .push(Sent { signal, reason });
    let _ = nix::sys::signal::killpg(pid, signal);
}

/// Samples the worker's footprint every `every`; over `ceiling`, kills its process group
/// (recorded) and says so on `over`. `on_sample` sees each sample (the published state).
pub async fn sample_footprint(
    pid: Pid,
    ceiling: Option<u64>,
    every: Duration,
    started: Instant,
    watch: Arc<Mutex<Watch>>,
    over: watch::Sender<bool>,
    on_sample: impl Fn(u64),
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(fp) = footprint::footprint(pid.as_raw()) else {
            return;
        };
        on_sample(fp);
        let t_ms = started.elapsed().as_millis() as u64;
        let mut w = watch.lock().unwrap_or_else(|p| p.into_inner());
        if w.footprints.len() == KEEP_SAMPLES {
            w.footprints.pop_front();
        }
        w.footprints.push_back((t_ms, fp));
        w.max_footprint = w.max_footprint.max(fp);
        w.virtual_bytes = footprint::virtual_bytes(pid.as_raw()).unwrap_or(w.virtual_bytes);
        w.data_bytes = footprint::data_bytes(pid.as_raw()).or(w.data_bytes);
        if ceiling.is_some_and(|c| fp > c) {
            w.sent.push(Sent {
                signal: Signal::SIGKILL,
                reason: KillReason::Ceiling,
            });
            let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
            drop(w);
            let _ = over.send(true);
            return;
        }
    }
}

/// Watches one request for a stall: no progress from the worker's main thread and almost
/// no CPU used, for the stall timeout. Telemetry alone cannot tell: its thread keeps
/// sampling while the main thread is stuck (seen: MLX deadlocked after an allocation
/// failed under RLIMIT_AS).
pub struct Stall {
    pid: i32,
    progress: Option<u64>,
    since: Instant,
    cpu_since: Option<Duration>,
}

impl Stall {
    pub fn new(pid: i32) -> Stall {
        Stall {
            pid,
            progress: None,
            since: Instant::now(),
            cpu_since: footprint::cpu_time(pid),
        }
    }

    /// A description of the stall, once there is one. A worker whose memory is
    /// `at_limit` (its address space or data segment at its rlimit) is stalled however
    /// busy it is: a thread spinning on a refused allocation (OpenBLAS retries its
    /// buffer's mmap forever) is no computation.
    pub fn check(&mut self, progress: u64, timeout: Duration, at_limit: bool) -> Option<String> {
        if self.progress != Some(progress) {
            self.progress = Some(progress);
            self.since = Instant::now();
            self.cpu_since = footprint::cpu_time(self.pid);
            return None;
        }
        let quiet = self.since.elapsed();
        if quiet < timeout {
            return None;
        }
        let cpu = match (self.cpu_since, footprint::cpu_time(self.pid)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let share = cpu.map(|c| c.as_secs_f64() / quiet.as_secs_f64().max(1e-3));
        if !at_limit && share.is_some_and(|s| s >= STALL_CPU_SHARE) {
            // Busy in a long computation: not stalled. Look again after another window.
            self.since = Instant::now();
            self.cpu_since = footprint::cpu_time(self.pid);
            return None;
        }
        Some(format!(
            "the worker finished no work for {:.1} s{}{}: stalled",
            quiet.as_secs_f64(),
            share.map_or(String::new(), |s| format!(
                " and used {:.1}% of a core",
                s * 100.0
            )),
            if at_limit {
                " with its memory at a process limit"
            } else {
                ""
            }
        ))
    }
}
