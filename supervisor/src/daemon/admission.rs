//! Admission: a model is planned by the one estimator against the daemon's budget minus
//! what the other loaded models hold (each one's footprint, or its estimate if larger).
//! When it does not fit, idle models are evicted, least recently used first — never one
//! with a request in flight or queued, never a pinned one — until it does; when it still
//! does not fit, the refusal names what to unload and the context that fits.

use std::path::Path;

use estimate::{Bytes, Model, Verdict};
use protocol::{FailureKind, Remedy};
use tokio::sync::oneshot;

use super::{models::ModelCmd, Shared};
use crate::{
    plan::{self, Plan, PlanRequest},
    supervise::report,
};

/// Plans `model` within what is free, evicting idle models as needed: `wanted` says
/// what the load asks for (context, device, compute, KV bits); its budget is what is
/// free. The caller holds the admission lock.
pub async fn admit(
    shared: &Shared,
    dir: &Path,
    model: &Model,
    wanted: &PlanRequest,
    force: bool,
) -> Result<Plan, protocol::Failure> {
    let mut evicted = Vec::new();
    let mut refused: Vec<std::path::PathBuf> = Vec::new();
    let calibration = calibration_of(model, wanted.device).await;
    loop {
        let others = shared.rows_except(dir);
        let held: u64 = others.iter().map(|(_, r)| r.held_bytes).sum();
        let loaded = others.iter().filter(|(_, r)| r.held_bytes > 0).count();
        let free = shared.budget.saturating_sub(held);
        let req = PlanRequest {
            budget: free,
            calibration: calibration.clone(),
            ..wanted.clone()
        };
        let plan = plan::plan(model, &req);
        let fits = plan.fits() && loaded < shared.max_loaded;
        if fits {
            if !evicted.is_empty() {
                tracing::info!(model = %dir.display(), evicted = ?evicted, "admitted after evicting");
            }
            return Ok(plan);
        }
        // Least recently used idle model first.
        let victim = others
            .iter()
            .filter(|(s, r)| r.evictable && !refused.contains(&s.dir))
            .min_by_key(|(_, r)| r.last_used)
            .map(|(slot, _)| slot.clone());
        if let Some(victim) = victim {
            let (tx, rx) = oneshot::channel();
            if victim.cmds.send(ModelCmd::Evict { done: tx }).is_ok() && rx.await.unwrap_or(false) {
                evicted.push(victim.dir.display().to_string());
            } else {
                // It became busy meanwhile.
                refused.push(victim.dir.clone());
            }
            continue;
        }
        if force {
            return Ok(plan);
        }
        let unload: Vec<String> = others
            .iter()
            .filter(|(_, r)| r.held_bytes > 0)
            .map(|(s, _)| s.dir.display().to_string())
            .collect();
        let est = &plan.estimate;
        let why = if loaded >= shared.max_loaded && plan.fits() {
            format!(
                "{loaded} models are loaded (--max-loaded {}) and none is idle to evict",
                shared.max_loaded
            )
        } else {
            format!(
                "needs {} but {} of the daemon's {} budget is free ({} held by models in use)",
                Bytes(est.total_bytes),
                Bytes(free),
                Bytes(shared.budget),
                Bytes(held)
            )
        };
        let remedy = Remedy {
            max_context: (est.verdict == Verdict::DoesNotFit)
                .then(|| plan::largest_context(model, est, &req))
                .flatten(),
            unload,
            force: true,
            ..Remedy::default()
        };
        let mut advice = why.clone();
        if let Some(c) = remedy.max_context {
            advice.push_str(&format!("; --context {c} fits now"));
        }
        if !remedy.unload.is_empty() {
            advice.push_str(&format!("; or unload {}", remedy.unload.join(", ")));
        }
        advice.push_str(" (--force loads anyway)");
        let mut f = report::plain(
            FailureKind::InsufficientMemory,
            Some(dir.display().to_string()),
            advice,
            remedy,
        );
        f.message = Some(why);
        f.estimate_bytes = Some(est.total_bytes);
        f.budget_bytes = Some(free);
        return Err(f);
    }
}

/// The calibration store's coefficients for `model` on `device`'s backend, read off the
/// runtime (a file read and parse); the built-in ones if the read task fails.
async fn calibration_of(model: &Model, device: protocol::Device) -> estimate::Calibration {
    let model = model.clone();
    tokio::task::spawn_blocking(move || {
        let store = crate::calibration::Store::default_store();
        let backend = crate::calibration::planned_backend(device);
        crate::calibration::calibration(store.as_ref(), &model, backend).0
    })
    .await
    .unwrap_or_default()
}

/// A request with images is planned with them, at the loaded model's context (the
/// estimator call of `run --image`: the count, the largest processed size); one that does
/// not fit the budget is refused (`insufficient_memory`), with the numbers.
pub fn check_images(
    model: &Model,
    plan: &Plan,
    images: &[protocol::ImageInput],
) -> Result<(), Box<protocol::Failure>> {
    if images.is_empty() {
        return Ok(());
    }
    let est = &plan.estimate;
    let req = loaded_request(plan, images);
    let with = plan::estimate_for(
        model,
        &req,
        Some(est.kv_cache.context),
        est.weights.compute_f32,
    );
    if with.verdict == Verdict::DoesNotFit {
        return Err(Box::new(report::refusal(&with, Remedy::default())));
    }
    Ok(())
}

/// What a generation on a loaded model is estimated with: the load's prefill chunk, KV
/// bits and coefficients (not its floor), and the request's images.
pub fn loaded_request(plan: &Plan, images: &[protocol::ImageInput]) -> PlanRequest {
    let est = &plan.estimate;
    PlanRequest {
        prefill_chunk: u64::from(plan.load.prefill_chunk),
        kv_bits: plan.load.kv_bits,
        calibration: estimate::Calibration {
            model: est.activation_model,
            source: est.calibration_source,
            description: est.calibration.clone(),
            floor: Vec::new(),
        },
        images: images.len() as u64,
        image_size: largest_image(images),
        ..PlanRequest::new(est.budget_bytes)
    }
}

/// The largest image by pixels, (width, height): the size every image is planned at.
pub fn largest_image(images: &[protocol::ImageInput]) -> Option<(u32, u32)> {
    images
        .iter()
        .max_by_key(|i| u64::from(i.width) * u64::from(i.height))
        .map(|i| (i.width, i.height))
}
