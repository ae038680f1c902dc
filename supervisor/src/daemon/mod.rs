//! `mlxsup serve`: the long-lived supervisor. It keeps models loaded in sandboxed
//! workers (one actor per model, [`models`]), admits them against its budget
//! ([`admission`]), restarts and quarantines them ([`policy`]), resolves names
//! ([`registry`]) and serves clients on its control socket ([`control`]).
//!
//! One daemon per socket (a lock file beside it; a socket left by a killed daemon is
//! replaced). SIGTERM/SIGINT: stop accepting, fail what is in flight with
//! `shutting_down`, shut the workers down, remove the socket, exit 0. A fatal internal
//! error exits non-zero, so a service manager's restart-on-failure fires.

pub mod admission;
pub mod control;
pub mod http;
pub mod models;
pub mod policy;
pub mod ps_json;
pub mod registry;

use std::{
    collections::HashMap,
    fs,
    io::{Read, Seek, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use estimate::Bytes;
use protocol::control::{DaemonStatus, KeepAlive, ModelEntry, ModelStatus};
use tokio::{net::UnixListener, sync::broadcast};
use tokio_util::sync::CancellationToken;

use crate::{budget, exit::Exit, plan, supervise::runtime_dir};
use models::{Row, Slot};
use registry::Registry;

/// Requests a model may have waiting.
pub const DEFAULT_QUEUE: usize = 64;

#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// The control socket [default: MLXSUP_SOCKET, else mlxsup.sock in the runtime dir].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Memory all models together may use [default: this machine's].
    #[arg(long)]
    pub budget: Option<Bytes>,
    /// Models loaded at once, at most.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub max_loaded: u64,
    /// How long a model stays loaded after its last request: 30s, 5m, 1h, 0 (unload
    /// after the reply) or -1 (never).
    #[arg(long, default_value = "5m", value_parser = parse_keep_alive, allow_hyphen_values = true)]
    pub keep_alive: KeepAlive,
    /// A folder of model folders to resolve names in (repeatable).
    #[arg(long)]
    pub models: Vec<PathBuf>,
    /// After a memory failure at load or prefill on the GPU, retry on the CPU device
    /// (instead of with half the context).
    #[arg(long)]
    pub fallback_cpu: bool,
    /// Serve the OpenAI-compatible HTTP API too: `--http` alone on 127.0.0.1:11435
    /// (loopback), or `--http ADDR`.
    #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:11435", value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// HTTP requests must carry `Authorization: Bearer KEY`.
    #[arg(long, env = "MLXSUP_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Tests: honour the HTTP fault-injection header.
    #[arg(long, hide = true)]
    pub allow_fault_injection: bool,
    /// Requests a model may have waiting before new ones are refused `busy`.
    #[arg(long, default_value_t = DEFAULT_QUEUE as u64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub queue: u64,
    /// Bytes each model's prefix cache may hold (the KV of finished generations, reused
    /// by prompts that share their prefix), or `off` [default: a quarter of the budget
    /// left after the model's estimate, at most 2 GiB].
    #[arg(long, value_name = "BYTES|off", value_parser = crate::plan::parse_prefix_cache)]
    pub prefix_cache: Option<u64>,
}

/// Parses a keep-alive: `-1`, `0`, or a duration like `30s`, `5m`, `1h`.
pub fn parse_keep_alive(s: &str) -> Result<KeepAlive, String> {
    match s.trim() {
        "-1" => Ok(KeepAlive::Forever),
        "0" => Ok(KeepAlive::Millis(0)),
        t => humantime::parse_duration(t)
            .map(|d| KeepAlive::Millis(d.as_millis() as u64))
            .map_err(|e| format!("`{s}` is not a keep-alive (30s, 5m, 1h, 0 or -1): {e}")),
    }
}

/// The socket clients and the daemon agree on: `--socket`, else `MLXSUP_SOCKET`, else
/// `mlxsup.sock` in the private runtime dir.
pub fn socket_path(arg: Option<&Path>) -> PathBuf {
    if let Some(p) = arg {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("MLXSUP_SOCKET") {
        return PathBuf::from(p);
    }
    runtime_dir::default_path().join("mlxsup.sock")
}

/// What every part of the daemon shares.
pub struct Shared {
    pub budget: u64,
    pub max_loaded: usize,
    pub keep_alive: KeepAlive,
    pub queue_limit: usize,
    /// The device policy: a memory failure on the GPU is retried on the CPU.
    pub fallback_cpu: bool,
    /// `--prefix-cache`: what a load that does not say gets.
    pub prefix_cache: crate::plan::PrefixCache,
    pub registry: Registry,
    pub socket: PathBuf,
    pub started: Instant,
    slots: Mutex<HashMap<PathBuf, Arc<Slot>>>,
    /// One admission at a time.
    pub admission: tokio::sync::Mutex<()>,
    /// Model state changes, for `Subscribe`.
    pub changes: broadcast::Sender<ModelStatus>,
    /// Asked to stop (a signal, or `Shutdown`).
    pub shutdown: CancellationToken,
    /// Every model has answered; connections close.
    pub closed: CancellationToken,
}

impl Shared {
    /// The slot of the model `name` resolves to, made on first use.
    pub fn slot_for(self: &Arc<Self>, name: &str) -> Result<Arc<Slot>, String> {
        if self.shutdown.is_cancelled() {
            return Err("the daemon is shutting down".into());
        }
        let dir = self.registry.resolve(name)?;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get(&dir) {
            return Ok(Arc::clone(s));
        }
        let slot = Arc::new(models::start(
            Arc::clone(self),
            dir.clone(),
            self.registry.name_of(&dir),
        ));
        slots.insert(dir, Arc::clone(&slot));
        Ok(slot)
    }

    fn slots(&self) -> Vec<Arc<Slot>> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = slots.values().cloned().collect();
        v.sort_by(|a, b| a.dir.cmp(&b.dir));
        v
    }

    /// Every other model's row.
    pub fn rows_except(&self, dir: &Path) -> Vec<(Arc<Slot>, Row)> {
        self.slots()
            .into_iter()
            .filter(|s| s.dir != dir)
            .map(|s| {
                let row = s.row.borrow().clone();
                (s, row)
            })
            .collect()
    }

    pub fn ps(&self) -> Vec<ModelStatus> {
        self.slots()
            .iter()
            .map(|s| s.row.borrow().status.clone())
            .collect()
    }

    pub fn status(&self) -> DaemonStatus {
        let slots = self.slots();
        DaemonStatus {
            version: concat!("mlxsup ", env!("CARGO_PKG_VERSION")).into(),
            pid: std::process::id(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            budget_bytes: self.budget.into(),
            held_bytes: slots
                .iter()
                .map(|s| s.row.borrow().held_bytes)
                .sum::<u64>()
                .into(),
            models: slots.len() as u32,
            socket: self.socket.display().to_string(),
        }
    }

    /// The models the daemon can see, each estimated at its default context.
    pub fn ls(&self) -> Vec<ModelEntry> {
        let loaded: Vec<PathBuf> = self
            .slots()
            .iter()
            .filter(|s| s.row.borrow().held_bytes > 0)
            .map(|s| s.dir.clone())
            .collect();
        self.registry
            .list()
            .into_iter()
            .map(|(name, dir)| {
                let canonical = fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
                let (size, est, context, verdict) = match plan::open(&dir) {
                    Ok(m) => {
                        let e =
                            plan::estimate(&m, None, estimate::DEFAULT_PREFILL_CHUNK, self.budget);
                        (
                            e.weights.bytes,
                            e.total_bytes,
                            e.kv_cache.context,
                            e.verdict.as_str().to_string(),
                        )
                    }
                    Err(e) => (0, 0, 0, e),
                };
                ModelEntry {
                    name,
                    model: dir.display().to_string(),
                    size_bytes: size.into(),
                    estimate_bytes: est.into(),
                    context,
                    verdict,
                    loaded: loaded.contains(&canonical),
                }
            })
            .collect()
    }
}

pub fn main(args: ServeArgs) -> Exit {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mlxsup serve: cannot start the async runtime: {e}");
            return Exit::Internal;
        }
    };
    rt.block_on(serve(args))
}

