//! The worker's protocol loop: handshake, then requests one at a time, with a reader
//! thread for cancellation and shutdown, and a telemetry thread that doubles as the
//! heartbeat.
//!
//! Threads: the main thread owns the engine and runs requests; the reader thread turns
//! frames into [`Incoming`] messages and marks cancellations at once; the telemetry
//! thread samples memory every interval. All writes go through one [`Link`].

use std::{
    collections::HashSet,
    io,
    os::unix::net::UnixStream,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use protocol::{
    frame, handshake, DoneInfo, Event, Fault, FaultPoint, FromWorker, GenerateRequest, Hello,
    LoadInfo, LoadRequest, Phase, ProtocolError, Reply, Request, RequestId, Role, ToWorker,
    WorkerError, WorkerErrorKind,
};

use crate::{
    engine::{Engine, Hooks, LoadOptions},
    fault, make_model, mlx_info, telemetry,
};

/// Default telemetry interval until a load request sets one.
const DEFAULT_INTERVAL_MS: u64 = 100;
/// How long the reader waits, after the supervisor went away, for the main thread to
/// finish its step before ending the process itself.
const ORPHAN_GRACE: Duration = Duration::from_secs(2);
/// The largest `Matmul` check served.
const MAX_MATMUL: u32 = 4096;

/// The sending side, shared by all threads.
pub struct Link {
    writer: Mutex<UnixStream>,
    start: Instant,
    phase: AtomicU8,
    request: Mutex<Option<RequestId>>,
    /// Set by the `hang` fault: nothing more is ever sent.
    silent: AtomicBool,
    interval_ms: AtomicU64,
    /// Work the main thread finished; see `Telemetry::progress`.
    progress: AtomicU64,
}

fn phase_from(n: u8) -> Phase {
    match n {
        0 => Phase::Load,
        1 => Phase::Prefill,
        2 => Phase::Decode,
        _ => Phase::Idle,
    }
}

fn phase_to(p: Phase) -> u8 {
    match p {
        Phase::Load => 0,
        Phase::Prefill => 1,
        Phase::Decode => 2,
        _ => 3,
    }
}

impl Link {
    fn send(&self, msg: &FromWorker) -> Result<(), ProtocolError> {
        self.send_with(|| vec![msg.clone()])
    }

    /// Builds and writes messages under the writer lock, so what they say (a phase, a
    /// sample of it) cannot be overtaken on the wire by another thread's newer news: a
    /// heartbeat sampled in `decode` never lands after the `idle` that ended it.
    fn send_with(&self, build: impl FnOnce() -> Vec<FromWorker>) -> Result<(), ProtocolError> {
        if self.silent.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        for msg in build() {
            frame::write_sync(&mut *w, &msg)?;
        }
        Ok(())
    }

    fn current(&self) -> Option<RequestId> {
        *self.request.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(&self, event: Event) {
        let _ = self.send(&FromWorker::Event {
            id: self.current(),
            event,
        });
    }

    fn phase(&self) -> Phase {
        phase_from(self.phase.load(Ordering::SeqCst))
    }

    /// The main thread finished a unit of work.
    fn advance(&self) {
        self.progress.fetch_add(1, Ordering::SeqCst);
    }

    fn sample(&self, phase: Phase) -> protocol::Telemetry {
        telemetry::sample(self.start, phase, self.progress.load(Ordering::SeqCst))
    }

    /// Enters a phase: tells the supervisor, with a memory sample at the boundary.
    fn set_phase(&self, phase: Phase) {
        self.advance();
        let id = self.current();
        let _ = self.send_with(|| {
            self.phase.store(phase_to(phase), Ordering::SeqCst);
            vec![
                FromWorker::Event {
                    id,
                    event: Event::Phase(phase),
                },
                FromWorker::Event {
                    id,
                    event: Event::Telemetry(self.sample(phase)),
                },
            ]
        });
    }

    fn reply(&self, id: RequestId, body: Reply) {
        let _ = self.send(&FromWorker::Reply { id, body });
    }
}

/// What the reader thread hands the main thread.
enum Incoming {
    Request(RequestId, Request),
    Shutdown,
    /// The supervisor closed the socket.
    Closed,
    /// The supervisor sent something unreadable; the worker ends.
    Broken(ProtocolError),
}

/// Flags the reader sets while the main thread works.
#[derive(Default)]
struct Control {
    cancelled: Mutex<HashSet<RequestId>>,
    stopping: AtomicBool,
}

impl Control {
    fn is_cancelled(&self, id: RequestId) -> bool {
        self.stopping.load(Ordering::SeqCst)
            || self
                .cancelled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&id)
    }
}

/// Serves one supervisor on `stream` until shutdown or end of stream. Returns the
/// process exit code.
pub fn serve(stream: UnixStream) -> i32 {
    let start = Instant::now();
    let (mut reader, writer) = match stream.try_clone() {
        Ok(w) => (stream, w),
        Err(e) => {
            eprintln!("mlxsup-worker: cloning the socket: {e}");
            return 1;
        }
    };
    let link = Arc::new(Link {
        writer: Mutex::new(writer),
        start,
        phase: AtomicU8::new(phase_to(Phase::Idle)),
        request: Mutex::new(None),
        silent: AtomicBool::new(false),
        interval_ms: AtomicU64::new(DEFAULT_INTERVAL_MS),
        progress: AtomicU64::new(0),
    });
    let ours = Hello::ours(
        Role::Worker,
        concat!("mlxsup-worker ", env!("CARGO_PKG_VERSION")),
    );
    {
        let mut w = link.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) =
            handshake::handshake_sync::<FromWorker, ToWorker>(&mut reader, &mut *w, ours)
        {
            eprintln!("mlxsup-worker: handshake failed: {e}");
            return 3;
        }
    }

    let control = Arc::new(Control::default());
    let (tx, rx) = mpsc::channel();
    spawn_reader(reader, tx, Arc::clone(&control));
    spawn_heartbeat(Arc::clone(&link));

    let mut worker = Worker {
        link: Arc::clone(&link),
        control,
        engine: None,
        load: None,
    };
    for incoming in rx {
        match incoming {
            Incoming::Request(id, body) => worker.handle(id, body),
            Incoming::Shutdown | Incoming::Closed => return 0,
            Incoming::Broken(e) => {
                eprintln!("mlxsup-worker: bad message from the supervisor: {e}");
                return 3;
            }
        }
    }
    0
}

