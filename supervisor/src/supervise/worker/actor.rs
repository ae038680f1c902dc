//! The actor task of one worker: its state, and the loop that always reads the socket,
//! runs the queued requests one at a time, and hands each its events and its end.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Instant,
};

use nix::{sys::signal::Signal, unistd::Pid};
use protocol::{
    client::{Connection, LocalStream},
    Event, Failure, FromWorker, Phase, ProtocolError, Reply, Request, RequestId, Stage, Telemetry,
    ToWorker, WorkerError, WorkerErrorKind,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{
    Command, End, Job, Status, Update, WorkerState, CANCEL_GRACE, DRAIN_LIMIT, SHUTDOWN_GRACE,
};
use crate::classify::KillReason;
use crate::supervise::{
    pressure,
    reap::ExitInfo,
    report::{self, Facts, ReportContext},
    stderr_tail,
    watchdog::{Stall, Watch, KEEP_SAMPLES},
    SpawnOptions,
};

/// A request the worker is serving.
pub(super) struct InFlight {
    id: RequestId,
    cancel: CancellationToken,
    pub(super) updates: mpsc::UnboundedSender<Update>,
    cancel_sent_at: Option<Instant>,
    stall: Stall,
    /// A request with images whose vision tower has not reported yet (`Event::Vision`
    /// comes when it is done): a failure in the prefill until then is the tower's.
    tower_pending: bool,
}

/// The actor's state: one worker.
pub(super) struct Actor {
    pub(super) pid: Pid,
    pub(super) conn: Connection<LocalStream>,
    pub(super) opts: SpawnOptions,
    pub(super) ctx: ReportContext,
    pub(super) started: Instant,
    pub(super) next_id: RequestId,
    /// The phase the worker last reported.
    pub(super) phase: Phase,
    /// The last working phase (not idle) of the current request: where it failed.
    pub(super) request_phase: Phase,
    pub(super) telemetry: VecDeque<Telemetry>,
    pub(super) last_heard: Instant,
    pub(super) last_error: Option<WorkerError>,
    pub(super) exit_rx: Option<oneshot::Receiver<ExitInfo>>,
    pub(super) exit: Option<ExitInfo>,
    pub(super) stderr: stderr_tail::Tail,
    pub(super) stderr_done: Option<oneshot::Receiver<()>>,
    pub(super) watch: Arc<Mutex<Watch>>,
    /// The worker's cgroup and its memory counters at spawn.
    pub(super) cgroup: Option<(pressure::Cgroup, pressure::Counters)>,
    pub(super) ceiling_rx: watch::Receiver<bool>,
    pub(super) sampler: tokio::task::JoinHandle<()>,
    pub(super) status: Arc<watch::Sender<Status>>,
    pub(super) current: Option<InFlight>,
    pub(super) pending: VecDeque<Job>,
}

impl Drop for Actor {
    fn drop(&mut self) {
        self.sampler.abort();
        if self.exit.is_none() {
            // Nothing may outlive the supervisor's hold on it (a runtime shutting down
            // drops this task mid-flight).
            let _ = nix::sys::signal::killpg(self.pid, Signal::SIGKILL);
        }
    }
}

/// What woke the actor.
enum Wake {
    Ceiling,
    Exit(Option<ExitInfo>),
    Message(Result<Option<FromWorker>, ProtocolError>),
    Command(Option<Command>),
    Cancel,
    Deadline,
}

impl Actor {
    pub(super) fn publish(&self, f: impl FnOnce(&mut Status)) {
        self.status.send_modify(f);
    }

    pub(super) async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Command>) {
        loop {
            if self.current.is_none() {
                if let Some(job) = self.pending.pop_front() {
                    if !self.start(job).await {
                        return;
                    }
                    continue;
                }
            }
            let mut deadline = self.last_heard + self.opts.heartbeat_timeout;
            if let Some(at) = self.current.as_ref().and_then(|c| c.cancel_sent_at) {
                // A cancelled request must end soon; a worker that does not stop is stopped.
                deadline = deadline.min(at + CANCEL_GRACE);
            }
            let deadline = tokio::time::Instant::from_std(deadline);
            let cancel = self
                .current
                .as_ref()
                .filter(|c| c.cancel_sent_at.is_none())
                .map(|c| c.cancel.clone());
            let wake = tokio::select! {
                biased;
                // Only a kill decided by the sampler: its channel also closes when the
                // sampler ends because the process is gone, which is the exit's news.
                Ok(_) = self.ceiling_rx.wait_for(|v| *v) => Wake::Ceiling,
                exit = async {
                    match self.exit_rx.as_mut() {
                        Some(rx) => rx.await.ok(),
                        None => std::future::pending().await,
                    }
                } => Wake::Exit(exit),
                msg = self.conn.recv::<FromWorker>() => Wake::Message(msg),
                cmd = cmds.recv() => Wake::Command(cmd),
                _ = async {
                    match &cancel {
                        Some(c) => c.cancelled().await,
                        None => std::future::pending().await,
                    }
                } => Wake::Cancel,
                _ = tokio::time::sleep_until(deadline) => Wake::Deadline,
            };
            match wake {
                Wake::Ceiling => return self.die(Some(KillReason::Ceiling), None).await,
                Wake::Exit(exit) => {
                    self.exit = exit;
                    self.exit_rx = None;
                    // What it wrote before it died (its last tokens and samples, its last
                    // error) is in the socket: read it all before reporting.
                    self.drain().await;
                    return self.die(None, None).await;
                }
                Wake::Message(msg) => {
                    self.last_heard = Instant::now();
                    match msg {
                        Ok(Some(FromWorker::Event { event, .. })) => {
                            if let Some(stalled) = self.on_event(event) {
                                return self
                                    .die(Some(KillReason::Unresponsive), Some(stalled))
                                    .await;
                            }
                        }
                        Ok(Some(FromWorker::Reply { id, body }))
                            if self.current.as_ref().is_some_and(|c| c.id == id) =>
                        {
                            self.finish(body);
                        }
                        Ok(Some(other)) => {
                            let m = format!("unexpected message {other:?}");
                            return self.die(Some(KillReason::ProtocolError), Some(m)).await;
                        }
                        Ok(None) => {
                            // The socket closed: the process is ending; its exit says how.
                            self.await_exit(SHUTDOWN_GRACE).await;
                            return self
                                .die(None, Some("the worker closed its socket".into()))
                                .await;
                        }
                        Err(e) if e.is_malformed() => {
                            return self
                                .die(Some(KillReason::ProtocolError), Some(e.to_string()))
                                .await;
                        }
                        Err(e) => {
                            self.await_exit(SHUTDOWN_GRACE).await;
                            return self.die(None, Some(e.to_string())).await;
                        }
                    }
                }
                Wake::Command(Some(Command::Job(job))) => self.pending.push_back(job),
                Wake::Command(Some(Command::Shutdown(done))) => {
                    let exit = self.stop().await;
                    let _ = done.send(exit);
                    return;
                }
                Wake::Command(None) => {
                    // Every handle is gone: nobody can use this worker any more.
                    self.stop().await;
                    return;
                }
                Wake::Cancel => {
                    if let Some(c) = self.current.as_mut() {
                        c.cancel_sent_at = Some(Instant::now());
                        let id = c.id;
                        let _ = self.conn.send(&ToWorker::Cancel { id }).await;
                    }
                }
                Wake::Deadline => {
                    let cancelling = self
                        .current
                        .as_ref()
                        .is_some_and(|c| c.cancel_sent_at.is_some());
                    // Either way the supervisor's own decision: `unresponsive`, phase kept.
                    if cancelling {
                        let why = format!(
                            "it did not end a cancelled request within {} ms",
                            CANCEL_GRACE.as_millis()
                        );
                        return self.die(Some(KillReason::Stop), Some(why)).await;
                    }
                    return self.die(Some(KillReason::Unresponsive), None).await;
                }
            }
        }
    }

    /// Sends a queued request to the worker. False when the worker is gone.
    async fn start(&mut self, job: Job) -> bool {
        if job.cancel.is_cancelled() {
            let _ = job.updates.send(Update::End(End::Cancelled));
            return true;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.request_phase = Phase::Idle;
        self.last_error = None;
        let tower_pending = matches!(&job.body, Request::Generate(g) if !g.images.is_empty());
        self.current = Some(InFlight {
            id,
            cancel: job.cancel,
            updates: job.updates,
            cancel_sent_at: None,
            stall: Stall::new(self.pid.as_raw()),
            tower_pending,
        });
        self.publish(|s| s.state = WorkerState::Busy);
        if let Err(e) = self
            .conn
            .send(&ToWorker::Request { id, body: job.body })
            .await
        {
            self.die(None, Some(format!("sending the request: {e}")))
                .await;
            return false;
        }
        true
    }

    /// Records a streamed event and hands it to the request it belongs to; a description
    /// of a stall when the worker has stopped making progress.
    fn on_event(&mut self, event: Event) -> Option<String> {
        self.note(&event);
        let at_limit = matches!(event, Event::Telemetry(_)) && self.at_process_limit();
        let mut stalled = None;
        if let Some(c) = self.current.as_mut() {
            match &event {
                Event::Telemetry(t) => {
                    stalled = c.stall.check(t.progress, self.opts.stall_timeout, at_limit);
                }
                Event::Vision(_) => c.tower_pending = false,
                _ => {}
            }
            let _ = c.updates.send(Update::Event(event));
        }
        stalled
    }

    /// Records a streamed event's facts.
    fn note(&mut self, event: &Event) {
        let phase = match event {
            Event::Telemetry(t) => Some(t.phase),
            Event::Phase(p) => Some(*p),
            _ => None,
        };
        // Between requests the worker is idle, whatever a late sample says.
        let phase = phase.map(|p| {
            if self.current.is_some() {
                p
            } else {
                Phase::Idle
            }
        });
        if let Some(p) = phase.filter(|p| *p != Phase::Idle) {
            self.request_phase = p;
        }
        if let Some(p) = phase {
            self.phase = p;
        }
        if let Event::Telemetry(t) = event {
            if self.telemetry.len() == KEEP_SAMPLES {
                self.telemetry.pop_front();
            }
            self.telemetry.push_back(t.clone());
            let t = t.clone();
            let phase = self.phase;
            self.publish(|s| {
                s.phase = phase;
                s.mlx_peak_bytes = s.mlx_peak_bytes.max(t.peak_bytes);
                s.last_telemetry = Some(t);
            });
        }
    }

    /// The worker answered the request in flight.
    fn finish(&mut self, body: Reply) {
        // Before the request is taken: its stage is read from it.
        let stage = self.stage(self.request_phase);
        let Some(c) = self.current.take() else {
            return;
        };
        self.phase = Phase::Idle;
        let end = match body {
            Reply::Error(e) if e.kind == WorkerErrorKind::Cancelled => End::Cancelled,
            Reply::Error(e) => {
                self.last_error = Some(e.clone());
                let failure = Box::new(self.live_failure(&e, stage));
                End::Error { error: e, failure }
            }
            other => End::Reply(other),
        };
        let _ = c.updates.send(Update::End(end));
        self.publish(|s| s.state = WorkerState::Idle);
    }

    /// Whether the worker's last sampled address space or data segment is at its rlimit.
    fn at_process_limit(&self) -> bool {
        let (vm, data) = {
            let w = self.watch.lock().unwrap_or_else(|p| p.into_inner());
            (w.virtual_bytes, w.data_bytes)
        };
        self.at_limit(vm, data, 0)
            .is_some_and(|e| e.which.starts_with("RLIMIT_"))
    }

    /// The part of the request in flight that was running in `phase`, when the phase
    /// alone does not say: the vision tower, in the prefill of a request with images
    /// until the tower reported.
    pub(super) fn stage(&self, phase: Phase) -> Option<Stage> {
        self.current
            .as_ref()
            .filter(|c| c.tower_pending && phase == Phase::Prefill)
            .map(|_| Stage::VisionTower)
    }

    /// A live worker's structured error as a failure (load failed, the soft guard).
    fn live_failure(&self, e: &WorkerError, stage: Option<Stage>) -> Failure {
        let mut f = Facts::new(self.request_phase, self.started);
        f.stage = stage;
        f.worker_error = Some(e.clone());
        f.telemetry = self.telemetry.iter().cloned().collect();
        f.peak_bytes = self.telemetry.iter().map(|t| t.peak_bytes).max();
        f.stderr = self.stderr.text();
        if e.kind == WorkerErrorKind::AllocationFailed {
            // The limit its memory was at when the allocation was refused, if one.
            let (vm, data, fp) = {
                let w = self.watch.lock().unwrap_or_else(|p| p.into_inner());
                let fp = w.footprints.back().map_or(0, |f| f.1);
                (w.virtual_bytes, w.data_bytes, fp)
            };
            f.evidence = self.at_limit(vm, data, fp);
        }
        report::build(&self.opts, &self.ctx, f)
    }

    /// Reads whatever the dead worker still had in the socket, handing it on as usual.
    async fn drain(&mut self) {
        let until = tokio::time::Instant::now() + DRAIN_LIMIT;
        while let Ok(Ok(Some(msg))) =
            tokio::time::timeout_at(until, self.conn.recv::<FromWorker>()).await
        {
            match msg {
                FromWorker::Event { event, .. } => {
                    let _ = self.on_event(event);
                }
                FromWorker::Reply {
                    body: Reply::Error(e),
                    ..
                } => self.last_error = Some(e),
                FromWorker::Reply { id, body }
                    if self.current.as_ref().is_some_and(|c| c.id == id) =>
                {
                    self.finish(body)
                }
                _ => {}
            }
        }
    }
}
