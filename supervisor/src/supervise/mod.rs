//! The supervision core: spawn a worker, talk to it, watch it, and turn its end into a
//! [`Failure`] with evidence. `mlxsup run` uses it for one worker; the daemon will use it
//! for many.
//!
//! A [`Worker`] owns one child process in its own process group. Around it run: a thread
//! that reaps it with `wait4` (exit status and peak RSS), a thread that keeps the tail of
//! its stderr, and a task that samples its footprint several times a second and kills it
//! above the hard ceiling. Every signal the supervisor sends is recorded, so a SIGKILL it
//! did not send is known to come from the OS.

pub mod footprint;
pub mod reap;
pub mod runtime_dir;
mod spawn;
pub mod stderr_tail;

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use protocol::{
    client::{Connection, LocalStream},
    Event, Failure, FailureKind, FromWorker, Hello, Phase, ProtocolError, Reply, Request,
    RequestId, Role, Telemetry, ToWorker, WorkerError,
};
use tokio::sync::{oneshot, watch};

use crate::classify::{self, AdviceFacts, Evidence, KillReason};
use reap::ExitInfo;

/// How many telemetry samples a failure carries.
const KEEP_SAMPLES: usize = 20;
/// How long a clean shutdown may take before SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// SIGTERM → SIGKILL grace for an unresponsive worker.
const TERM_GRACE: Duration = Duration::from_millis(500);
/// Default stall timeout: long enough for one step of a huge model or a slow disk.
pub const DEFAULT_STALL: Duration = Duration::from_secs(120);
/// Below this share of one core over the stall window, a silent worker is stalled.
const STALL_CPU_SHARE: f64 = 0.05;
/// How long a cancelled request may take to end before the worker is stopped.
const CANCEL_GRACE: Duration = Duration::from_secs(3);
/// How long to wait for stderr to close after the worker died (a grandchild may hold it).
const STDERR_GRACE: Duration = Duration::from_millis(200);

/// How to run a worker.
#[derive(Clone, Debug)]
pub struct Options {
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
    /// For failure reports: the model, its estimate, the budget, the context.
    pub model: Option<String>,
    pub estimate_bytes: Option<u64>,
    pub budget_bytes: Option<u64>,
    pub context: Option<u64>,
}

