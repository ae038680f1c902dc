//! The worker's protocol loop: handshake, then requests one at a time, with a reader
//! thread for cancellation and shutdown, and a telemetry thread that doubles as the
//! heartbeat.
//!
//! Threads: the main thread owns the engine and runs requests; the reader thread turns
//! frames into [`Incoming`] messages and marks cancellations at once; the telemetry
//! thread samples memory every interval. All writes go through one [`Link`].
//!
//! Here: [`serve`], [`connect`] and the main thread's `Worker`. The submodules: `link`
//! (the sending side and the heartbeat), `reader` (the reader thread), `dispatch` (a
//! request's dispatch), `handlers` (load and generate), `hooks` (the engine's step hooks
//! and fault triggering) and `errors` (how MLX's errors are classified).

mod dispatch;
mod errors;
mod handlers;
mod hooks;
mod link;
mod reader;

use std::{
    io,
    os::unix::net::UnixStream,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8},
        mpsc, Arc, Mutex,
    },
    time::Instant,
};

use protocol::{handshake, FromWorker, Hello, LoadRequest, Phase, Role, ToWorker};

pub use link::Link;
use link::{phase_to, spawn_heartbeat};
use reader::{spawn_reader, Control, Incoming};

use crate::engine::Engine;

/// Default telemetry interval until a load request sets one.
const DEFAULT_INTERVAL_MS: u64 = 100;

/// Serves one supervisor on `stream` until shutdown or end of stream. Returns the
/// process exit code.
pub fn serve(stream: UnixStream) -> i32 {
    let start = Instant::now();
    let (mut reader, mut writer) = match stream.try_clone() {
        Ok(w) => (stream, w),
        Err(e) => {
            eprintln!("mlxsup-worker: cloning the socket: {e}");
            return 1;
        }
    };
    let ours = Hello::ours(
        Role::Worker,
        concat!("mlxsup-worker ", env!("CARGO_PKG_VERSION")),
    );
    let wire = match handshake::handshake_sync::<FromWorker, ToWorker>(
        &mut reader,
        &mut writer,
        ours.clone(),
    ) {
        Ok(peer) => handshake::negotiated(&ours, &peer),
        Err(e) => {
            eprintln!("mlxsup-worker: handshake failed: {e}");
            return 3;
        }
    };
    let link = Arc::new(Link {
        writer: Mutex::new(writer),
        wire,
        start,
        phase: AtomicU8::new(phase_to(Phase::Idle)),
        request: Mutex::new(None),
        silent: AtomicBool::new(false),
        interval_ms: AtomicU64::new(DEFAULT_INTERVAL_MS),
        progress: AtomicU64::new(0),
    });

    let control = Arc::new(Control::default());
    let (tx, rx) = mpsc::channel();
    spawn_reader(reader, wire, tx, Arc::clone(&control));
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

struct Worker {
    link: Arc<Link>,
    control: Arc<Control>,
    engine: Option<Engine>,
    load: Option<LoadRequest>,
}

/// Connects to the supervisor's socket.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    UnixStream::connect(path)
}