fn spawn_reader(mut reader: UnixStream, tx: mpsc::Sender<Incoming>, control: Arc<Control>) {
    thread::spawn(move || loop {
        let msg = match frame::read_sync::<ToWorker>(&mut reader) {
            Ok(Some(m)) => m,
            Ok(None) => {
                control.stopping.store(true, Ordering::SeqCst);
                let _ = tx.send(Incoming::Closed);
                orphan_exit();
            }
            Err(e) => {
                control.stopping.store(true, Ordering::SeqCst);
                let _ = tx.send(Incoming::Broken(e));
                orphan_exit();
            }
        };
        match msg {
            ToWorker::Request { id, body } => {
                if tx.send(Incoming::Request(id, body)).is_err() {
                    return;
                }
            }
            ToWorker::Cancel { id } => {
                control
                    .cancelled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id);
            }
            ToWorker::Shutdown => {
                control.stopping.store(true, Ordering::SeqCst);
                let _ = tx.send(Incoming::Shutdown);
                return;
            }
            ToWorker::Hello(_) => {
                let _ = tx.send(Incoming::Broken(ProtocolError::Unexpected(
                    "a second handshake".into(),
                )));
                return;
            }
        }
    });
}

/// The supervisor is gone: give the main thread a moment to stop at a step boundary,
/// then end without running exit handlers (another thread may be inside MLX).
fn orphan_exit() -> ! {
    thread::sleep(ORPHAN_GRACE);
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(0) }
}

