//! How a worker's life ends: stopped on purpose (what was asked of it ends `Cancelled`),
//! or dead: killed if need be, its evidence gathered, and the failure reported to every
//! request and published.

use std::{sync::Arc, time::Duration};

use nix::sys::signal::Signal;
use protocol::{Failure, Telemetry, ToWorker};

use super::{actor::Actor, End, Update, WorkerState, SHUTDOWN_GRACE, STDERR_GRACE, TERM_GRACE};
use crate::classify::{self, KillReason};
use crate::supervise::{
    pressure,
    reap::ExitInfo,
    report::{self, Facts},
    watchdog,
};

impl Actor {
    fn kill(&self, signal: Signal, reason: KillReason) {
        watchdog::kill(&self.watch, self.pid, signal, reason);
    }

    /// Waits for the exit (up to `limit`); true when it came.
    pub(super) async fn await_exit(&mut self, limit: Duration) -> bool {
        if self.exit.is_some() {
            return true;
        }
        let Some(rx) = self.exit_rx.as_mut() else {
            return false;
        };
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(info)) => {
                self.exit = Some(info);
                self.exit_rx = None;
                true
            }
            _ => false,
        }
    }

    /// Ends the request in flight and every queued one with `end`.
    fn end_all(&mut self, end: impl Fn() -> End) {
        let current = self.current.take().map(|c| c.updates);
        for updates in current
            .into_iter()
            .chain(self.pending.drain(..).map(|j| j.updates))
        {
            let _ = updates.send(Update::End(end()));
        }
    }

    /// Shuts the worker down on purpose: what was asked of it ends `Cancelled`.
    pub(super) async fn stop(&mut self) -> Option<ExitInfo> {
        let _ = self.conn.send(&ToWorker::Shutdown).await;
        if !self.await_exit(SHUTDOWN_GRACE).await {
            self.kill(Signal::SIGKILL, KillReason::Stop);
            self.await_exit(SHUTDOWN_GRACE).await;
        }
        self.sampler.abort();
        self.end_all(|| End::Cancelled);
        self.publish(|s| s.state = WorkerState::Stopped);
        self.exit.clone()
    }

    /// The worker is unusable: end it, report it to every request, publish the failure.
    pub(super) async fn die(&mut self, kill: Option<KillReason>, message: Option<String>) {
        let f = Arc::new(self.fail(kill, message).await);
        tracing::warn!(
            pid = self.pid.as_raw(),
            kind = %f.kind,
            phase = %f.phase,
            model = f.model.as_deref().unwrap_or(""),
            "worker failed"
        );
        self.end_all(|| End::Died(Box::new((*f).clone())));
        self.publish(|s| {
            s.state = WorkerState::Failed;
            s.failure = Some(f);
        });
    }

    /// The limit the worker's memory (`vm`, `data`, `footprint`, MLX's last active
    /// memory) was at, if one.
    pub(super) fn at_limit(
        &self,
        vm: u64,
        data: Option<u64>,
        footprint: u64,
    ) -> Option<protocol::MemoryEvidence> {
        let usage = pressure::Usage {
            vm,
            data,
            footprint,
            mlx_active: self.telemetry.back().map_or(0, |t| t.active_bytes),
        };
        pressure::Limits::new(
            self.opts.rlimit_as,
            self.opts.memory_ceiling,
            self.ctx.budget_bytes,
        )
        .reached(&usage)
    }

    /// Ends the worker if needed, gathers the evidence, and describes the failure.
    pub(super) async fn fail(
        &mut self,
        kill: Option<KillReason>,
        message: Option<String>,
    ) -> Failure {
        let mut killed_for = kill;
        if self.exit.is_none() {
            // A kill decided by the sampler was already sent and recorded by it.
            if *self.ceiling_rx.borrow() {
                killed_for = Some(KillReason::Ceiling);
            } else if let Some(reason) = kill {
                if reason == KillReason::Unresponsive {
                    self.kill(Signal::SIGTERM, reason);
                    if !self.await_exit(TERM_GRACE).await {
                        self.kill(Signal::SIGKILL, reason);
                    }
                } else {
                    self.kill(Signal::SIGKILL, reason);
                }
            } else if !self.await_exit(Duration::from_millis(300)).await {
                // Alive but unusable (e.g. the socket broke): stop it.
                self.kill(Signal::SIGKILL, KillReason::Stop);
            }
            self.await_exit(SHUTDOWN_GRACE).await;
        }
        self.sampler.abort();
        // The worker's last words: wait briefly for its stderr to close.
        if let Some(done) = self.stderr_done.take() {
            let _ = tokio::time::timeout(STDERR_GRACE, done).await;
        }
        let stderr = self.stderr.text();
        let (sent_by_us, max_footprint, footprints, last_vm, last_data) = {
            let w = self.watch.lock().unwrap_or_else(|p| p.into_inner());
            (
                w.sent.clone(),
                w.max_footprint,
                w.footprints.clone(),
                w.virtual_bytes,
                w.data_bytes,
            )
        };
        if killed_for.is_none() {
            killed_for = sent_by_us.last().map(|s| s.reason);
        }
        let exit = self.exit.clone();
        let signal_ours = exit
            .as_ref()
            .and_then(|e| e.signal)
            .is_some_and(|sig| sent_by_us.iter().any(|s| s.signal == sig));
        // Memory at the moment of death: the worker's last words when it wrote them,
        // else the last sample and the kernel's peak RSS.
        let max_rss = exit.as_ref().map_or(0, |e| e.max_rss_bytes);
        let (vm, fp, data) = classify::fatal_memory(&stderr).unwrap_or_else(|| {
            let last = footprints.back().map_or(0, |f| f.1);
            (last_vm, last.max(max_rss), last_data)
        });
        // The limit it was at, else the cgroup's news over its life (an OOM kill names
        // the killer; the usage at `memory.max` is a limit reached).
        let mut evidence = self.at_limit(vm, data.or(last_data), fp);
        let mut near_limit = evidence.is_some();
        if let Some((cg, before)) = &self.cgroup {
            match cg.change(*before, cg.counters()) {
                Some(pressure::CgroupChange::OomKill(e)) => evidence = Some(e),
                Some(pressure::CgroupChange::AtLimit(e)) if evidence.is_none() => {
                    near_limit = true;
                    evidence = Some(e);
                }
                _ => {}
            }
        }
        let mlx_peak = self
            .telemetry
            .iter()
            .map(|t| t.peak_bytes)
            .max()
            .unwrap_or(0);
        let mut telemetry: Vec<Telemetry> = self.telemetry.iter().cloned().collect();
        let ceiling = killed_for == Some(KillReason::Ceiling);
        if ceiling && telemetry.is_empty() {
            // Keep the sampler's own view when the worker sent none.
            telemetry = footprints
                .iter()
                .map(|&(t_ms, f)| Telemetry {
                    t_ms,
                    phase: self.phase,
                    active_bytes: 0,
                    peak_bytes: 0,
                    cache_bytes: 0,
                    footprint_bytes: f,
                    progress: 0,
                })
                .collect();
        }
        let mut f = Facts::new(self.phase, self.started);
        f.stage = self.stage(self.phase);
        f.killed_for = if signal_ours || exit.is_none() {
            killed_for
        } else {
            None
        };
        f.signal_ours = signal_ours;
        f.worker_error = self.last_error.clone();
        f.stderr = stderr;
        f.telemetry = telemetry;
        f.near_limit = near_limit;
        f.evidence = evidence;
        f.peak_bytes = Some(mlx_peak.max(max_footprint).max(max_rss));
        f.message = message;
        f.exit = exit;
        report::build(&self.opts, &self.ctx, f)
    }
}
