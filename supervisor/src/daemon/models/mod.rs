//! The table of models: one actor per model owns its state machine (unloaded → loading →
//! ready ⇄ busy, failed, quarantined), its worker, its FIFO queue and keep-alive, and
//! publishes its row. `ps`, admission, eviction and `Subscribe` all read that one row.

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use protocol::{
    control::{
        ControlEvent, ControlReply, FromDaemon, GenerateDone, GenerateModel, KeepAlive, LoadModel,
        ModelState, ModelStatus,
    },
    Device, Failure, FailureKind, Fault, Phase, Reply, Request, RequestId,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{admission, policy, Shared};
use crate::{
    plan::Plan,
    supervise::{report, End, SpawnError, Update, WorkerHandle, WorkerState},
};

/// Where one request's events and its reply go (its connection, under its id).
#[derive(Clone, Debug)]
pub struct Responder {
    pub id: RequestId,
    pub out: mpsc::UnboundedSender<FromDaemon>,
}

impl Responder {
    pub fn event(&self, event: ControlEvent) {
        let _ = self.out.send(FromDaemon::Event { id: self.id, event });
    }

    pub fn reply(&self, body: ControlReply) {
        let _ = self.out.send(FromDaemon::Reply { id: self.id, body });
    }
}

/// A generation waiting for, or running on, the model's worker.
pub struct Job {
    pub req: GenerateModel,
    pub resp: Responder,
    pub cancel: CancellationToken,
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

    /// Handles a command; true when the actor should end.
    async fn command(&mut self, cmd: ModelCmd) -> bool {
        match cmd {
            ModelCmd::Generate(job) => {
                if let Some(f) = self.quarantine_failure() {
                    job.resp.reply(ControlReply::Failed(Box::new(f)));
                } else if self.queue.len() >= self.shared.queue_limit {
                    let f = report::plain(
                        FailureKind::Busy,
                        Some(self.dir.display().to_string()),
                        format!(
                            "{} requests are queued for this model (the limit): try again later",
                            self.queue.len()
                        ),
                        Default::default(),
                    );
                    job.resp.reply(ControlReply::Failed(Box::new(f)));
                } else {
                    if self.worker.is_none() && self.loading.is_none() {
                        self.next_load = LoadSettings {
                            context: job.req.context,
                            force: job.req.force,
                            fault: None,
                            device: job.req.device,
                            compute: job.req.compute,
                            kv_bits: job.req.kv_bits,
                        };
                    }
                    if let Some(k) = job.req.keep_alive {
                        self.keep_alive = k;
                    }
                    self.queue.push_back(job);
                }
            }
            ModelCmd::Load { req, resp } => {
                if req.force {
                    self.clear_failures();
                }
                // An explicit load is a new attempt: it gets its own retry.
                self.retried = false;
                if let Some(k) = req.keep_alive {
                    self.keep_alive = k;
                    self.touch();
                }
                if let Some(f) = self.quarantine_failure() {
                    resp.reply(ControlReply::Failed(Box::new(f)));
                } else if self.worker.is_some() && self.loading.is_none() {
                    resp.reply(ControlReply::Loaded(Box::new(self.status())));
                } else {
                    if self.loading.is_none() {
                        self.next_load = LoadSettings {
                            context: req.context,
                            force: req.force,
                            fault: req.fault,
                            device: req.device,
                            compute: req.compute,
                            kv_bits: req.kv_bits,
                        };
                        self.backoff_until = None;
                        self.start_load(Some(resp.clone()));
                    }
                    self.load_waiters.push(resp);
                }
            }
            ModelCmd::Unload { resp } => {
                if let Some(c) = self.current.take() {
                    c.cancel.cancel();
                    c.resp.reply(ControlReply::Cancelled);
                }
                for job in self.queue.drain(..) {
                    job.resp.reply(ControlReply::Cancelled);
                }
                self.unload_worker().await;
                self.clear_failures();
                self.state = ModelState::Unloaded;
                resp.reply(ControlReply::Unloaded(Box::new(self.status())));
            }
            ModelCmd::Evict { done } => {
                let ok = self.evictable();
                if ok {
                    tracing::info!(model = %self.dir.display(), "evicted to make room");
                    self.unload_worker().await;
                    self.state = ModelState::Unloaded;
                }
                // The row shows it gone before admission counts again.
                self.publish();
                let _ = done.send(ok);
            }
            ModelCmd::Shutdown { done } => {
                let f = report::plain(
                    FailureKind::ShuttingDown,
                    Some(self.dir.display().to_string()),
                    "the daemon is shutting down; start it again (mlxsup serve) and retry".into(),
                    Default::default(),
                );
                if let Some(c) = self.current.take() {
                    c.cancel.cancel();
                    c.resp.reply(ControlReply::Failed(Box::new(f.clone())));
                }
                for job in self.queue.drain(..) {
                    job.resp.reply(ControlReply::Failed(Box::new(f.clone())));
                }
                for w in self.load_waiters.drain(..) {
                    w.reply(ControlReply::Failed(Box::new(f.clone())));
                }
                self.unload_worker().await;
                self.state = ModelState::Unloaded;
                self.publish();
                let _ = done.send(());
                return true;
            }
        }
        false
    }

    /// Starts what can start: a load when work waits and no worker is there, the next
    /// queued generation when the worker is ready.
    fn pump(&mut self) {
        // Requests whose clients went away while queued.
        self.queue.retain(|j| {
            let keep = !j.cancel.is_cancelled();
            if !keep {
                j.resp.reply(ControlReply::Cancelled);
            }
            keep
        });
        if self.state == ModelState::Quarantined {
            if let Some(f) = self.quarantine_failure() {
                for job in self.queue.drain(..) {
                    job.resp.reply(ControlReply::Failed(Box::new(f.clone())));
                }
            }
            return;
        }
        if self.queue.is_empty() {
            return;
        }
        if self.worker.is_none() {
            let waiting = self.backoff_until.is_some_and(|t| Instant::now() < t);
            if self.loading.is_none() && !waiting {
                let first = self.queue.front().map(|j| j.resp.clone());
                self.start_load(first);
            }
            return;
        }
        if self.current.is_some() || self.loading.is_some() {
            return;
        }
        // The next request whose prompt fits; the others are refused on their own.
        let job = loop {
            let Some(job) = self.queue.pop_front() else {
                return;
            };
            match self.check_length(&job) {
                Ok(()) => break job,
                Err(f) => job.resp.reply(ControlReply::Failed(f)),
            }
        };
        let Some(worker) = self.worker.as_ref() else {
            self.queue.push_front(job);
            return;
        };
        let rx = worker.request(
            Request::Generate(job.req.request.clone()),
            job.cancel.clone(),
        );
        self.state = ModelState::Busy;
        self.keep_until = None;
        self.current = Some(Running {
            resp: job.resp,
            rx,
            req: job.req,
            cancel: job.cancel,
            vision: None,
        });
    }

    fn start_load(&mut self, events: Option<Responder>) {
        let (tx, rx) = oneshot::channel();
        let settings = self.next_load.clone();
        // An injected fault is for one attempt, as a real transient failure would be.
        self.next_load.fault = None;
        let shared = Arc::clone(&self.shared);
        let dir = self.dir.clone();
        self.state = ModelState::Loading;
        self.loading = Some(rx);
        tokio::spawn(async move {
            let _ = tx.send(load(shared, dir, settings, events).await);
        });
    }

    async fn loaded(&mut self, l: Loaded) {
        match l {
            Loaded::Ok {
                worker,
                plan,
                info,
                text,
            } => {
                self.loadable = Some(text);
                tracing::info!(
                    model = %self.dir.display(),
                    pid = worker.pid(),
                    context = plan.estimate.kv_cache.context,
                    load_ms = info.load_ms,
                    "loaded"
                );
                if let Some(j) = self.queue.front() {
                    j.resp.event(ControlEvent::Loaded((*info).clone()));
                }
                self.device = Some(info.device.clone());
                self.machine = Some(crate::calibration::machine_of(&info));
                self.recorded_peak = None;
                self.worker_status = Some(worker.status());
                self.worker = Some(worker);
                self.plan = Some(*plan);
                self.state = ModelState::Ready;
                self.touch();
                let status = self.status();
                for w in self.load_waiters.drain(..) {
                    w.reply(ControlReply::Loaded(Box::new(status.clone())));
                }
            }
            Loaded::Refused(f) => {
                self.state = ModelState::Unloaded;
                self.fail_waiting(&f);
            }
            Loaded::BadModel(m) => {
                self.state = ModelState::Unloaded;
                for w in self.load_waiters.drain(..) {
                    w.reply(ControlReply::BadRequest { message: m.clone() });
                }
                for job in self.queue.drain(..) {
                    job.resp
                        .reply(ControlReply::BadRequest { message: m.clone() });
                }
            }
            Loaded::Failed(f) => self.died(*f, None).await,
        }
    }

    /// Replies `f` to every load waiter and queued request.
    fn fail_waiting(&mut self, f: &Failure) {
        for w in self.load_waiters.drain(..) {
            w.reply(ControlReply::Failed(Box::new(f.clone())));
        }
        for job in self.queue.drain(..) {
            job.resp.reply(ControlReply::Failed(Box::new(f.clone())));
        }
    }

    async fn update(&mut self, u: Option<Update>) {
        let Some(u) = u else {
            // The worker's actor dropped the request: treat as its death.
            self.current = None;
            self.worker_changed().await;
            return;
        };
        match u {
            Update::Event(ev) => {
                if let Some(c) = &mut self.current {
                    if let protocol::Event::Vision(v) = &ev {
                        c.vision = Some((**v).clone());
                    }
                    c.resp.event(ControlEvent::Worker(ev));
                }
            }
            Update::End(end) => {
                let Some(c) = self.current.take() else {
                    return;
                };
                self.state = ModelState::Ready;
                match end {
                    End::Reply(Reply::Done(done)) => {
                        self.requests += 1;
                        self.consecutive = 0;
                        self.retried = false;
                        self.backoff_until = None;
                        let estimate_bytes =
                            self.plan.as_ref().map_or(0, |p| p.estimate.total_bytes);
                        let (context_used, estimate_used_bytes) =
                            self.record_run(&done, &c.req.request.images, c.vision.as_ref());
                        c.resp.reply(ControlReply::Done(GenerateDone {
                            done,
                            estimate_bytes,
                            note: self.note.clone(),
                            context_used,
                            estimate_used_bytes,
                        }));
                        self.touch();
                        if self.keep_alive == KeepAlive::Millis(0) && self.queue.is_empty() {
                            self.unload_worker().await;
                            self.state = ModelState::Unloaded;
                        }
                    }
                    End::Reply(other) => c.resp.reply(ControlReply::BadRequest {
                        message: format!("unexpected reply from the worker: {other:?}"),
                    }),
                    End::Cancelled => {
                        c.resp.reply(ControlReply::Cancelled);
                        self.touch();
                    }
                    End::Error { failure, .. } => {
                        c.resp.reply(ControlReply::Failed(failure));
                        self.touch();
                    }
                    End::Died(f) => {
                        let job = Job {
                            req: c.req,
                            resp: c.resp,
                            cancel: c.cancel,
                        };
                        self.died(*f, Some(job)).await;
                    }
                }
            }
        }
    }

    /// The worker's published state changed: an idle death shows here first.
    async fn worker_changed(&mut self) {
        let Some(status) = self.worker_status.as_ref().map(|w| w.borrow().clone()) else {
            return;
        };
        if status.state != WorkerState::Failed || self.current.is_some() {
            return;
        }
        let f = status.failure.map(|f| (*f).clone()).unwrap_or_else(|| {
            report::plain(
                FailureKind::Exited,
                Some(self.dir.display().to_string()),
                "the worker ended".into(),
                Default::default(),
            )
        });
        self.died(f, None).await;
    }

    /// The worker is gone with `f`: retry a memory failure once with a smaller context,
    /// else fail what waits, back off, and quarantine after too many.
    async fn died(&mut self, f: Failure, job: Option<Job>) {
        tracing::warn!(model = %self.dir.display(), kind = %f.kind, phase = %f.phase, "worker failed");
        self.worker = None;
        self.worker_status = None;
        self.plan = None;
        let now = Instant::now();
        self.failures.push_back(now);
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy::QUARANTINE_WINDOW)
        {
            self.failures.pop_front();
        }
        self.consecutive += 1;
        self.last_failure = Some(f.clone());
        let retry = !self.retried
            && f.is_memory()
            && matches!(f.phase, Phase::Load | Phase::Prefill)
            && self.failures.len() < policy::QUARANTINE_AFTER;
        // The device policy first (the GPU ran out: the CPU has the same memory but no
        // Metal working-set limit), else what the estimator says fits: half the context.
        let change = if !retry {
            None
        } else if self.shared.fallback_cpu && self.next_load.device != Device::Cpu {
            self.next_load.device = Device::Cpu;
            Some("on the CPU device".to_string())
        } else {
            f.remedy.max_context.map(|context| {
                self.next_load.context = Some(context);
                format!("with context {context}")
            })
        };
        if let Some(change) = change {
            let note = format!("retried {change} after {} during {}", f.kind, f.phase);
            tracing::info!(model = %self.dir.display(), "{note}");
            self.note = Some(note.clone());
            self.retried = true;
            if let Some(job) = job {
                job.resp.event(ControlEvent::Note(note.clone()));
                self.queue.push_front(job);
            }
            for w in &self.load_waiters {
                w.event(ControlEvent::Note(note.clone()));
            }
            let first = self.queue.front().map(|j| j.resp.clone());
            self.start_load(first);
            return;
        }
        if let Some(job) = job {
            job.resp.reply(ControlReply::Failed(Box::new(f.clone())));
        }
        self.fail_waiting(&f);
        if self.failures.len() >= policy::QUARANTINE_AFTER {
            tracing::warn!(model = %self.dir.display(), failures = self.failures.len(), "quarantined");
            self.state = ModelState::Quarantined;
        } else {
            self.state = ModelState::Failed;
            self.backoff_until = Some(now + policy::backoff(self.consecutive));
        }
    }

    /// The prompt and the tokens asked for must fit the context the model was admitted
    /// at (the request's own refusal otherwise; the model is fine).
    fn check_length(&self, job: &Job) -> Result<(), Box<Failure>> {
        let (Some(l), Some(plan)) = (self.loadable.as_ref(), self.plan.as_ref()) else {
            return Ok(());
        };
        let prompt_tokens = l
            .text
            .count_prompt_tokens(&job.req.request.prompt)
            .map_err(|e| {
                Box::new(report::plain(
                    FailureKind::LoadFailed,
                    Some(self.dir.display().to_string()),
                    format!("the prompt cannot be encoded: {e}"),
                    Default::default(),
                ))
            })?;
        let req = crate::plan::PlanRequest {
            prefill_chunk: u64::from(plan.load.prefill_chunk),
            ..crate::plan::PlanRequest::new(plan.estimate.budget_bytes)
        };
        crate::plan::check_length(
            &l.model,
            &plan.estimate,
            &req,
            prompt_tokens as u64,
            u64::from(job.req.request.max_tokens),
        )?;
        self.check_images(job)
    }

    /// A request with images is planned with them ([`admission::check_images`]).
    fn check_images(&self, job: &Job) -> Result<(), Box<Failure>> {
        match (self.loadable.as_ref(), self.plan.as_ref()) {
            (Some(l), Some(plan)) => {
                admission::check_images(&l.model, plan, &job.req.request.images)
            }
            _ => Ok(()),
        }
    }

    /// The estimate at the context a generation used, and its record in the calibration
    /// store (written off the actor's thread); (0, 0) when nothing is loaded.
    fn record_run(
        &mut self,
        done: &protocol::DoneInfo,
        images: &[protocol::ImageInput],
        vision: Option<&protocol::VisionPeak>,
    ) -> (u64, u64) {
        let (Some(l), Some(plan)) = (self.loadable.as_ref(), self.plan.as_ref()) else {
            return (0, 0);
        };
        let est = &plan.estimate;
        let req = admission::loaded_request(plan, images);
        let used = crate::run::used_estimate(&l.model, &req, done, est.weights.compute_f32);
        let answer = (used.kv_cache.context, used.total_bytes);
        // A run with images is recorded with its tower's measurement (none came: not
        // recorded, its peak cannot be told apart).
        // A text request that did not raise the worker's peak (an earlier one, or the load,
        // set it) measured nothing of its own: not recorded (as in `run`, the first after a
        // load is; the store tells a load-transient peak apart).
        let raised = self.recorded_peak.is_none_or(|p| done.peak_bytes > p);
        self.recorded_peak = Some(self.recorded_peak.unwrap_or(0).max(done.peak_bytes));
        if let (Some(machine), Some(store), true) = (
            self.machine.clone(),
            crate::calibration::Store::default_store(),
            // A tower's own peak is measured around it: valid whatever the worker's.
            (raised && images.is_empty()) || vision.is_some(),
        ) {
            let (model, peak, vision) = (l.model.clone(), done.peak_bytes, vision.cloned());
            tokio::task::spawn_blocking(move || {
                let warnings = crate::calibration::record(
                    Some(&store),
                    machine,
                    &model,
                    &used,
                    peak,
                    vision.as_ref(),
                    "daemon",
                );
                for w in warnings {
                    tracing::warn!("{w}");
                }
            });
        }
        answer
    }

    fn clear_failures(&mut self) {
        self.retried = false;
        self.failures.clear();
        self.consecutive = 0;
        self.backoff_until = None;
        if self.state == ModelState::Quarantined {
            self.state = if self.worker.is_some() {
                ModelState::Ready
            } else {
                ModelState::Unloaded
            };
        }
    }

    /// The refusal of a quarantined model.
    fn quarantine_failure(&self) -> Option<Failure> {
        if self.state != ModelState::Quarantined {
            return None;
        }
        let last = self.last_failure.clone()?;
        let name = self.dir.display().to_string();
        Some(Failure {
            kind: FailureKind::Quarantined,
            message: Some(format!(
                "{} failures within {} minutes; the last: {}: {}",
                self.failures.len(),
                policy::QUARANTINE_WINDOW.as_secs() / 60,
                last.kind,
                last.advice
            )),
            advice: format!(
                "the model is quarantined after failing {} times in a row: fix what the last failure says, then `mlxsup load {name} --force` (or `mlxsup unload {name}`)",
                self.failures.len()
            ),
            ..last
        })
    }

    fn evictable(&self) -> bool {
        self.worker.is_some()
            && self.state == ModelState::Ready
            && self.current.is_none()
            && self.queue.is_empty()
            && self.loading.is_none()
            && self.keep_alive != KeepAlive::Forever
    }

    fn touch(&mut self) {
        self.last_used = Instant::now();
        self.keep_until = match self.keep_alive {
            KeepAlive::Forever => None,
            KeepAlive::Millis(ms) => Some(self.last_used + Duration::from_millis(ms)),
        };
    }

    async fn unload_worker(&mut self) {
        self.worker_status = None;
        self.plan = None;
        self.loadable = None;
        self.keep_until = None;
        if let Some(w) = self.worker.take() {
            w.shutdown().await;
        }
    }

    fn status(&self) -> ModelStatus {
        let w = self.worker_status.as_ref().map(|w| w.borrow().clone());
        let plan = self.plan.as_ref();
        let keep_alive_until_ms = self.keep_until.filter(|_| self.current.is_none()).map(|t| {
            let left = t.saturating_duration_since(Instant::now());
            (SystemTime::now() + left)
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        });
        ModelStatus {
            model: self.dir.display().to_string(),
            name: self.row.borrow().status.name.clone(),
            state: self.state,
            pid: self.worker.as_ref().map(|w| w.pid() as u32),
            footprint_bytes: w.as_ref().map_or(0, |w| w.footprint_bytes),
            peak_bytes: w
                .as_ref()
                .map_or(0, |w| w.max_footprint_bytes.max(w.mlx_peak_bytes)),
            estimate_bytes: plan.map_or(0, |p| p.estimate.total_bytes),
            context: plan.map_or(0, |p| p.estimate.kv_cache.context),
            keep_alive_until_ms,
            pinned: self.keep_alive == KeepAlive::Forever,
            requests: self.requests,
            queued: self.queue.len() as u32,
            last_failure: self.last_failure.clone(),
            note: self.note.clone(),
            device: self.device.clone().filter(|_| self.worker.is_some()),
        }
    }

    /// Publishes the row; a state change also goes to subscribers.
    fn publish(&mut self) {
        let status = self.status();
        let held_bytes = if self.worker.is_some() || self.loading.is_some() {
            status.footprint_bytes.max(status.estimate_bytes)
        } else {
            0
        };
        let key = (
            status.state,
            status.last_failure.as_ref().map(|f| f.kind),
            status.note.clone(),
        );
        if self.last_published.as_ref() != Some(&key) {
            self.last_published = Some(key);
            let _ = self.shared.changes.send(status.clone());
        }
        let row = Row {
            status,
            last_used: self.last_used,
            held_bytes,
            evictable: self.evictable(),
        };
        self.row.send_replace(row);
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

/// Admits, spawns and loads the model (a task of its own, so the actor stays responsive).
async fn load(
    shared: Arc<Shared>,
    dir: PathBuf,
    settings: LoadSettings,
    events: Option<Responder>,
) -> Loaded {
    let model = match crate::plan::open_runnable(&dir) {
        Ok(m) => m,
        Err(e) => return Loaded::BadModel(e),
    };
    // What a worker would load and can be checked without MLX, before one is spawned.
    let text = match text::check_loadable(&model) {
        Ok(t) => t,
        Err(e) => return Loaded::BadModel(format!("cannot read model: {e}")),
    };
    // One admission at a time, held through the load: what it admits is then counted.
    let _admitting = shared.admission.lock().await;
    let wanted = crate::plan::PlanRequest {
        context: settings.context,
        device: settings.device,
        compute: settings.compute,
        kv_bits: settings.kv_bits,
        ..crate::plan::PlanRequest::new(0)
    };
    let plan = match admission::admit(&shared, &dir, &model, &wanted, settings.force).await {
        Ok(p) => p,
        Err(f) => return Loaded::Refused(Box::new(f)),
    };
    let mut plan = plan;
    plan.load.fault = settings.fault;
    plan.load.device = settings.device;
    if let (Some(r), Ok(json)) = (&events, serde_json::to_string(&plan.estimate)) {
        r.event(ControlEvent::Estimate { json });
    }
    if let (Some(r), Some(note)) = (&events, &plan.compute_note) {
        r.event(ControlEvent::Note(note.clone()));
    }
    tracing::info!(model = %dir.display(), estimate = plan.estimate.total_bytes, "spawning a worker");
    let worker = match WorkerHandle::spawn(plan.spawn.clone(), plan.report.clone()).await {
        Ok(w) => w,
        Err(SpawnError::Failed(f)) => return Loaded::Failed(f),
        Err(SpawnError::Setup(m)) => {
            let mut f = report::plain(
                FailureKind::Exited,
                Some(dir.display().to_string()),
                format!("the daemon could not start a worker: {m}"),
                Default::default(),
            );
            f.message = Some(m);
            return Loaded::Failed(Box::new(f));
        }
    };
    let end = worker
        .call(
            Request::Load(plan.load.clone()),
            CancellationToken::new(),
            |ev| {
                if let Some(r) = &events {
                    r.event(ControlEvent::Worker(ev.clone()));
                }
            },
        )
        .await;
    match end {
        End::Reply(Reply::Loaded(info)) => Loaded::Ok {
            worker,
            plan: Box::new(plan),
            info: Box::new(info),
            text: Box::new(Loadable { model, text }),
        },
        End::Died(f) => Loaded::Failed(f),
        End::Error { failure, .. } => {
            worker.shutdown().await;
            Loaded::Failed(failure)
        }
        End::Cancelled | End::Reply(_) => {
            worker.shutdown().await;
            Loaded::BadModel("the worker did not load the model".into())
        }
    }
}
