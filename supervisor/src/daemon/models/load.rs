//! The load path: the load task (admit, spawn, load) started off the actor, its
//! outcome taken in, and the worker's unload.

use std::{path::PathBuf, sync::Arc};

use protocol::{
    control::{ControlEvent, ControlReply},
    FailureKind, Reply, Request,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{
    super::admission, Actor, Live, LoadSettings, Loadable, Loaded, Responder, Shared, State,
};
use crate::supervise::{report, End, SpawnError, WorkerHandle};

impl Actor {
    /// Starts the load task: `events` gets its events (the first queued request's or the
    /// `load` request's), `waiters` its answer.
    pub(super) fn start_load(&mut self, events: Option<Responder>, waiters: Vec<Responder>) {
        let (tx, rx) = oneshot::channel();
        let settings = self.next_load.clone();
        // An injected fault is for one attempt, as a real transient failure would be.
        self.next_load.fault = None;
        let shared = Arc::clone(&self.shared);
        let dir = self.dir.clone();
        let abandon = CancellationToken::new();
        self.state = State::Loading {
            rx,
            waiters,
            abandon: abandon.clone(),
        };
        tokio::spawn(async move {
            let _ = tx.send(load(shared, dir, settings, events, abandon).await);
        });
    }

    /// The load task ended: loaded, refused, failed, or the model unreadable.
    pub(super) async fn loaded(&mut self, l: Loaded, waiters: Vec<Responder>) {
        match l {
            Loaded::Ok {
                worker,
                plan,
                info,
                text,
            } => {
                tracing::info!(
                    model = %self.dir.display(),
                    pid = worker.pid(),
                    context = plan.estimate.kv_cache.context,
                    load_ms = info.load_ms,
                    "loaded"
                );
                if let Some(j) = self.queue.front() {
                    j.resp.event(ControlEvent::Loaded((*info).clone()));
                }
                self.state = State::Loaded(Box::new(Live {
                    status: worker.status(),
                    worker,
                    plan: *plan,
                    loadable: text,
                    machine: crate::calibration::machine_of(&info),
                    device: info.device.clone(),
                    recorded_peak: None,
                    keep_until: None,
                    current: None,
                    prefix: Default::default(),
                }));
                self.touch();
                let status = self.status();
                for w in waiters {
                    w.reply(ControlReply::Loaded(Box::new(status.clone())));
                }
            }
            Loaded::Refused(f) => {
                self.state = State::Unloaded;
                self.fail_waiting(&f, waiters);
            }
            Loaded::BadModel(m) => {
                self.state = State::Unloaded;
                for w in waiters {
                    w.reply(ControlReply::BadRequest { message: m.clone() });
                }
                for job in self.queue.drain(..) {
                    job.resp
                        .reply(ControlReply::BadRequest { message: m.clone() });
                }
            }
            Loaded::Failed(f) => self.died(*f, None, waiters).await,
        }
    }

    /// Stops the worker, if one is loaded (with no generation left on it), or abandons
    /// the load in flight (its task stops the worker it started); unloaded.
    pub(super) async fn unload_worker(&mut self) {
        match std::mem::replace(&mut self.state, State::Unloaded) {
            State::Loaded(live) => {
                live.worker.shutdown().await;
            }
            State::Loading { abandon, .. } => abandon.cancel(),
            _ => {}
        }
    }
}

/// Admits, spawns and loads the model (a task of its own, so the actor stays responsive).
async fn load(
    shared: Arc<Shared>,
    dir: PathBuf,
    settings: LoadSettings,
    events: Option<Responder>,
    abandon: CancellationToken,
) -> Loaded {
    // The model's files are read off the runtime (shard headers, the tokenizer and its
    // template, parsed): a large or slow folder never holds up the daemon's other work.
    let read = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            let model = crate::plan::open_runnable(&dir)?;
            // What a worker would load and can be checked without MLX, before one is
            // spawned.
            let text =
                text::check_loadable(&model).map_err(|e| format!("cannot read model: {e}"))?;
            Ok::<_, String>((model, text))
        })
        .await
    };
    let (model, text) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => return Loaded::BadModel(e),
        Err(e) => return Loaded::BadModel(format!("reading the model failed: {e}")),
    };
    // One admission at a time, held through the load: what it admits is then counted.
    let _admitting = shared.admission.lock().await;
    let wanted = crate::plan::PlanRequest {
        context: settings.context,
        device: settings.device,
        compute: settings.compute,
        kv_bits: settings.kv_bits,
        prefix_cache: crate::plan::PrefixCache::from_wire(
            settings.prefix_cache,
            shared.prefix_cache,
        ),
        ..crate::plan::PlanRequest::new(0)
    };
    let plan = match admission::admit(&shared, &dir, &model, &wanted, settings.force).await {
        Ok(p) => p,
        Err(f) => return Loaded::Refused(Box::new(f)),
    };
    let mut plan = plan;
    plan.load.fault = settings.fault;
    plan.load.device = settings.device;
    if let (Some(r), Ok(json)) = (&events, serde_json::to_string(&plan.estimate)) {
        match protocol::estimate::Estimate::from_report(json) {
            Ok(est) => r.event(ControlEvent::Estimate(Box::new(est))),
            Err(e) => tracing::warn!("the estimate event is not sent: {e}"),
        }
    }
    if let (Some(r), Some(note)) = (&events, &plan.compute_note) {
        r.event(ControlEvent::Note(note.clone()));
    }
    if abandon.is_cancelled() {
        return Loaded::BadModel("the load was abandoned".into());
    }
    tracing::info!(model = %dir.display(), estimate = plan.estimate.total_bytes, "spawning a worker");
    let worker = match WorkerHandle::spawn(plan.spawn.clone(), plan.report.clone()).await {
        Ok(w) => w,
        Err(SpawnError::Failed(f)) => return Loaded::Failed(f),
        Err(SpawnError::Setup(m)) => {
            let mut f = report::plain(
                FailureKind::Exited,
                Some(dir.display().to_string()),
                format!("the daemon could not start a worker: {m}"),
                Default::default(),
            );
            f.message = Some(m);
            return Loaded::Failed(Box::new(f));
        }
    };
    let end = worker
        .call(Request::Load(plan.load.clone()), abandon.clone(), |ev| {
            if let Some(r) = &events {
                r.event(ControlEvent::Worker(ev.clone()));
            }
        })
        .await;
    match end {
        End::Reply(Reply::Loaded(info)) => Loaded::Ok {
            worker,
            plan: Box::new(plan),
            info: Box::new(info),
            text: Box::new(Loadable { model, text }),
        },
        End::Died(f) => Loaded::Failed(f),
        End::Error { failure, .. } => {
            worker.shutdown().await;
            Loaded::Failed(failure)
        }
        End::Cancelled | End::Reply(_) => {
            worker.shutdown().await;
            Loaded::BadModel("the worker did not load the model".into())
        }
    }
}