impl Options {
    /// Options for a short utility job in a worker (info, make-model): no ceiling, no
    /// model, generous timeouts.
    pub fn utility() -> Options {
        Options {
            worker_exe: default_worker_exe(),
            runtime_dir: runtime_dir::default_path(),
            handshake_timeout: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            stall_timeout: DEFAULT_STALL,
            sample_interval: Duration::from_millis(100),
            memory_ceiling: None,
            rlimit_as: None,
            model: None,
            estimate_bytes: None,
            budget_bytes: None,
            context: None,
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

/// A signal the supervisor sent, and why.
#[derive(Clone, Debug)]
pub struct Sent {
    pub signal: Signal,
    pub reason: KillReason,
}

/// State shared with the footprint sampler.
#[derive(Default)]
struct Watch {
    sent: Vec<Sent>,
    /// (ms since spawn, footprint bytes)
    footprints: VecDeque<(u64, u64)>,
    max_footprint: u64,
    /// The last virtual size sampled.
    virtual_bytes: u64,
}

/// A running worker.
pub struct Worker {
    pid: Pid,
    conn: Connection<LocalStream>,
    opts: Options,
    started: Instant,
    next_id: RequestId,
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
    interrupt: Option<watch::Receiver<bool>>,
    pub peer: Hello,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.sampler.abort();
        if self.exit.is_none() {
            // Nothing may outlive the supervisor's handle on it.
            let _ = nix::sys::signal::killpg(self.pid, Signal::SIGKILL);
        }
    }
}

impl Worker {
    /// Spawns a worker, accepts its connection, and exchanges the handshake.
    pub async fn spawn(opts: Options) -> Result<Worker, SpawnError> {
        let started = Instant::now();
        let spawned = spawn::spawn(&opts).await.map_err(|e| match e {
            spawn::SpawnError::Setup(msg) => SpawnError::Setup(msg),
            spawn::SpawnError::Died {
                message,
                stderr,
                exit,
            } => {
                let kind = classify::classify(&Evidence {
                    exit: exit.as_ref(),
                    killed_for: None,
                    worker_error: None,
                    stderr: &stderr,
                    near_limit: false,
                });
                let facts = AdviceFacts {
                    phase: Some(Phase::Spawn),
                    message: Some(message.clone()),
                    exit: exit.as_ref().map(ExitInfo::describe),
                    ..Default::default()
                };
                SpawnError::Failed(Box::new(Failure {
                    kind,
                    phase: Phase::Spawn,
                    model: opts.model.clone(),
                    exit_code: exit.as_ref().and_then(|e| e.code),
                    signal: exit.as_ref().and_then(ExitInfo::signal_name),
                    core_dumped: exit.as_ref().is_some_and(|e| e.core_dumped),
                    signal_sent_by_supervisor: false,
                    peak_bytes: exit.as_ref().map(|e| e.max_rss_bytes),
                    last_telemetry: vec![],
                    estimate_bytes: opts.estimate_bytes,
                    budget_bytes: opts.budget_bytes,
                    message: Some(message),
                    stderr_tail: stderr,
                    duration_ms: started.elapsed().as_millis() as u64,
                    advice: classify::advice(kind, &facts),
                }))
            }
        })?;
        let spawn::Spawned {
            pid,
            conn,
            exit_rx,
            stderr,
            stderr_done,
        } = spawned;

        let watch = Arc::new(Mutex::new(Watch::default()));
        let (ceiling_tx, ceiling_rx) = watch::channel(false);
        let sampler = tokio::spawn(sample_footprint(
            pid,
            opts.memory_ceiling,
            opts.sample_interval,
            started,
            Arc::clone(&watch),
            ceiling_tx,
        ));
        let mut worker = Worker {
            pid,
            conn,
            opts,
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
            interrupt: None,
            peer: Hello::ours(Role::Worker, ""),
        };
        let ours = Hello::ours(
            Role::Supervisor,
            concat!("mlxsup ", env!("CARGO_PKG_VERSION")),
        );
        let timeout = worker.opts.handshake_timeout;
        let hs = protocol::handshake::handshake::<_, ToWorker, FromWorker>(
            &mut worker.conn,
            ours,
            timeout,
        )
        .await;
        match hs {
            Ok(peer) => {
                worker.peer = peer;
                worker.phase = Phase::Idle;
                Ok(worker)
            }
            Err(e) => {
                let kind_reason = if e.is_malformed()
                    || matches!(
                        e,
                        ProtocolError::PeerTooNew { .. } | ProtocolError::PeerTooOld { .. }
                    ) {
                    Some(KillReason::ProtocolError)
                } else {
                    None
                };
                Err(SpawnError::Failed(Box::new(
                    worker.fail(kind_reason, Some(e.to_string())).await,
                )))
            }
        }
    }

    /// The worker's process id.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// The phase the worker last reported.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Ctrl-C and the like: when this turns true during a request, the request is
    /// cancelled (the worker stays alive and answers `Cancelled`).
    pub fn set_interrupt(&mut self, rx: watch::Receiver<bool>) {
        self.interrupt = Some(rx);
    }

    /// Sends a request and waits for its reply, handing every streamed event to
    /// `on_event`. `Err` means the worker is gone (or was stopped) and why.
    pub async fn request(
        &mut self,
        body: Request,
        mut on_event: impl FnMut(&Event),
    ) -> Result<Reply, Box<Failure>> {
        let id = self.next_id;
        self.next_id += 1;
        self.request_phase = Phase::Idle;
        if let Err(e) = self.conn.send(&ToWorker::Request { id, body }).await {
            return Err(Box::new(
                self.fail(None, Some(format!("sending the request: {e}")))
                    .await,
            ));
        }
        self.last_heard = Instant::now();
        let mut cancel_sent = false;
        let mut cancel_at: Option<Instant> = None;
        let mut stall = Stall::new(self.pid.as_raw());
        let mut ceiling = self.ceiling_rx.clone();
        let mut interrupt = self.interrupt.clone();
        loop {
            let mut deadline = self.last_heard + self.opts.heartbeat_timeout;
            if let Some(at) = cancel_at {
                // A cancelled request must end soon; a worker that does not stop is stopped.
                deadline = deadline.min(at + CANCEL_GRACE);
            }
            let deadline = tokio::time::Instant::from_std(deadline);
            let interrupted = async {
                match interrupt.as_mut() {
                    Some(rx) if !cancel_sent => rx.wait_for(|v| *v).await.map(|_| ()),
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = ceiling.wait_for(|v| *v) => {
                    return Err(Box::new(self.fail(Some(KillReason::Ceiling), None).await));
                }
                exit = async { match self.exit_rx.as_mut() { Some(rx) => rx.await.ok(), None => std::future::pending().await } } => {
                    self.exit = exit;
                    self.exit_rx = None;
                    // Read what it sent before it died (its last tokens and samples, its
                    // last error): everything it wrote is in the socket.
                    self.drain(&mut on_event).await;
                    return Err(Box::new(self.fail(None, None).await));
                }
                msg = self.conn.recv::<FromWorker>() => {
                    self.last_heard = Instant::now();
                    match msg {
                        Ok(Some(FromWorker::Event { event, .. })) => {
                            self.note(&event);
                            on_event(&event);
                            if let Event::Telemetry(t) = &event {
                                if let Some(m) = stall.check(t.progress, self.opts.stall_timeout) {
                                    return Err(Box::new(self.fail(Some(KillReason::Unresponsive), Some(m)).await));
                                }
                            }
                        }
                        Ok(Some(FromWorker::Reply { id: rid, body })) if rid == id => {
                            if let Reply::Error(e) = &body {
                                self.last_error = Some(e.clone());
                            }
                            return Ok(body);
                        }
                        Ok(Some(other)) => {
                            let m = format!("unexpected message {other:?}");
                            return Err(Box::new(self.fail(Some(KillReason::ProtocolError), Some(m)).await));
                        }
                        Ok(None) => {
                            // The socket closed: the process is ending; its exit says how.
                            self.await_exit(SHUTDOWN_GRACE).await;
                            return Err(Box::new(self.fail(None, Some("the worker closed its socket".into())).await));
                        }
                        Err(e) if e.is_malformed() => {
                            return Err(Box::new(self.fail(Some(KillReason::ProtocolError), Some(e.to_string())).await));
                        }
                        Err(e) => {
                            self.await_exit(SHUTDOWN_GRACE).await;
                            return Err(Box::new(self.fail(None, Some(e.to_string())).await));
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let reason = if cancel_at.is_some() { KillReason::Stop } else { KillReason::Unresponsive };
                    return Err(Box::new(self.fail(Some(reason), None).await));
                }
                r = interrupted => {
                    if r.is_ok() {
                        cancel_sent = true;
                        cancel_at = Some(Instant::now());
                        let _ = self.conn.send(&ToWorker::Cancel { id }).await;
                    }
                }
            }
        }
    }

    /// Asks the worker to exit, waits for it, and kills it if it does not.
    pub async fn shutdown(mut self) -> Option<ExitInfo> {
        let _ = self.conn.send(&ToWorker::Shutdown).await;
        if !self.await_exit(SHUTDOWN_GRACE).await {
            self.kill(Signal::SIGKILL, KillReason::Stop);
            self.await_exit(SHUTDOWN_GRACE).await;
        }
        self.exit.clone()
    }

    /// Records a streamed event's facts.
    fn note(&mut self, event: &Event) {
        let phase = match event {
            Event::Telemetry(t) => Some(t.phase),
            Event::Phase(p) => Some(*p),
            _ => None,
        };
        if let Some(p) = phase.filter(|p| *p != Phase::Idle) {
            self.request_phase = p;
        }
        match event {
            Event::Telemetry(t) => {
                self.phase = t.phase;
                if self.telemetry.len() == KEEP_SAMPLES {
                    self.telemetry.pop_front();
                }
                self.telemetry.push_back(t.clone());
            }
            Event::Phase(p) => self.phase = *p,
            _ => {}
        }
    }

    /// Reads whatever the dead worker still had in flight, briefly.
    async fn drain(&mut self, on_event: &mut impl FnMut(&Event)) {
        let until = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(Ok(Some(msg))) =
            tokio::time::timeout_at(until, self.conn.recv::<FromWorker>()).await
        {
            match msg {
                FromWorker::Event { event, .. } => {
                    self.note(&event);
                    on_event(&event);
                }
                FromWorker::Reply {
                    body: Reply::Error(e),
                    ..
                } => self.last_error = Some(e),
                _ => {}
            }
        }
    }

    fn kill(&self, signal: Signal, reason: KillReason) {
        self.watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sent
            .push(Sent { signal, reason });
        let _ = nix::sys::signal::killpg(self.pid, signal);
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

    /// Ends the worker if needed, gathers the evidence, and describes the failure.
    async fn fail(&mut self, kill: Option<KillReason>, message: Option<String>) -> Failure {
        let mut killed_for = kill;
        if self.exit.is_none() {
            // A kill decided by the sampler was already sent and recorded by it.
            let sampler_killed = *self.ceiling_rx.borrow();
            if sampler_killed {
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
        let exit = self.exit.as_ref();
        let fatal_signal_ours = exit
            .and_then(|e| e.signal)
            .is_some_and(|sig| sent_by_us.iter().any(|s| s.signal == sig));
        // Memory at the moment of death: the worker's last words when it wrote them,
        // else the last sample and the kernel's peak RSS.
        let (vm, fp) = classify::fatal_memory(&stderr).unwrap_or_else(|| {
            let last = footprints.back().map_or(0, |f| f.1);
            (last_vm, last.max(exit.map_or(0, |e| e.max_rss_bytes)))
        });
        let near_limit =
            classify::near_limit(vm, fp, self.opts.rlimit_as, self.opts.memory_ceiling);
        let worker_error = self.last_error.as_ref();
        let kind = classify::classify(&Evidence {
            exit,
            killed_for: if fatal_signal_ours || exit.is_none() {
                killed_for
            } else {
                None
            },
            worker_error,
            stderr: &stderr,
            near_limit,
        });
        let mlx_peak = self
            .telemetry
            .iter()
            .map(|t| t.peak_bytes)
            .max()
            .unwrap_or(0);
        let peak = mlx_peak
            .max(max_footprint)
            .max(exit.map_or(0, |e| e.max_rss_bytes));
        let message = message.or_else(|| worker_error.map(|e| e.message.clone()));
        let facts = AdviceFacts {
            phase: Some(self.phase),
            estimate_bytes: self.opts.estimate_bytes,
            budget_bytes: self.opts.budget_bytes,
            context: self.opts.context,
            ceiling_bytes: self.opts.memory_ceiling,
            peak_bytes: Some(peak),
            exit: exit.map(ExitInfo::describe),
            message: message.clone(),
            heartbeat_timeout_ms: Some(self.opts.heartbeat_timeout.as_millis() as u64),
        };
        let mut last_telemetry: Vec<Telemetry> = self.telemetry.iter().cloned().collect();
        if kind == FailureKind::MemoryCeilingExceeded && last_telemetry.is_empty() {
            // Keep the sampler's own view when the worker sent none.
            last_telemetry = footprints
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
        Failure {
            kind,
            phase: self.phase,
            model: self.opts.model.clone(),
            exit_code: exit.and_then(|e| e.code),
            signal: exit.and_then(ExitInfo::signal_name),
            core_dumped: exit.is_some_and(|e| e.core_dumped),
            signal_sent_by_supervisor: fatal_signal_ours,
            peak_bytes: Some(peak),
            last_telemetry,
            estimate_bytes: self.opts.estimate_bytes,
            budget_bytes: self.opts.budget_bytes,
            message,
            stderr_tail: stderr,
            duration_ms: self.started.elapsed().as_millis() as u64,
            advice: classify::advice(kind, &facts),
        }
    }

    /// Describes a structured error of a live worker as a failure (load failed, budget).
    pub fn failure_from_error(&mut self, e: &WorkerError) -> Failure {
        let kind = classify::classify(&Evidence {
            exit: None,
            killed_for: None,
            worker_error: Some(e),
            stderr: "",
            near_limit: false,
        });
        let peak = self.telemetry.iter().map(|t| t.peak_bytes).max();
        let facts = AdviceFacts {
            phase: Some(self.request_phase),
            estimate_bytes: self.opts.estimate_bytes,
            budget_bytes: self.opts.budget_bytes,
            context: self.opts.context,
            peak_bytes: peak,
            message: Some(e.message.clone()),
            ..Default::default()
        };
        Failure {
            kind,
            phase: self.request_phase,
            model: self.opts.model.clone(),
            exit_code: None,
            signal: None,
            core_dumped: false,
            signal_sent_by_supervisor: false,
            peak_bytes: peak,
            last_telemetry: self.telemetry.iter().cloned().collect(),
            estimate_bytes: self.opts.estimate_bytes,
            budget_bytes: self.opts.budget_bytes,
            message: Some(e.message.clone()),
            stderr_tail: self.stderr.text(),
            duration_ms: self.started.elapsed().as_millis() as u64,
            advice: classify::advice(kind, &facts),
        }
    }
}

/// Samples the worker's footprint; over the ceiling, kills its process group (recorded)
/// and says so on `over`.
async fn sample_footprint(
    pid: Pid,
    ceiling: Option<u64>,
    every: Duration,
    started: Instant,
    watch: Arc<Mutex<Watch>>,
    over: watch::Sender<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(fp) = footprint::footprint(pid.as_raw()) else {
            return;
        };
        let t_ms = started.elapsed().as_millis() as u64;
        let mut w = watch.lock().unwrap_or_else(|p| p.into_inner());
        if w.footprints.len() == KEEP_SAMPLES {
            w.footprints.pop_front();
        }
        w.footprints.push_back((t_ms, fp));
        w.max_footprint = w.max_footprint.max(fp);
        w.virtual_bytes = footprint::virtual_bytes(pid.as_raw()).unwrap_or(w.virtual_bytes);
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
struct Stall {
    pid: i32,
    progress: Option<u64>,
    since: Instant,
    cpu_since: Option<Duration>,
}

impl Stall {
    fn new(pid: i32) -> Stall {
        Stall {
            pid,
            progress: None,
            since: Instant::now(),
            cpu_since: footprint::cpu_time(pid),
        }
    }

    /// A description of the stall, once there is one.
    fn check(&mut self, progress: u64, timeout: Duration) -> Option<String> {
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
        if share.is_some_and(|s| s >= STALL_CPU_SHARE) {
            // Busy in a long computation: not stalled. Look again after another window.
            self.since = Instant::now();
            self.cpu_since = footprint::cpu_time(self.pid);
            return None;
        }
        Some(format!(
            "the worker finished no work for {:.1} s{}: stalled",
            quiet.as_secs_f64(),
            share.map_or(String::new(), |s| format!(
                " and used {:.1}% of a core",
                s * 100.0
            ))
        ))
    }
}