fn spawn_heartbeat(link: Arc<Link>) {
    thread::spawn(move || loop {
        let ms = link.interval_ms.load(Ordering::SeqCst).max(1);
        thread::sleep(Duration::from_millis(ms));
        let id = link.current();
        let sent = link.send_with(|| {
            vec![FromWorker::Event {
                id,
                event: Event::Telemetry(link.sample(link.phase())),
            }]
        });
        if sent.is_err() {
            return;
        }
    });
}

struct Worker {
    link: Arc<Link>,
    control: Arc<Control>,
    engine: Option<Engine>,
    load: Option<LoadRequest>,
}

impl Worker {
    fn handle(&mut self, id: RequestId, body: Request) {
        if self.control.is_cancelled(id) {
            self.link.reply(id, Reply::Error(cancelled()));
            return;
        }
        *self.link.request.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
        let reply = match body {
            Request::SystemInfo => Reply::SystemInfo(mlx_info::system_info()),
            Request::Matmul { size } => matmul(size),
            Request::Load(req) => self.load(id, req),
            Request::Generate(req) => self.generate(id, req),
            Request::Unload => {
                self.engine = None;
                let _ = mlx_rs::memory::clear_cache();
                Reply::Unloaded
            }
            Request::MakeModel(spec) => match make_model::make_model(&spec) {
                Ok(weight_bytes) => Reply::ModelMade {
                    dir: spec.dir,
                    weight_bytes,
                },
                Err(e) => Reply::Error(e),
            },
        };
        self.link.reply(id, reply);
        *self.link.request.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn load(&mut self, id: RequestId, req: LoadRequest) -> Reply {
        self.engine = None;
        let _ = mlx_rs::memory::clear_cache();
        mlx_info::use_device(req.device);
        if let Err(e) = apply_limits(&req) {
            return Reply::Error(e);
        }
        self.link.interval_ms.store(
            u64::from(req.telemetry_interval_ms.max(1)),
            Ordering::SeqCst,
        );
        let started = Instant::now();
        self.link.set_phase(Phase::Load);
        let result = (|| {
            if let Some(Fault {
                action,
                point: FaultPoint::Load,
            }) = req.fault
            {
                self.trigger(action)?;
            }
            let opts = LoadOptions {
                prefill_chunk: (req.prefill_chunk as usize).max(1),
                f32: req.compute == protocol::ComputeDtype::F32,
                matmul_lanes: 0,
                kv_bits: req.kv_bits,
            };
            let mut hooks = StepHooks {
                link: &self.link,
                control: &self.control,
                id,
                fault: None,
                soft_budget: None,
                delivered: 0,
            };
            let mut engine = Engine::load(Path::new(&req.model_dir), &opts, &mut hooks)?;
            engine.set_activation_model(crate::engine::activation_model(req.activation.as_deref()));
            Ok(engine)
        })();
        self.link.set_phase(Phase::Idle);
        match result {
            Ok(engine) => {
                let info = LoadInfo {
                    architecture: engine.architecture().to_string(),
                    load_ms: started.elapsed().as_millis() as u64,
                    weight_bytes: engine.weight_bytes(),
                    active_bytes: mlx_rs::memory::active_memory().unwrap_or(0) as u64,
                    peak_bytes: crate::peak::peak(),
                    vocab_size: engine.vocab_size(),
                    device: mlx_info::device_name(),
                    compute_dtype: engine.compute_dtype(),
                    mlx_version: mlx_info::mlx_version(),
                    backend: mlx_info::backend_of(&mlx_info::device_name()),
                };
                self.engine = Some(engine);
                self.load = Some(req);
                Reply::Loaded(info)
            }
            Err(e) => Reply::Error(mlx_error(e)),
        }
    }

    fn generate(&mut self, id: RequestId, req: GenerateRequest) -> Reply {
        let Some(engine) = self.engine.as_mut() else {
            return Reply::Error(WorkerError {
                kind: WorkerErrorKind::BadRequest,
                message: "no model is loaded".into(),
            });
        };
        let load = self.load.as_ref();
        let mut hooks = StepHooks {
            link: &self.link,
            control: &self.control,
            id,
            fault: req.fault.or(load.and_then(|l| l.fault)),
            soft_budget: load.and_then(|l| l.limits.soft_budget),
            delivered: 0,
        };
        let result = engine.generate(&req, &mut hooks);
        self.link.set_phase(Phase::Idle);
        match result {
            Ok(done) => Reply::Done(DoneInfo {
                peak_bytes: done.peak_bytes.max(crate::peak::peak()),
                ..done
            }),
            Err(e) => {
                let _ = mlx_rs::memory::clear_cache();
                Reply::Error(mlx_error(e))
            }
        }
    }

    fn trigger(&self, action: protocol::FaultAction) -> Result<(), WorkerError> {
        trigger_fault(&self.link, action)
    }
}

fn trigger_fault(link: &Link, action: protocol::FaultAction) -> Result<(), WorkerError> {
    if action == protocol::FaultAction::Garbage {
        // A frame of the right length whose body is no message: the supervisor must
        // call it a protocol error and stop this worker.
        let mut w = link.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut junk = 16u32.to_be_bytes().to_vec();
        junk.extend_from_slice(&[0xfe; 16]);
        let _ = io::Write::write_all(&mut *w, &junk);
        return Ok(());
    }
    fault::trigger(action, || link.silent.store(true, Ordering::SeqCst)).map_err(|e| {
        mlx_error(WorkerError {
            kind: WorkerErrorKind::Internal,
            message: e.to_string(),
        })
    })
}

fn cancelled() -> WorkerError {
    WorkerError {
        kind: WorkerErrorKind::Cancelled,
        message: "cancelled".into(),
    }
}

/// When the process's address space is within 15% of its `RLIMIT_AS`, says so: any MLX
/// error then most likely comes from an allocation the OS refused (MLX's CPU backend
/// reports it as whatever failed next, e.g. "Unable to read from file").
fn address_space_pressure() -> Option<String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let limit: u64 = lim.rlim_cur;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let vm = pages * u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    (vm.saturating_mul(100) >= limit.saturating_mul(85)).then(|| {
        format!(
            "address space {} MiB of its {} MiB RLIMIT_AS: an allocation was refused",
            vm >> 20,
            limit >> 20
        )
    })
}

