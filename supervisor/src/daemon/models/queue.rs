//! The request queue and the generation path: the next queued request started on the
//! worker once its prompt fits, and its events and end taken in.

use std::{path::Path, time::Instant};

use protocol::{
    control::{ControlEvent, ControlReply, GenerateDone, KeepAlive},
    Failure, FailureKind, Reply, Request,
};

use super::{super::admission, Actor, Job, Live, Running, State};
use crate::supervise::{report, End, Update};

impl Actor {
    /// Starts what can start: a load when work waits and no worker is there (after the
    /// backoff), the next queued generation when the worker is free.
    pub(super) fn pump(&mut self) {
        // Requests whose clients went away while queued.
        self.queue.retain(|j| {
            let keep = !j.cancel.is_cancelled();
            if !keep {
                j.resp.reply(ControlReply::Cancelled);
            }
            keep
        });
        if let Some(f) = self.quarantine_failure() {
            for job in self.queue.drain(..) {
                job.resp.reply(ControlReply::Failed(Box::new(f.clone())));
            }
            return;
        }
        if self.queue.is_empty() {
            return;
        }
        self.check_waiting();
        let load = match &self.state {
            State::Unloaded => true,
            State::Failed { retry_at } => Instant::now() >= *retry_at,
            _ => false,
        };
        if load {
            let first = self.queue.front().map(|j| j.resp.clone());
            self.start_load(first, Vec::new());
            return;
        }
        let Some(live) = self.state.live().filter(|l| l.current.is_none()) else {
            return;
        };
        // The next request whose prompt fits; the others are refused on their own.
        let job = loop {
            let Some(job) = self.queue.pop_front() else {
                return;
            };
            match check_length(live, &self.dir, &job) {
                Ok(()) => break job,
                Err(f) => job.resp.reply(ControlReply::Failed(f)),
            }
        };
        let Some(live) = self.state.live_mut() else {
            return;
        };
        let rx = live.worker.request(
            Request::Generate(job.req.request.clone()),
            job.cancel.clone(),
        );
        live.keep_until = None;
        live.current = Some(Running {
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
            if let Some(live) = self.state.live_mut() {
                live.current = None;
            }
            self.worker_changed(false).await;
            return;
        };
        let Some(live) = self.state.live_mut() else {
            return;
        };
        match u {
            Update::Event(ev) => {
                if let Some(c) = &mut live.current {
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
                let Some(c) = live.current.take() else {
                    return;
                };
                match end {
                    End::Reply(Reply::Done(done)) => {
                        self.requests += 1;
                        live.prefix.record(&done);
                        self.consecutive = 0;
                        self.retried = false;
                        let estimate_bytes = live.plan.estimate.total_bytes;
                        let (context_used, estimate_used_bytes) =
                            live.record_run(&done, &c.req.request.images, c.vision.as_ref());
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
                        self.died(*f, Some(job), Vec::new()).await;
                    }
                }
            }
        }
    }

    /// Once the model is loaded, every queued request still waiting to hear is checked
    /// against its context at once, not when its turn comes: one that does not fit is
    /// refused now, the others are told they fit ([`Job::checked`]).
    fn check_waiting(&mut self) {
        let State::Loaded(live) = &self.state else {
            return;
        };
        let mut i = 0;
        while i < self.queue.len() {
            let job = &self.queue[i];
            if job.checked.is_none() {
                i += 1;
                continue;
            }
            match check_length(live, &self.dir, job) {
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
}

/// The prompt and the tokens asked for must fit the context the model was admitted at
/// (the request's own refusal otherwise; the model is fine); a request with images is
/// planned with them ([`admission::check_images`]).
fn check_length(live: &Live, dir: &Path, job: &Job) -> Result<(), Box<Failure>> {
    let (l, plan) = (&live.loadable, &live.plan);
    let prompt_tokens = l
        .text
        .count_prompt_tokens(&job.req.request.prompt)
        .map_err(|e| {
            Box::new(report::plain(
                FailureKind::LoadFailed,
                Some(dir.display().to_string()),
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
    admission::check_images(&l.model, plan, &job.req.request.images)
}
