//! The table of models: one actor per model owns its state machine (unloaded → loading →
//! ready ⇄ busy, failed, quarantined), its worker, its FIFO queue and keep-alive, and
//! publishes its row. `ps`, admission, eviction and `Subscribe` all read that one row.
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
        state: ModelState::Unloaded,
        worker: None,
        worker_status: None,
        plan: None,
        machine: None,
        recorded_peak: None,
        loadable: None,
        loading: None,
        load_waiters: Vec::new(),
        queue: VecDeque::new(),
        current: None,
        next_load: LoadSettings::default(),
        keep_until: None,
        last_used: Instant::now(),
        requests: 0,
        failures: VecDeque::new(),
        last_failure: None,
        consecutive: 0,
        backoff_until: None,
        retried: false,
        note: None,
        device: None,
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

struct Actor {
    shared: Arc<Shared>,
    dir: PathBuf,
    state: ModelState,
    worker: Option<WorkerHandle>,
    worker_status: Option<watch::Receiver<crate::supervise::Status>>,
    plan: Option<Plan>,
    /// Where the loaded worker runs (for the calibration store).
    machine: Option<crate::calibration::Machine>,
    /// The loaded worker's MLX peak after its last recorded request (`None` before its
    /// first): a worker's peak counts its whole life, so a later request that did not
    /// raise it measured nothing of its own and is not recorded.
    recorded_peak: Option<u64>,
    loadable: Option<Box<Loadable>>,
    loading: Option<oneshot::Receiver<Loaded>>,
    load_waiters: Vec<Responder>,
    queue: VecDeque<Job>,
    current: Option<Running>,
    next_load: LoadSettings,
    keep_alive: KeepAlive,
    keep_until: Option<Instant>,
    last_used: Instant,
    requests: u64,
    /// When recent failures happened (for quarantine).
    failures: VecDeque<Instant>,
    last_failure: Option<Failure>,
    /// Failures since the last success (for backoff).
    consecutive: u32,
    backoff_until: Option<Instant>,
    /// A memory failure was already retried (with a smaller context, or on the CPU) since
    /// the last success: a failure streak gets one automatic retry, not one per load.
    retried: bool,
    note: Option<String>,
    /// The device the loaded worker runs on.
    device: Option<String>,
    row: watch::Sender<Row>,
    last_published: Option<(ModelState, Option<FailureKind>, Option<String>)>,
}

enum Wake {
    Cmd(Option<ModelCmd>),
    Loaded(Loaded),
    Update(Option<Update>),
    WorkerChanged,
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
            let keep_until = self.keep_until.filter(|_| {
                self.current.is_none() && self.queue.is_empty() && self.worker.is_some()
            });
            let backoff = self.backoff_until.filter(|_| {
                !self.queue.is_empty() && self.worker.is_none() && self.loading.is_none()
            });
            let wake = tokio::select! {
                cmd = cmds.recv() => Wake::Cmd(cmd),
                loaded = async {
                    match self.loading.as_mut() {
                        Some(rx) => rx.await.ok(),
                        None => std::future::pending().await,
                    }
                } => match loaded {
                    Some(l) => Wake::Loaded(l),
                    None => Wake::Loaded(Loaded::BadModel("the load task ended without an answer".into())),
                },
                u = async {
                    match self.current.as_mut() {
                        Some(c) => c.rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => Wake::Update(u),
                _ = async {
                    match self.worker_status.as_mut() {
                        Some(w) => { let _ = w.changed().await; }
                        None => std::future::pending().await,
                    }
                } => Wake::WorkerChanged,
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
                    self.loading = None;
                    self.loaded(l).await;
                }
                Wake::Update(u) => self.update(u).await,
                Wake::WorkerChanged => self.worker_changed().await,
                Wake::KeepAliveExpired => {
                    tracing::info!(model = %self.dir.display(), "keep-alive expired; unloading");
                    self.unload_worker().await;
                    self.state = ModelState::Unloaded;
                }
                Wake::BackoffOver => self.backoff_until = None,
                Wake::Tick => {}
            }
        }
    }

    fn touch(&mut self) {
        self.last_used = Instant::now();
        self.keep_until = match self.keep_alive {
            KeepAlive::Forever => None,
            KeepAlive::Millis(ms) => Some(self.last_used + Duration::from_millis(ms)),
        };
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}