/// MLX reports allocation failures as ordinary errors; give them their own kind.
fn mlx_error(e: WorkerError) -> WorkerError {
    if matches!(
        e.kind,
        WorkerErrorKind::LoadFailed | WorkerErrorKind::Internal
    ) {
        if let Some(why) = address_space_pressure() {
            return WorkerError {
                kind: WorkerErrorKind::AllocationFailed,
                message: format!("{} ({why})", e.message),
            };
        }
    }
    let m = e.message.to_ascii_lowercase();
    let alloc = [
        "[metal::malloc]",
        "attempting to allocate",
        "failed to allocate",
        "out of memory",
        "buffer size",
    ]
    .iter()
    .any(|p| m.contains(p));
    if alloc && e.kind == WorkerErrorKind::Internal {
        WorkerError {
            kind: WorkerErrorKind::AllocationFailed,
            ..e
        }
    } else {
        e
    }
}

/// Sets MLX's limits before the model's first allocation.
fn apply_limits(req: &LoadRequest) -> Result<(), WorkerError> {
    let err = |what: &str, e: mlx_rs::error::Exception| WorkerError {
        kind: WorkerErrorKind::Internal,
        message: format!("setting MLX's {what}: {e}"),
    };
    let l = &req.limits;
    if let Some(v) = l.memory_limit {
        mlx_rs::memory::set_memory_limit(v as usize).map_err(|e| err("memory limit", e))?;
    }
    if let Some(v) = l.cache_limit {
        mlx_rs::memory::set_cache_limit(v as usize).map_err(|e| err("cache limit", e))?;
    }
    if let (Some(v), "metal") = (l.wired_limit, mlx_info::BACKEND) {
        mlx_rs::memory::set_wired_limit(v as usize).map_err(|e| err("wired limit", e))?;
    }
    Ok(())
}

