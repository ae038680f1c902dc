//! The reader thread: frames from the supervisor turned into [`Incoming`] messages for
//! the main thread, cancellations and shutdown marked in [`Control`] at once.

use std::{
    collections::HashSet,
    os::unix::net::UnixStream,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::Duration,
};

use protocol::{frame, ProtocolError, Request, RequestId, ToWorker, Wire};

/// How long the reader waits, after the supervisor went away, for the main thread to
/// finish its step before ending the process itself.
const ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// What the reader thread hands the main thread.
pub(super) enum Incoming {
    Request(RequestId, Request),
    Shutdown,
    /// The supervisor closed the socket.
    Closed,
    /// The supervisor sent something unreadable; the worker ends.
    Broken(ProtocolError),
}

/// Flags the reader sets while the main thread works.
#[derive(Default)]
pub(super) struct Control {
    cancelled: Mutex<HashSet<RequestId>>,
    stopping: AtomicBool,
}

impl Control {
    pub(super) fn is_cancelled(&self, id: RequestId) -> bool {
        self.stopping.load(Ordering::SeqCst)
            || self
                .cancelled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&id)
    }
}

pub(super) fn spawn_reader(
    mut reader: UnixStream,
    wire: Wire,
    tx: mpsc::Sender<Incoming>,
    control: Arc<Control>,
) {
    thread::spawn(move || loop {
        let msg = match frame::read_sync_at::<ToWorker>(&mut reader, wire) {
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
