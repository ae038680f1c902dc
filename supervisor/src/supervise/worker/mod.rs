//! One actor task per worker. It owns the connection and always reads it, idle or busy;
//! it watches the process (exit, heartbeat, stall, ceiling) and publishes the worker's
//! [`Status`] on a `watch`; requests come in over a channel, each with its own cancel
//! token and its own stream of [`Update`]s. A death is an event the moment it happens,
//! with the same classification and evidence whether a request was in flight or not.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use protocol::{
    client::{Connection, LocalStream},
    Event, Failure, FromWorker, Hello, Phase, ProtocolError, Reply, Request, RequestId, Role,
    Telemetry, ToWorker, WorkerError, WorkerErrorKind,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{
    reap::ExitInfo,
    report::{self, Facts, ReportContext},
    spawn, stderr_tail,
    watchdog::{self, Stall, Watch, KEEP_SAMPLES},
    SpawnError, SpawnOptions,
};
use crate::classify::{self, KillReason};

/// How long a clean shutdown may take before SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// SIGTERM → SIGKILL grace for an unresponsive worker.
const TERM_GRACE: Duration = Duration::from_millis(500);
/// How long a cancelled request may take to end before the worker is stopped.
const CANCEL_GRACE: Duration = Duration::from_secs(3);
/// How long to wait for stderr to close after the worker died (a grandchild may hold it).
const STDERR_GRACE: Duration = Duration::from_millis(200);
/// How long to read what a dead worker left in its socket. The socket ends when the data
/// does (its only writer is gone); the limit is for a grandchild holding it open, and is
/// generous because a busy machine can deschedule the reader for a long while.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Where a worker is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Alive, no request in flight.
    Idle,
    /// Serving a request.
    Busy,
    /// Dead; [`Status::failure`] says how.
    Failed,
    /// Shut down on purpose.
    Stopped,
}

/// What the actor publishes: read by `ps`, admission and subscribers.
#[derive(Clone, Debug)]
pub struct Status {
    pub state: WorkerState,
    pub phase: Phase,
    /// The footprint the supervisor sampled last, and the highest it saw.
    pub footprint_bytes: u64,
    pub max_footprint_bytes: u64,
    /// MLX's own peak, from telemetry.
    pub mlx_peak_bytes: u64,
    pub last_telemetry: Option<Telemetry>,
    pub failure: Option<Arc<Failure>>,
}

/// How a request ended.
#[derive(Debug)]
pub enum End {
    /// The worker's answer.
    Reply(Reply),
    /// Cancelled; the worker is alive and ready.
    Cancelled,
    /// The worker refused or failed the request and is still alive (load failed, the soft
    /// guard): the error as it sent it, and the failure it amounts to.
    Error {
        error: WorkerError,
        failure: Box<Failure>,
    },
    /// The worker is gone.
    Died(Box<Failure>),
}

impl End {
    /// The reply, or what went wrong in words (for utility jobs: info, make-model).
    pub fn into_reply(self) -> Result<Reply, String> {
        match self {
            End::Reply(r) => Ok(r),
            End::Cancelled => Err("the request was cancelled".into()),
            End::Error { error, .. } => Err(error.message),
            End::Died(f) => Err(format!("the worker failed: {}: {}", f.kind, f.advice)),
        }
    }
}

/// What a request's caller receives: its events, then its end.
#[derive(Debug)]
pub enum Update {
    Event(Event),
    End(End),
}

struct Job {
    body: Request,
    cancel: CancellationToken,
    updates: mpsc::UnboundedSender<Update>,
}

enum Command {
    Job(Job),
    Shutdown(oneshot::Sender<Option<ExitInfo>>),
}

/// The handle on a running worker. Dropping it stops the worker.
pub struct WorkerHandle {
    pid: i32,
    cmds: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<Status>,
    /// The worker's hello.
    pub peer: Hello,
}

