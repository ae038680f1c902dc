//! One actor task per worker. It owns the connection and always reads it, idle or busy;
//! it watches the process (exit, heartbeat, stall, ceiling) and publishes the worker's
//! [`Status`] on a `watch`; requests come in over a channel, each with its own cancel
//! token and its own stream of [`Update`]s. A death is an event the moment it happens,
//! with the same classification and evidence whether a request was in flight or not.
//!
//! The handle and what it carries are here; starting a worker is [`launch`], the actor's
//! loop is [`actor`], and how a worker's life ends (stopped on purpose, or dead with the
//! evidence gathered) is [`death`].

mod actor;
mod death;
mod launch;

use std::{sync::Arc, time::Duration};

use protocol::{Event, Failure, Hello, Phase, Reply, Request, Telemetry, WorkerError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::reap::ExitInfo;

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
