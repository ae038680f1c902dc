//! The table of models: one actor per model owns its state machine (`State`: unloaded
//! → loading → loaded (ready ⇄ busy), failed, quarantined; each state holds what it
//! needs), its worker, its FIFO queue and keep-alive, and publishes its row. `ps`, admission, eviction and `Subscribe` all read that one row.
//!
//! Here: the handle and the types, the actor's state and its event loop. The actor's
//! work is in the submodules: `commands`, the `load` path, the `queue` and its
//! generations, their calibration `record`, `failures` (retry, backoff, quarantine) and
//! the `row` it publishes.

mod commands;
mod failures;
mod load;
mod queue;
mod record;
mod row;

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use protocol::{
    control::{
        ControlEvent, ControlReply, FromDaemon, GenerateModel, KeepAlive, LoadModel, ModelState,
        ModelStatus,
    },
    Device, Failure, FailureKind, Fault, RequestId,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::{
    plan::Plan,
    supervise::{Update, WorkerHandle},
};

/// Messages a client's stream (one connection, or one HTTP request) holds before the
/// client counts as too slow.
pub const CLIENT_BUFFER: usize = 256;
/// Of those, the slots kept for replies: events stop when only these are left.
const REPLY_RESERVE: usize = 16;

/// Where one request's events and its reply go (its connection, under its id).
///
/// The stream to a client is bounded ([`CLIENT_BUFFER`]) and nothing ever waits on it.
/// The policy for a client that does not read as fast as its events come: the event that
/// finds its stream full (all but the [`REPLY_RESERVE`] slots kept for replies) is not
/// queued and the responder is marked lagging; the model's actor then cancels the
/// request, which ends for that client with a `slow_client` failure (in the reserve). The
/// worker, the model's other requests and other clients go on; what is held for the slow
/// client never passes its buffer.
#[derive(Clone, Debug)]
pub struct Responder {
    pub id: RequestId,
    pub out: mpsc::Sender<FromDaemon>,
    lagging: Arc<AtomicBool>,
}

impl Responder {
    pub fn new(id: RequestId, out: mpsc::Sender<FromDaemon>) -> Responder {
        Responder {
            id,
            out,
            lagging: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Queues an event, unless the client's stream is full: then it is dropped and the
    /// responder is lagging.
    pub fn event(&self, event: ControlEvent) {
        if self.lagging() {
            return;
        }
        if self.out.capacity() <= REPLY_RESERVE
            || self
                .out
                .try_send(FromDaemon::Event { id: self.id, event })
                .is_err()
        {
            if !self.out.is_closed() {
                tracing::warn!(
                    request = self.id,
                    "a client does not read its stream: its request is cancelled"
                );
            }
            self.lagging.store(true, Ordering::Relaxed);
        }
    }

    /// Queues the reply (into the reserve when the events filled the rest).
    pub fn reply(&self, body: ControlReply) {
        if let Err(mpsc::error::TrySendError::Full(_)) =
            self.out.try_send(FromDaemon::Reply { id: self.id, body })
        {
            tracing::warn!(
                request = self.id,
                "a reply was dropped: its client reads nothing"
            );
        }
    }

    /// An event found the client's stream full.
    pub fn lagging(&self) -> bool {
        self.lagging.load(Ordering::Relaxed)
    }

    /// The reply of a request that was cancelled: `Cancelled`, or the `slow_client`
    /// failure when it was cancelled because its client lagged.
    pub fn cancelled(&self) {
        if self.lagging() {
            let f = crate::supervise::report::plain(
                FailureKind::SlowClient,
                None,
                format!(
                    "the client did not read its stream ({CLIENT_BUFFER} messages were waiting): the request was cancelled; read the stream as it comes"
                ),
                Default::default(),
            );
            self.reply(ControlReply::Failed(Box::new(f)));
        } else {
            self.reply(ControlReply::Cancelled);
        }
    }
}

/// A generation waiting for, or running on, the model's worker.
pub struct Job {
    pub req: GenerateModel,
    pub resp: Responder,
    pub cancel: CancellationToken,
    /// Told once the prompt has been checked against the loaded model's context and
    /// fits (a refusal is the reply instead): the HTTP front starts a stream only then,
    /// so that a prompt over the context is a 400, loaded or not.
    pub checked: Option<oneshot::Sender<()>>,
}

/// What the model's actor is asked.
pub enum ModelCmd {
    Generate(Job),
    Load {
        req: LoadModel,
        resp: Responder,
    },
    Unload {
        resp: Responder,
    },
    /// Admission wants the memory: unload if idle and not pinned; says whether it did.
    Evict {
        done: oneshot::Sender<bool>,
    },
    /// The daemon is stopping: fail what is queued, stop the worker.
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// A model's row, as the actor publishes it.
#[derive(Clone, Debug)]
pub struct Row {
    pub status: ModelStatus,
    pub last_used: Instant,
    /// Memory the model holds now: its footprint, or its estimate if larger.
    pub held_bytes: u64,
    /// Idle, loaded, not pinned, nothing queued: admission may evict it.
    pub evictable: bool,
}

/// The handle on one model's actor.
pub struct Slot {
    pub dir: PathBuf,
    pub cmds: mpsc::UnboundedSender<ModelCmd>,
    pub row: watch::Receiver<Row>,
}

/// Starts the actor of the model in `dir`.
pub fn start(shared: Arc<Shared>, dir: PathBuf, name: String) -> Slot {
    let status = ModelStatus {
        model: dir.display().to_string(),
        name: name.clone(),
        state: ModelState::Unloaded,
        pid: None,
        footprint_bytes: 0,
        peak_bytes: 0,
        estimate_bytes: 0,
        context: 0,
        keep_alive_until_ms: None,
        pinned: false,
        requests: 0,
        queued: 0,
        last_failure: None,
        note: None,
        device: None,
        prefix_cache_bytes: 0,
        prefix_cache_limit_bytes: 0,
        prefix_cache_hit_rate: None,
    };
    let row = Row {
        status,
        last_used: Instant::now(),
        held_bytes: 0,
        evictable: false,
    };
    let (row_tx, row_rx) = watch::channel(row);
    let (tx, rx) = mpsc::unbounded_channel();
    let actor = Actor {
        keep_alive: shared.keep_alive,
        shared,
        dir: dir.clone(),
        state: State::Unloaded,
        queue: VecDeque::new(),
        next_load: LoadSettings::default(),
        last_used: Instant::now(),
        requests: 0,
        failures: VecDeque::new(),
        last_failure: None,
        consecutive: 0,
        retried: false,
        note: None,
        row: row_tx,
        last_published: None,
    };
    tokio::spawn(actor.run(rx));
    Slot {
        dir,
        cmds: tx,
        row: row_rx,
    }
}

/// How the next load is made.
#[derive(Clone, Debug, Default)]
struct LoadSettings {
    context: Option<u64>,
    force: bool,
    fault: Option<Fault>,
    device: Device,
    compute: protocol::ComputePolicy,
    kv_bits: Option<u8>,
    /// `load --prefix-cache` (`None`: the daemon's default).
    prefix_cache: Option<u64>,
}

/// The model as read for its load: a prompt's length is counted and checked with it.
pub struct Loadable {
    model: estimate::Model,
    text: text::TextFiles,
}

/// What a load task comes back with.
enum Loaded {
    Ok {
        worker: WorkerHandle,
        plan: Box<Plan>,
        info: Box<protocol::LoadInfo>,
        /// What the prompt lengths are checked with.
        text: Box<Loadable>,
    },
    /// Admission refused it (not a crash).
    Refused(Box<Failure>),
    /// The worker failed to start or to load.
    Failed(Box<Failure>),
    /// The model could not be read.
    BadModel(String),
}

struct Running {
    resp: Responder,
    rx: mpsc::UnboundedReceiver<Update>,
    req: GenerateModel,
    cancel: CancellationToken,
    /// What the vision tower used, once it ran (a request with images).
    vision: Option<protocol::VisionPeak>,
}

/// Where the model is, each state holding what it needs: unloaded → loading → loaded
/// (ready, or busy while a generation runs) → unloaded; a failed worker leads to a retry
/// (loading), a backoff (failed) or quarantine.
enum State {
    /// No worker: never loaded, unloaded, evicted, expired, or refused.
    Unloaded,
    /// The load task runs; `waiters` are the `load` requests answered when it ends.
    Loading {
        rx: oneshot::Receiver<Loaded>,
        waiters: Vec<Responder>,
        /// Cancelled when the load is abandoned (unload, shutdown): the task stops its
        /// worker and ends.
        abandon: CancellationToken,
    },
    /// A worker holds the model.
    Loaded(Box<Live>),
    /// The last worker failed: the next load waits until `retry_at` (the backoff).
    Failed { retry_at: Instant },
    /// It failed too often: refused until `load --force` or `unload`.
    Quarantined,
}

/// A loaded model: its worker and what lives as long as it.
struct Live {
    worker: WorkerHandle,
    /// The worker's published status: its footprint, its death.
    status: watch::Receiver<crate::supervise::Status>,
    plan: Plan,
    /// The model as read for its load: prompt lengths are checked with it.
    loadable: Box<Loadable>,
    /// Where the worker runs (for the calibration store).
    machine: crate::calibration::Machine,
    /// The device it runs on.
    device: String,
    /// The worker's MLX peak after its last recorded request (`None` before its first):
    /// a worker's peak counts its whole life, so a later request that did not raise it
    /// measured nothing of its own and is not recorded.
    recorded_peak: Option<u64>,
    /// When it unloads if nothing comes (`None`: pinned, or a generation runs).
    keep_until: Option<Instant>,
    /// The generation running on it (busy).
    current: Option<Running>,
    /// Its prefix cache as its generations report it.
    prefix: PrefixUse,
}

/// A loaded model's prefix cache, from its generations' done events: bytes held, and
/// how many generations reused a cached prefix.
#[derive(Clone, Copy, Debug, Default)]
struct PrefixUse {
    bytes: u64,
    generations: u64,
    hits: u64,
}

impl PrefixUse {
    fn record(&mut self, done: &protocol::DoneInfo) {
        self.bytes = done.prefix_cache_bytes;
        self.generations += 1;
        self.hits += u64::from(done.cached_tokens > 0);
    }

    fn hit_rate(&self) -> Option<f64> {
        (self.generations > 0).then(|| self.hits as f64 / self.generations as f64)
    }
}

impl State {
    /// The state as `ps` names it.
    fn model_state(&self) -> ModelState {
        match self {
            State::Unloaded => ModelState::Unloaded,
            State::Loading { .. } => ModelState::Loading,
            State::Loaded(l) if l.current.is_some() => ModelState::Busy,
            State::Loaded(_) => ModelState::Ready,
            State::Failed { .. } => ModelState::Failed,
            State::Quarantined => ModelState::Quarantined,
        }
    }

    fn live(&self) -> Option<&Live> {
        match self {
            State::Loaded(l) => Some(l),
            _ => None,
        }
    }

    fn live_mut(&mut self) -> Option<&mut Live> {
        match self {
            State::Loaded(l) => Some(l),
            _ => None,
        }
    }

    /// What wakes the actor in this state: the load's end, the running generation's
    /// updates, the worker's status.
    async fn event(&mut self) -> Wake {
        match self {
            State::Loading { rx, .. } => match rx.await {
                Ok(l) => Wake::Loaded(l),
                Err(_) => Wake::Loaded(Loaded::BadModel(
                    "the load task ended without an answer".into(),
                )),
            },
            State::Loaded(live) => {
                let Live {
                    current, status, ..
                } = &mut **live;
                tokio::select! {
                    u = async {
                        match current.as_mut() {
                            Some(c) => c.rx.recv().await,
                            None => std::future::pending().await,
                        }
                    } => Wake::Update(u),
                    // A closed channel: the worker's supervision ended; a death too.
                    r = status.changed() => Wake::WorkerChanged { gone: r.is_err() },
                }
            }
            _ => std::future::pending().await,
        }
    }
}

/// The model's actor: its state, and what outlives any one worker (the queue, how the
/// next load is made, the keep-alive, the failure history).
struct Actor {
    shared: Arc<Shared>,
    dir: PathBuf,
    state: State,
    queue: VecDeque<Job>,
    next_load: LoadSettings,
    keep_alive: KeepAlive,
    last_used: Instant,
    requests: u64,
    /// When recent failures happened (for quarantine).
    failures: VecDeque<Instant>,
    last_failure: Option<Failure>,
    /// Failures since the last success (for backoff).
    consecutive: u32,
    /// A memory failure was already retried (with a smaller context, or on the CPU) since
    /// the last success: a failure streak gets one automatic retry, not one per load.
    retried: bool,
    note: Option<String>,
    row: watch::Sender<Row>,
    last_published: Option<(ModelState, Option<FailureKind>, Option<String>)>,
}

enum Wake {
    Cmd(Option<ModelCmd>),
    Loaded(Loaded),
    Update(Option<Update>),
    WorkerChanged { gone: bool },
    KeepAliveExpired,
    BackoffOver,
    Tick,
}

impl Actor {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<ModelCmd>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.pump();
            self.publish();
            let idle = self.queue.is_empty();
            let keep_until = match &self.state {
                State::Loaded(l) if l.current.is_none() && idle => l.keep_until,
                _ => None,
            };
            let backoff = match &self.state {
                State::Failed { retry_at } if !idle => Some(*retry_at),
                _ => None,
            };
            let wake = tokio::select! {
                cmd = cmds.recv() => Wake::Cmd(cmd),
                w = self.state.event() => w,
                _ = sleep_until_opt(keep_until) => Wake::KeepAliveExpired,
                _ = sleep_until_opt(backoff) => Wake::BackoffOver,
                // Footprint and telemetry change all the time: refresh the row now and then.
                _ = tick.tick() => Wake::Tick,
            };
            match wake {
                Wake::Cmd(None) => return,
                Wake::Cmd(Some(cmd)) => {
                    if self.command(cmd).await {
                        return;
                    }
                }
                Wake::Loaded(l) => {
                    let waiters = self.take_waiters();
                    self.loaded(l, waiters).await;
                }
                Wake::Update(u) => self.update(u).await,
                Wake::WorkerChanged { gone } => self.worker_changed(gone).await,
                Wake::KeepAliveExpired => {
                    tracing::info!(model = %self.dir.display(), "keep-alive expired; unloading");
                    self.unload_worker().await;
                }
                // The next pump sees that the time has come.
                Wake::BackoffOver | Wake::Tick => {}
            }
        }
    }

    /// The `load` requests waiting for the load that just ended (the state is left
    /// unloaded for the caller to set).
    fn take_waiters(&mut self) -> Vec<Responder> {
        match std::mem::replace(&mut self.state, State::Unloaded) {
            State::Loading { waiters, .. } => waiters,
            other => {
                self.state = other;
                Vec::new()
            }
        }
    }

    fn touch(&mut self) {
        self.last_used = Instant::now();
        let until = match self.keep_alive {
            KeepAlive::Forever => None,
            KeepAlive::Millis(ms) => Some(self.last_used + Duration::from_millis(ms)),
        };
        if let Some(live) = self.state.live_mut() {
            live.keep_until = until;
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use protocol::{control::ControlEvent, Event};

    use super::*;

    /// A client that reads nothing: events stop at the reserve, the responder lags, and
    /// the reply still finds its slot; what is held never passes the buffer.
    #[test]
    fn a_full_stream_lags_and_keeps_room_for_the_reply() {
        let (tx, mut rx) = mpsc::channel(CLIENT_BUFFER);
        let resp = Responder::new(7, tx);
        let token = || {
            ControlEvent::Worker(Event::Token {
                id: 1,
                text: "x".into(),
            })
        };
        for _ in 0..CLIENT_BUFFER * 4 {
            resp.event(token());
        }
        assert!(resp.lagging());
        resp.cancelled();
        let mut events = 0;
        let mut reply = None;
        while let Ok(m) = rx.try_recv() {
            match m {
                FromDaemon::Event { .. } => events += 1,
                FromDaemon::Reply { id, body } => reply = Some((id, body)),
                _ => {}
            }
        }
        assert_eq!(events, CLIENT_BUFFER - REPLY_RESERVE);
        match reply {
            Some((7, ControlReply::Failed(f))) => assert_eq!(f.kind, FailureKind::SlowClient),
            other => panic!("no slow_client reply: {other:?}"),
        }
    }

    /// A client that keeps up never lags, and a cancelled request is `Cancelled`.
    #[test]
    fn a_client_that_reads_never_lags() {
        let (tx, mut rx) = mpsc::channel(CLIENT_BUFFER);
        let resp = Responder::new(1, tx);
        for _ in 0..CLIENT_BUFFER * 4 {
            resp.event(ControlEvent::Note("n".into()));
            assert!(rx.try_recv().is_ok());
        }
        assert!(!resp.lagging());
        resp.cancelled();
        assert!(matches!(
            rx.try_recv(),
            Ok(FromDaemon::Reply {
                body: ControlReply::Cancelled,
                ..
            })
        ));
    }
}