impl WorkerHandle {
    /// Spawns a worker, accepts its connection, exchanges the handshake, and starts its
    /// actor.
    pub async fn spawn(opts: SpawnOptions, ctx: ReportContext) -> Result<WorkerHandle, SpawnError> {
        let started = Instant::now();
        let spawned = spawn::spawn(&opts).await.map_err(|e| match e {
            spawn::SpawnError::Setup(msg) => SpawnError::Setup(msg),
            spawn::SpawnError::Died {
                message,
                stderr,
                exit,
                timed_out,
            } => {
                // A worker that never connected in time was killed by us: unresponsive.
                let mut f = Facts::new(
                    if timed_out {
                        Phase::Handshake
                    } else {
                        Phase::Spawn
                    },
                    started,
                );
                f.killed_for = timed_out.then_some(KillReason::Unresponsive);
                f.signal_ours = timed_out;
                f.peak_bytes = exit.as_ref().map(|e| e.max_rss_bytes);
                f.exit = exit;
                f.stderr = stderr;
                f.message = Some(message);
                SpawnError::Failed(Box::new(report::build(&opts, &ctx, f)))
            }
        })?;
        let spawn::Spawned {
            pid,
            conn,
            exit_rx,
            stderr,
            stderr_done,
        } = spawned;

        let status = Status {
            state: WorkerState::Idle,
            phase: Phase::Handshake,
            footprint_bytes: 0,
            max_footprint_bytes: 0,
            mlx_peak_bytes: 0,
            last_telemetry: None,
            failure: None,
        };
        let (status_tx, status_rx) = watch::channel(status);
        let status_tx = Arc::new(status_tx);
        let watch = Arc::new(Mutex::new(Watch::default()));
        let (ceiling_tx, ceiling_rx) = watch::channel(false);
        let sampled = Arc::clone(&status_tx);
        let sampler = tokio::spawn(watchdog::sample_footprint(
            pid,
            opts.memory_ceiling,
            opts.sample_interval,
            started,
            Arc::clone(&watch),
            ceiling_tx,
            move |fp| {
                sampled.send_modify(|s| {
                    s.footprint_bytes = fp;
                    s.max_footprint_bytes = s.max_footprint_bytes.max(fp);
                })
            },
        ));
        let mut actor = Actor {
            pid,
            conn,
            opts,
            ctx,
            started,
            next_id: 1,
            phase: Phase::Handshake,
            request_phase: Phase::Handshake,
            telemetry: VecDeque::new(),
            last_heard: Instant::now(),
            last_error: None,
            exit_rx: Some(exit_rx),
            exit: None,
            stderr,
            stderr_done: Some(stderr_done),
            watch,
            ceiling_rx,
            sampler,
            status: status_tx,
            current: None,
            pending: VecDeque::new(),
        };
        let ours = Hello::ours(
            Role::Supervisor,
            concat!("mlxsup ", env!("CARGO_PKG_VERSION")),
        );
        let timeout = actor.opts.handshake_timeout;
        let peer = match protocol::handshake::handshake::<_, ToWorker, FromWorker>(
            &mut actor.conn,
            ours,
            timeout,
        )
        .await
        {
            Ok(peer) => peer,
            Err(e) => {
                let reason = match &e {
                    ProtocolError::PeerTooNew { .. } | ProtocolError::PeerTooOld { .. } => {
                        Some(KillReason::ProtocolError)
                    }
                    ProtocolError::Timeout(_) => Some(KillReason::Unresponsive),
                    e if e.is_malformed() => Some(KillReason::ProtocolError),
                    _ => None,
                };
                let f = actor.fail(reason, Some(e.to_string())).await;
                return Err(SpawnError::Failed(Box::new(f)));
            }
        };
        actor.phase = Phase::Idle;
        actor.publish(|s| s.phase = Phase::Idle);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let pid = pid.as_raw();
        tokio::spawn(actor.run(cmd_rx));
        Ok(WorkerHandle {
            pid,
            cmds: cmd_tx,
            status: status_rx,
            peer,
        })
    }

    /// The worker's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The published status; `changed()` wakes on every change.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Queues a request (one runs at a time, in order) and returns its updates.
    pub fn request(
        &self,
        body: Request,
        cancel: CancellationToken,
    ) -> mpsc::UnboundedReceiver<Update> {
        let (tx, rx) = mpsc::unbounded_channel();
        let job = Job {
            body,
            cancel,
            updates: tx,
        };
        if let Err(mpsc::error::SendError(Command::Job(job))) = self.cmds.send(Command::Job(job)) {
            // The actor is gone: the worker died or was stopped.
            let _ = job.updates.send(Update::End(self.gone()));
        }
        rx
    }

    /// Sends a request and waits for its end, handing each event to `on_event`.
    pub async fn call(
        &self,
        body: Request,
        cancel: CancellationToken,
        mut on_event: impl FnMut(&Event),
    ) -> End {
        let mut rx = self.request(body, cancel);
        while let Some(u) = rx.recv().await {
            match u {
                Update::Event(e) => on_event(&e),
                Update::End(end) => return end,
            }
        }
        self.gone()
    }

    /// The end of a request sent to a worker whose actor is gone.
    fn gone(&self) -> End {
        match self.status.borrow().failure.clone() {
            Some(f) => End::Died(Box::new((*f).clone())),
            None => End::Cancelled,
        }
    }

