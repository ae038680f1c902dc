//! The request queue and the generation path: the next queued request started on the
//! worker once its prompt fits, and its events and end taken in.

use std::time::Instant;

use protocol::{
    control::{ControlEvent, ControlReply, GenerateDone, KeepAlive, ModelState},
    Failure, FailureKind, Reply, Request,
};

use super::{super::admission, Actor, Job, Running};
use crate::supervise::{report, End, Update};

impl Actor {
    /// Starts what can start: a load when work waits and no worker is there, the next
    /// queued generation when the worker is ready.
    pub(super) fn pump(&mut self) {
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
        self.check_waiting();
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

    pub(super) async fn update(&mut self, u: Option<Update>) {
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
                    if c.resp.lagging() && !c.cancel.is_cancelled() {
                        // Its client does not keep up: nothing waits on it.
                        c.cancel.cancel();
                    }
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
                        c.resp.cancelled();
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
                            checked: None,
                        };
                        self.died(*f, Some(job)).await;
                    }
                }
            }
        }
    }

    /// Once the model is loaded, every queued request still waiting to hear is checked
    /// against its context at once, not when its turn comes: one that does not fit is
    /// refused now, the others are told they fit ([`Job::checked`]).
    fn check_waiting(&mut self) {
        if self.loading.is_some() || self.loadable.is_none() || self.plan.is_none() {
            return;
        }
        let mut i = 0;
        while i < self.queue.len() {
            let job = &self.queue[i];
            if job.checked.is_none() {
                i += 1;
                continue;
            }
            match self.check_length(job) {
                Ok(()) => {
                    if let Some(tx) = self.queue[i].checked.take() {
                        let _ = tx.send(());
                    }
                    i += 1;
                }
                Err(f) => {
                    if let Some(job) = self.queue.remove(i) {
                        job.resp.reply(ControlReply::Failed(f));
                    }
                }
            }
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
}
