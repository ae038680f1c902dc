//! The load and generate handlers: a model loaded under MLX's limits, a generation
//! run on it through the step hooks.

use std::{path::Path, sync::atomic::Ordering, time::Instant};

use protocol::{
    DoneInfo, Fault, FaultPoint, GenerateRequest, LoadInfo, LoadRequest, Phase, Reply, RequestId,
    WorkerError, WorkerErrorKind,
};

use super::{errors::mlx_error, hooks::StepHooks, Worker};
use crate::{
    engine::{Engine, LoadOptions},
    mlx_info,
};

impl Worker {
    pub(super) fn load(&mut self, id: RequestId, req: LoadRequest) -> Reply {
        self.engine = None;
        let _ = mlx_rs::memory::clear_cache();
        mlx_info::use_device(req.device);
        if let Err(e) = apply_limits(&req) {
            return Reply::Error(e);
        }
        self.link.interval_ms.store(
            u64::from(req.telemetry_interval_ms.max(1)),
            Ordering::SeqCst,
        );
        let started = Instant::now();
        self.link.set_phase(Phase::Load);
        let result = (|| {
            if let Some(Fault {
                action,
                point: FaultPoint::Load,
            }) = req.fault
            {
                self.trigger(action)?;
            }
            let opts = LoadOptions {
                prefill_chunk: (req.prefill_chunk as usize).max(1),
                f32: req.compute == protocol::ComputeDtype::F32,
                matmul_lanes: 0,
                kv_bits: req.kv_bits,
                prefix_cache: req.prefix_cache,
            };
            let mut hooks = StepHooks {
                link: &self.link,
                control: &self.control,
                id,
                fault: None,
                soft_budget: None,
                delivered: 0,
            };
            let mut engine = Engine::load(Path::new(&req.model_dir), &opts, &mut hooks)?;
            engine.set_activation_model(crate::engine::activation_model(req.activation.as_deref()));
            Ok(engine)
        })();
        self.link.set_phase(Phase::Idle);
        match result {
            Ok(engine) => {
                let info = LoadInfo {
                    architecture: engine.architecture().to_string(),
                    load_ms: started.elapsed().as_millis() as u64,
                    weight_bytes: engine.weight_bytes(),
                    active_bytes: mlx_rs::memory::active_memory().unwrap_or(0) as u64,
                    peak_bytes: crate::peak::peak(),
                    vocab_size: engine.vocab_size(),
                    device: mlx_info::device_name(),
                    compute_dtype: engine.compute_dtype(),
                    mlx_version: mlx_info::mlx_version(),
                    backend: mlx_info::backend_of(&mlx_info::device_name()),
                };
                self.engine = Some(engine);
                self.load = Some(req);
                Reply::Loaded(info)
            }
            Err(e) => Reply::Error(mlx_error(e)),
        }
    }

    pub(super) fn generate(&mut self, id: RequestId, req: GenerateRequest) -> Reply {
        let Some(engine) = self.engine.as_mut() else {
            return Reply::Error(WorkerError {
                kind: WorkerErrorKind::BadRequest,
                message: "no model is loaded".into(),
            });
        };
        let load = self.load.as_ref();
        let mut hooks = StepHooks {
            link: &self.link,
            control: &self.control,
            id,
            fault: req.fault.or(load.and_then(|l| l.fault)),
            soft_budget: load.and_then(|l| l.limits.soft_budget),
            delivered: 0,
        };
        let result = engine.generate(&req, &mut hooks);
        self.link.set_phase(Phase::Idle);
        match result {
            Ok(done) => Reply::Done(DoneInfo {
                peak_bytes: done.peak_bytes.max(crate::peak::peak()),
                ..done
            }),
            Err(e) => {
                let _ = mlx_rs::memory::clear_cache();
                Reply::Error(mlx_error(e))
            }
        }
    }
}

/// Sets MLX's limits before the model's first allocation.
fn apply_limits(req: &LoadRequest) -> Result<(), WorkerError> {
    let err = |what: &str, e: mlx_rs::error::Exception| WorkerError {
        kind: WorkerErrorKind::Internal,
        message: format!("setting MLX's {what}: {e}"),
    };
    let l = &req.limits;
    if let Some(v) = l.memory_limit {
        mlx_rs::memory::set_memory_limit(v as usize).map_err(|e| err("memory limit", e))?;
    }
    if let Some(v) = l.cache_limit {
        mlx_rs::memory::set_cache_limit(v as usize).map_err(|e| err("cache limit", e))?;
    }
    if let (Some(v), "metal") = (l.wired_limit, mlx_info::BACKEND) {
        mlx_rs::memory::set_wired_limit(v as usize).map_err(|e| err("wired limit", e))?;
    }
    Ok(())
}
