//! Failures: a worker's death, the one automatic retry of a memory failure, backoff
//! and quarantine.

use std::time::Instant;

use protocol::{
    control::{ControlEvent, ControlReply},
    Device, Failure, FailureKind, Phase,
};

use super::{super::policy, Actor, Job, Responder, State};
use crate::supervise::{report, WorkerState};

impl Actor {
    /// Replies `f` to the load's waiters and every queued request.
    pub(super) fn fail_waiting(&mut self, f: &Failure, waiters: Vec<Responder>) {
        for w in waiters {
            w.reply(ControlReply::Failed(Box::new(f.clone())));
        }
        for job in self.queue.drain(..) {
            job.resp.reply(ControlReply::Failed(Box::new(f.clone())));
        }
    }

    /// The worker's published state changed (or, `gone`, its publisher ended): an idle
    /// death shows here first.
    pub(super) async fn worker_changed(&mut self, gone: bool) {
        let Some(live) = self.state.live() else {
            return;
        };
        let status = live.status.borrow().clone();
        if (status.state != WorkerState::Failed && !gone) || live.current.is_some() {
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
        self.died(f, None, Vec::new()).await;
    }

    /// The worker is gone with `f` (or its load failed, `waiters` waiting for it): retry a
    /// memory failure once with a smaller context, else fail what waits, back off, and
    /// quarantine after too many.
    pub(super) async fn died(&mut self, f: Failure, job: Option<Job>, waiters: Vec<Responder>) {
        tracing::warn!(model = %self.dir.display(), kind = %f.kind, phase = %f.phase, "worker failed");
        // Its handle goes with the state (the worker is gone already).
        self.state = State::Unloaded;
        let now = Instant::now();
        // A worker the supervisor stopped for not answering (a cancel it did not end, a
        // heartbeat that stopped) is the supervisor's decision, not the model failing:
        // it backs off like any death but does not count toward quarantine.
        if !stopped_by_us(&f) {
            self.failures.push_back(now);
        }
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
            for w in &waiters {
                w.event(ControlEvent::Note(note.clone()));
            }
            let first = self.queue.front().map(|j| j.resp.clone());
            self.start_load(first, waiters);
            return;
        }
        if let Some(job) = job {
            job.resp.reply(ControlReply::Failed(Box::new(f.clone())));
        }
        self.fail_waiting(&f, waiters);
        if self.failures.len() >= policy::QUARANTINE_AFTER {
            tracing::warn!(model = %self.dir.display(), failures = self.failures.len(), "quarantined");
            self.state = State::Quarantined;
        } else {
            self.state = State::Failed {
                retry_at: now + policy::backoff(self.consecutive),
            };
        }
    }

    /// Forgets the failure history; a quarantined or backing-off model is unloaded.
    pub(super) fn clear_failures(&mut self) {
        self.retried = false;
        self.failures.clear();
        self.consecutive = 0;
        if matches!(self.state, State::Quarantined | State::Failed { .. }) {
            self.state = State::Unloaded;
        }
    }

    /// The refusal of a quarantined model.
    pub(super) fn quarantine_failure(&self) -> Option<Failure> {
        if !matches!(self.state, State::Quarantined) {
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

/// Whether `f` is the supervisor's own stop of a worker that did not answer.
fn stopped_by_us(f: &Failure) -> bool {
    f.kind == FailureKind::Unresponsive && f.signal_sent_by_supervisor
}