    /// Asks the worker to exit, waits for it, and kills it if it does not. Requests in
    /// flight or queued end `Cancelled`.
    pub async fn shutdown(self) -> Option<ExitInfo> {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Command::Shutdown(tx)).is_err() {
            return None;
        }
        rx.await.ok().flatten()
    }
}

/// A request the worker is serving.
struct InFlight {
    id: RequestId,
    cancel: CancellationToken,
    updates: mpsc::UnboundedSender<Update>,
    cancel_sent_at: Option<Instant>,
    stall: Stall,
}

/// The actor's state: one worker.
struct Actor {
    pid: Pid,
    conn: Connection<LocalStream>,
    opts: SpawnOptions,
    ctx: ReportContext,
    started: Instant,
    next_id: RequestId,
    /// The phase the worker last reported.
    phase: Phase,
    /// The last working phase (not idle) of the current request: where it failed.
    request_phase: Phase,
    telemetry: VecDeque<Telemetry>,
    last_heard: Instant,
    last_error: Option<WorkerError>,
    exit_rx: Option<oneshot::Receiver<ExitInfo>>,
    exit: Option<ExitInfo>,
    stderr: stderr_tail::Tail,
    stderr_done: Option<oneshot::Receiver<()>>,
    watch: Arc<Mutex<Watch>>,
    ceiling_rx: watch::Receiver<bool>,
    sampler: tokio::task::JoinHandle<()>,
    status: Arc<watch::Sender<Status>>,
    current: Option<InFlight>,
    pending: VecDeque<Job>,
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
    fn publish(&self, f: impl FnOnce(&mut Status)) {
        self.status.send_modify(f);
    }

    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Command>) {
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
                    let reason = if cancelling {
                        KillReason::Stop
                    } else {
                        KillReason::Unresponsive
                    };
                    return self.die(Some(reason), None).await;
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
        self.current = Some(InFlight {
            id,
            cancel: job.cancel,
            updates: job.updates,
            cancel_sent_at: None,
            stall: Stall::new(self.pid.as_raw()),
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
        let mut stalled = None;
        if let Some(c) = self.current.as_mut() {
            if let Event::Telemetry(t) = &event {
                stalled = c.stall.check(t.progress, self.opts.stall_timeout);
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
        let Some(c) = self.current.take() else {
            return;
        };
        self.phase = Phase::Idle;
        let end = match body {
            Reply::Error(e) if e.kind == WorkerErrorKind::Cancelled => End::Cancelled,
            Reply::Error(e) => {
                self.last_error = Some(e.clone());
                let failure = Box::new(self.live_failure(&e));
                End::Error { error: e, failure }
            }
            other => End::Reply(other),
        };
        let _ = c.updates.send(Update::End(end));
        self.publish(|s| s.state = WorkerState::Idle);
    }

    /// A live worker's structured error as a failure (load failed, the soft guard).
    fn live_failure(&self, e: &WorkerError) -> Failure {
        let mut f = Facts::new(self.request_phase, self.started);
        f.worker_error = Some(e.clone());
        f.telemetry = self.telemetry.iter().cloned().collect();
        f.peak_bytes = self.telemetry.iter().map(|t| t.peak_bytes).max();
        f.stderr = self.stderr.text();
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

    fn kill(&self, signal: Signal, reason: KillReason) {
        watchdog::kill(&self.watch, self.pid, signal, reason);
    }

    /// Waits for the exit (up to `limit`); true when it came.
    async fn await_exit(&mut self, limit: Duration) -> bool {
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
    async fn stop(&mut self) -> Option<ExitInfo> {
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
    async fn die(&mut self, kill: Option<KillReason>, message: Option<String>) {
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

    /// Ends the worker if needed, gathers the evidence, and describes the failure.
    async fn fail(&mut self, kill: Option<KillReason>, message: Option<String>) -> Failure {
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
        let (sent_by_us, max_footprint, footprints, last_vm) = {
            let w = self.watch.lock().unwrap_or_else(|p| p.into_inner());
            (
                w.sent.clone(),
                w.max_footprint,
                w.footprints.clone(),
                w.virtual_bytes,
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
        let (vm, fp) = classify::fatal_memory(&stderr).unwrap_or_else(|| {
            let last = footprints.back().map_or(0, |f| f.1);
            (last_vm, last.max(max_rss))
        });
        let near_limit =
            classify::near_limit(vm, fp, self.opts.rlimit_as, self.opts.memory_ceiling);
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
        f.peak_bytes = Some(mlx_peak.max(max_footprint).max(max_rss));
        f.message = message;
        f.exit = exit;
        report::build(&self.opts, &self.ctx, f)
    }
}