/// The single-instance lock beside the socket; holds the running daemon's pid.
struct Lock {
    _flock: nix::fcntl::Flock<fs::File>,
    path: PathBuf,
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn lock(socket: &Path) -> Result<Lock, String> {
    let path = PathBuf::from(format!("{}.lock", socket.display()));
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut flock) => {
            let _ = flock.set_len(0);
            let _ = flock.rewind();
            let _ = write!(flock, "{}", std::process::id());
            let _ = flock.flush();
            Ok(Lock {
                _flock: flock,
                path,
            })
        }
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(format!(
                "another mlxsup daemon (pid {}) is serving {}",
                pid.trim(),
                socket.display()
            ))
        }
    }
}

async fn serve(args: ServeArgs) -> Exit {
    let socket = socket_path(args.socket.as_deref());
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
        eprintln!("mlxsup serve: {} has no directory", socket.display());
        return Exit::Usage;
    };
    if let Err(e) = runtime_dir::ensure(dir) {
        eprintln!("mlxsup serve: {e}");
        return Exit::Internal;
    }
    if socket.as_os_str().len() > runtime_dir::MAX_SOCKET_PATH {
        eprintln!(
            "mlxsup serve: the socket path {} is longer than {} bytes",
            socket.display(),
            runtime_dir::MAX_SOCKET_PATH
        );
        return Exit::Usage;
    }
    let _lock = match lock(&socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mlxsup serve: {e}");
            return Exit::Internal;
        }
    };
    // We hold the lock: a socket file there was left by a daemon that was killed.
    if fs::symlink_metadata(&socket).is_ok() {
        tracing::info!(socket = %socket.display(), "replacing a stale socket");
        let _ = fs::remove_file(&socket);
    }
    let listener = match UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mlxsup serve: cannot listen on {}: {e}", socket.display());
            return Exit::Internal;
        }
    };
    let budget = match budget::budget(args.budget) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("mlxsup serve: {e}");
            return Exit::Internal;
        }
    };
    let models: Vec<PathBuf> = args
        .models
        .iter()
        .map(|d| fs::canonicalize(d).unwrap_or_else(|_| d.clone()))
        .collect();
    let shared = Arc::new(Shared {
        budget: budget.bytes.0,
        max_loaded: args.max_loaded as usize,
        keep_alive: args.keep_alive,
        queue_limit: args.queue as usize,
        fallback_cpu: args.fallback_cpu,
        prefix_cache: crate::plan::PrefixCache::from_wire(
            args.prefix_cache,
            crate::plan::PrefixCache::Auto,
        ),
        registry: Registry::new(models, Registry::default_hf_cache()),
        socket: socket.clone(),
        started: Instant::now(),
        slots: Mutex::new(HashMap::new()),
        admission: tokio::sync::Mutex::new(()),
        changes: broadcast::channel(256).0,
        shutdown: CancellationToken::new(),
        closed: CancellationToken::new(),
    });
    let _signals = crate::rt::cancel_on_signal(shared.shutdown.clone());
    if let Some(addr) = args.http {
        let http = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("mlxsup serve: cannot listen for HTTP on {addr}: {e}");
                return Exit::Internal;
            }
        };
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "the HTTP API listens beyond this machine");
        }
        let app = http::App {
            shared: Arc::clone(&shared),
            api_key: args.api_key.as_deref().map(Arc::from),
            allow_faults: args.allow_fault_injection,
        };
        let closed = shared.closed.clone();
        let addr = http.local_addr().unwrap_or(addr);
        tracing::info!(%addr, "serving HTTP");
        eprintln!("mlxsup serve: HTTP (OpenAI API) on http://{addr}/v1");
        tokio::spawn(async move {
            let served = axum::serve(http, http::router(app))
                .with_graceful_shutdown(closed.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!("the HTTP server failed: {e}");
            }
        });
    }
    tracing::info!(
        socket = %socket.display(),
        budget = budget.bytes.0,
        pid = std::process::id(),
        "serving"
    );
    eprintln!(
        "mlxsup serve: pid {} serving {} (budget {}, up to {} models)",
        std::process::id(),
        socket.display(),
        budget.bytes,
        args.max_loaded
    );
    // systemd (Type=notify): the socket accepts from here on.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(control::serve_connection(Arc::clone(&shared), stream));
                }
                Err(e) => {
                    // EMFILE and the like pass; keep serving those already connected.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shared.shutdown.cancelled() => break,
        }
    }
    tracing::info!("shutting down");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    drop(listener);
    let _ = fs::remove_file(&socket);
    let mut waits = Vec::new();
    for slot in shared.slots() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if slot
            .cmds
            .send(models::ModelCmd::Shutdown { done: tx })
            .is_ok()
        {
            waits.push(rx);
        }
    }
    for w in waits {
        let _ = w.await;
    }
    shared.closed.cancel();
    // Let connections flush their last replies.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Exit::Ok
}
