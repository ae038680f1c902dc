//! The actor's commands: generate (queue it), load, unload, evict and shutdown.

use protocol::{
    control::{ControlReply, ModelState},
    FailureKind,
};

use super::{Actor, LoadSettings, ModelCmd};
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
                    if self.worker.is_none() && self.loading.is_none() {
                        self.next_load = LoadSettings {
                            context: job.req.context,
                            force: job.req.force,
                            fault: None,
                            device: job.req.device,
                            compute: job.req.compute,
                            kv_bits: job.req.kv_bits,
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
                } else if self.worker.is_some() && self.loading.is_none() {
                    resp.reply(ControlReply::Loaded(Box::new(self.status())));
                } else {
                    if self.loading.is_none() {
                        self.next_load = LoadSettings {
                            context: req.context,
                            force: req.force,
                            fault: req.fault,
                            device: req.device,
                            compute: req.compute,
                            kv_bits: req.kv_bits,
                        };
                        self.backoff_until = None;
                        self.start_load(Some(resp.clone()));
                    }
                    self.load_waiters.push(resp);
                }
            }
            ModelCmd::Unload { resp } => {
                // The requests it was serving fail `unloaded`: their clients did not
                // cancel them, and sending them again loads the model again.
                let f = report::plain(
                    FailureKind::Unloaded,
                    Some(self.dir.display().to_string()),
                    String::new(),
                    Default::default(),
                );
                let f = protocol::Failure {
                    message: Some("the model was unloaded (mlxsup unload)".into()),
                    advice: crate::classify::advice(FailureKind::Unloaded, &Default::default()),
                    ..f
                };
                if let Some(c) = self.current.take() {
                    c.cancel.cancel();
                    c.resp.reply(ControlReply::Failed(Box::new(f.clone())));
                }
                for job in self.queue.drain(..) {
                    job.resp.reply(ControlReply::Failed(Box::new(f.clone())));
                }
                self.unload_worker().await;
                self.clear_failures();
                self.state = ModelState::Unloaded;
                resp.reply(ControlReply::Unloaded(Box::new(self.status())));
            }
            ModelCmd::Evict { done } => {
                let ok = self.evictable();
                if ok {
                    tracing::info!(model = %self.dir.display(), "evicted to make room");
                    self.unload_worker().await;
                    self.state = ModelState::Unloaded;
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
                if let Some(c) = self.current.take() {
                    c.cancel.cancel();
                    c.resp.reply(ControlReply::Failed(Box::new(f.clone())));
                }
                for job in self.queue.drain(..) {
                    job.resp.reply(ControlReply::Failed(Box::new(f.clone())));
                }
                for w in self.load_waiters.drain(..) {
                    w.reply(ControlReply::Failed(Box::new(f.clone())));
                }
                self.unload_worker().await;
                self.state = ModelState::Unloaded;
                self.publish();
                let _ = done.send(());
                return true;
            }
        }
        false
    }
}
