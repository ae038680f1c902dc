//! Failures: a worker's death, the one automatic retry of a memory failure, backoff
//! and quarantine.

use std::time::Instant;

use protocol::{
    control::{ControlEvent, ControlReply, ModelState},
    Device, Failure, FailureKind, Phase,
};

use super::{super::policy, Actor, Job};
use crate::supervise::{report, WorkerState};

impl Actor {
    /// Replies `f` to every load waiter and queued request.
    pub(super) fn fail_waiting(&mut self, f: &Failure) {
        for w in self.load_waiters.drain(..) {
            w.reply(ControlReply::Failed(Box::new(f.clone())));
        }
        for job in self.queue.drain(..) {
            job.resp.reply(ControlReply::Failed(Box::new(f.clone())));
        }
    }

    /// The worker's published state changed: an idle death shows here first.
    pub(super) async fn worker_changed(&mut self) {
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
    pub(super) async fn died(&mut self, f: Failure, job: Option<Job>) {
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

    pub(super) fn clear_failures(&mut self) {
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
    pub(super) fn quarantine_failure(&self) -> Option<Failure> {
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
}