fn matmul(size: u32) -> Reply {
    if size == 0 || size > MAX_MATMUL {
        return Reply::Error(WorkerError {
            kind: WorkerErrorKind::BadRequest,
            message: format!("matmul size {size} is not in 1..={MAX_MATMUL}"),
        });
    }
    match mlx_info::matmul_check(size) {
        Ok((sum, ms)) => Reply::Matmul { size, sum, ms },
        Err(e) => Reply::Error(mlx_error(WorkerError {
            kind: WorkerErrorKind::Internal,
            message: e.to_string(),
        })),
    }
}

/// The hooks the engine calls while generating: progress, phases, tokens, and the
/// checks before every step (cancellation, injected faults, the soft memory guard).
struct StepHooks<'a> {
    link: &'a Link,
    control: &'a Control,
    id: RequestId,
    fault: Option<Fault>,
    soft_budget: Option<u64>,
    /// Token events sent for this request.
    delivered: u32,
}

impl Hooks for StepHooks<'_> {
    fn progress(&mut self, done: u64, total: u64) {
        self.link.advance();
        self.link.event(Event::Progress { done, total });
    }

    fn phase(&mut self, phase: Phase) {
        self.link.set_phase(phase);
    }

    fn before_step(
        &mut self,
        phase: Phase,
        step: u32,
        predicted_bytes: u64,
    ) -> Result<(), WorkerError> {
        self.link.advance();
        if self.control.is_cancelled(self.id) {
            return Err(cancelled());
        }
        if let Some(f) = self.fault {
            // `decode:N` means "when N-1 tokens have been delivered": for N ≤ 1 that is
            // before the first decode step; later ones fire in `delivered`, because the
            // pipelined loop queues step N before token N-1 is out.
            let hit = match (f.point, phase) {
                (FaultPoint::Prefill, Phase::Prefill) => step == 0,
                (FaultPoint::Decode(n), Phase::Decode) => n <= 1 && self.delivered == 0,
                _ => false,
            };
            if hit {
                self.fault = None;
                trigger_fault(self.link, f.action)?;
            }
        }
        if let Some(budget) = self.soft_budget {
            let active = mlx_rs::memory::active_memory().unwrap_or(0) as u64;
            if active.saturating_add(predicted_bytes) > budget {
                return Err(WorkerError {
                    kind: WorkerErrorKind::MemoryBudgetExceeded,
                    message: format!(
                        "the {phase} step {step} would need {predicted_bytes} bytes on top of {active} active; \
                         the worker's budget is {budget} bytes"
                    ),
                });
            }
        }
        Ok(())
    }

    fn token(&mut self, id: u32, text: &str) {
        self.link.advance();
        // Write-through: the event is in the socket when this returns.
        self.link.event(Event::Token {
            id,
            text: text.to_string(),
        });
        self.delivered += 1;
    }

    fn vision(&mut self, peak: &protocol::VisionPeak) {
        self.link.advance();
        self.link.event(Event::Vision(Box::new(peak.clone())));
    }

    fn delivered(&mut self) -> Result<(), WorkerError> {
        if let Some(
            f @ Fault {
                point: FaultPoint::Decode(n),
                ..
            },
        ) = self.fault
        {
            if self.delivered.saturating_add(1) >= n {
                self.fault = None;
                trigger_fault(self.link, f.action)?;
            }
        }
        Ok(())
    }
}

/// Connects to the supervisor's socket.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    UnixStream::connect(path)
}
