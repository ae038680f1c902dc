//! The step hooks the engine calls (progress, phases, tokens, the checks before every
//! step) and the triggering of injected faults.

use std::{io, sync::atomic::Ordering};

use protocol::{Event, Fault, FaultPoint, Phase, RequestId, WorkerError, WorkerErrorKind};

use super::{
    errors::{cancelled, mlx_error},
    reader::Control,
    Link, Worker,
};
use crate::{engine::Hooks, fault};

impl Worker {
    pub(super) fn trigger(&self, action: protocol::FaultAction) -> Result<(), WorkerError> {
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

/// The hooks the engine calls while generating: progress, phases, tokens, and the
/// checks before every step (cancellation, injected faults, the soft memory guard).
pub(super) struct StepHooks<'a> {
    pub(super) link: &'a Link,
    pub(super) control: &'a Control,
    pub(super) id: RequestId,
    pub(super) fault: Option<Fault>,
    pub(super) soft_budget: Option<u64>,
    /// Token events sent for this request.
    pub(super) delivered: u32,
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
