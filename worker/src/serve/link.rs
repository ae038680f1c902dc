//! The sending side, [`Link`], which every thread writes through, and the heartbeat
//! thread that sends a telemetry sample every interval.

use std::{
    os::unix::net::UnixStream,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use protocol::{frame, Event, FromWorker, Phase, ProtocolError, Reply, RequestId, Wire};

use crate::telemetry;

/// The sending side, shared by all threads.
pub struct Link {
    pub(super) writer: Mutex<UnixStream>,
    /// The versions negotiated with the supervisor: every frame is written for them.
    pub(super) wire: Wire,
    pub(super) start: Instant,
    pub(super) phase: AtomicU8,
    pub(super) request: Mutex<Option<RequestId>>,
    /// Set by the `hang` fault: nothing more is ever sent.
    pub(super) silent: AtomicBool,
    pub(super) interval_ms: AtomicU64,
    /// Work the main thread finished; see `Telemetry::progress`.
    pub(super) progress: AtomicU64,
}

fn phase_from(n: u8) -> Phase {
    match n {
        0 => Phase::Load,
        1 => Phase::Prefill,
        2 => Phase::Decode,
        _ => Phase::Idle,
    }
}

pub(super) fn phase_to(p: Phase) -> u8 {
    match p {
        Phase::Load => 0,
        Phase::Prefill => 1,
        Phase::Decode => 2,
        _ => 3,
    }
}

impl Link {
    pub(super) fn send(&self, msg: &FromWorker) -> Result<(), ProtocolError> {
        self.send_with(|| vec![msg.clone()])
    }

    /// Builds and writes messages under the writer lock, so what they say (a phase, a
    /// sample of it) cannot be overtaken on the wire by another thread's newer news: a
    /// heartbeat sampled in `decode` never lands after the `idle` that ended it.
    pub(super) fn send_with(
        &self,
        build: impl FnOnce() -> Vec<FromWorker>,
    ) -> Result<(), ProtocolError> {
        if self.silent.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        for msg in build() {
            frame::write_sync_at(&mut *w, &msg, self.wire)?;
        }
        Ok(())
    }

    pub(super) fn current(&self) -> Option<RequestId> {
        *self.request.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn event(&self, event: Event) {
        let _ = self.send(&FromWorker::Event {
            id: self.current(),
            event,
        });
    }

    pub(super) fn phase(&self) -> Phase {
        phase_from(self.phase.load(Ordering::SeqCst))
    }

    /// The main thread finished a unit of work.
    pub(super) fn advance(&self) {
        self.progress.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn sample(&self, phase: Phase) -> protocol::Telemetry {
        telemetry::sample(self.start, phase, self.progress.load(Ordering::SeqCst))
    }

    /// Enters a phase: tells the supervisor, with a memory sample at the boundary.
    pub(super) fn set_phase(&self, phase: Phase) {
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

    pub(super) fn reply(&self, id: RequestId, body: Reply) {
        let _ = self.send(&FromWorker::Reply { id, body });
    }
}

pub(super) fn spawn_heartbeat(link: Arc<Link>) {
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
