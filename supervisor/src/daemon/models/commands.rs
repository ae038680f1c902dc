//! The actor's commands: generate (queue it), load, unload, evict and shutdown.

use protocol::{control::ControlReply, Failure, FailureKind};

use super::{Actor, LoadSettings, ModelCmd, State};
use crate::supervise::report;

impl Actor {
    /// Handles a command; true when the actor should end.
    pub(super) async fn command(&mut self, cmd: ModelCmd) -> bool {
        match cmd {
            ModelCmd::Generate(job) => {
                if let Some(f) = self.quarantine_failure() {
                    job.resp.reply(ControlReply::Failed(Box::new(f)));
                } else if self.queue.len() >= self.shared.queue_limit {
                    let f = report::plain(
                        FailureKind::Busy,
                        Some(self.dir.display().to_string()),
                        format!(
                            "{} requests are queued for this model (the limit): try again later",
                            self.queue.len()
                        ),
                        Default::default(),
                    );
                    job.resp.reply(ControlReply::Failed(Box::new(f)));
                } else {
                    if !matches!(self.state, State::Loaded(_) | State::Loading { .. }) {
                        self.next_load = LoadSettings {
                            context: job.req.context,
                            force: job.req.force,
                            fault: None,
                            device: job.req.device,
                            compute: job.req.compute,
                            kv_bits: job.req.kv_bits,
                            prefix_cache: None,
                        };
                    }
                    if let Some(k) = job.req.keep_alive {
                        self.keep_alive = k;
                    }
                    self.queue.push_back(job);
                }
            }
            ModelCmd::Load { req, resp } => {
                if req.force {
                    self.clear_failures();
                }
                // An explicit load is a new attempt: it gets its own retry.
                self.retried = false;
                if let Some(k) = req.keep_alive {
                    self.keep_alive = k;
                    self.touch();
                }
                if let Some(f) = self.quarantine_failure() {
                    resp.reply(ControlReply::Failed(Box::new(f)));
                } else {
                    match &mut self.state {
                        State::Loaded(_) => {
                            resp.reply(ControlReply::Loaded(Box::new(self.status())));
                        }
                        State::Loading { waiters, .. } => waiters.push(resp),
                        // Unloaded, or failed (an explicit load does not wait out the
                        // backoff).
                        _ => {
                            self.next_load = LoadSettings {
                                context: req.context,
                                force: req.force,
                                fault: req.fault,
                                device: req.device,
                                compute: req.compute,
                                kv_bits: req.kv_bits,
                                prefix_cache: req.prefix_cache,
                            };
                            self.start_load(Some(resp.clone()), vec![resp]);
                        }
                    }
                }
            }
            ModelCmd::Unload { resp } => {
                // What it was serving or loading for fails `unloaded`: those clients did
                // not cancel, and sending again loads the model again. A load in flight
                // is abandoned (its worker stops when its answer is dropped).
                let f = Failure {
                    message: Some("the model was unloaded (mlxsup unload)".into()),
                    ..report::plain(
                        FailureKind::Unloaded,
                        Some(self.dir.display().to_string()),
                        crate::classify::advice(FailureKind::Unloaded, &Default::default()),
                        Default::default(),
                    )
                };
                self.end_all(&f);
                self.unload_worker().await;
                self.clear_failures();
                resp.reply(ControlReply::Unloaded(Box::new(self.status())));
            }
            ModelCmd::Evict { done } => {
                let ok = self.evictable();
                if ok {
                    tracing::info!(model = %self.dir.display(), "evicted to make room");
                    self.unload_worker().await;
                }
                // The row shows it gone before admission counts again.
                self.publish();
                let _ = done.send(ok);
            }
            ModelCmd::Shutdown { done } => {
                let f = report::plain(
                    FailureKind::ShuttingDown,
                    Some(self.dir.display().to_string()),
                    "the daemon is shutting down; start it again (mlxsup serve) and retry".into(),
                    Default::default(),
                );
                self.end_all(&f);
                self.unload_worker().await;
                self.publish();
                let _ = done.send(());
                return true;
            }
        }
        false
    }

    /// Fails with `f` the generation running, the queued ones and the load's waiters
    /// (the running one is cancelled on its worker).
    fn end_all(&mut self, f: &Failure) {
        match &mut self.state {
            State::Loaded(live) => {
                if let Some(c) = live.current.take() {
                    c.cancel.cancel();
                    c.resp.reply(ControlReply::Failed(Box::new(f.clone())));
                }
            }
            State::Loading { waiters, .. } => {
                for w in waiters.drain(..) {
                    w.reply(ControlReply::Failed(Box::new(f.clone())));
                }
            }
            _ => {}
        }
        for job in self.queue.drain(..) {
            job.resp.reply(ControlReply::Failed(Box::new(f.clone())));
        }
    }
}
