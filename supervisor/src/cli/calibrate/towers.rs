//! `calibrate --image-sizes WxH,…`: a vision-language model's tower measured on one
//! generated image of each size (a fresh worker each, as the text ladder), every run
//! recorded in the calibration store with its tower, so the vision term is refit from it.
use estimate::{ActivationModel, Bytes, Calibration, Model};
use protocol::{ChatMessage, GenerateRequest, ImageInput, Prompt, Sampling};
use serde::Serialize;

use super::{pct, CalibrateArgs};
use crate::{
    calibration::{self, Record, Store, VisionRecord},
    exit::Exit,
    plan::{self, PlanRequest},
};

/// The text context planned beside the image (the prompt is one short question).
const CONTEXT: u64 = 256;

/// One size measured.
pub struct Measured {
    pub record: Record,
    width: u32,
    height: u32,
}

/// One size in the report.
#[derive(Serialize)]
pub struct TowerPoint {
    /// The processed size the tower saw.
    pub width: u32,
    pub height: u32,
    pub patches: u64,
    /// The tower's MLX peak above what MLX held when it started.
    pub measured_bytes: u64,
    pub predicted_before: u64,
    pub error_before_pct: f64,
    /// The vision term after the refit.
    pub predicted_after: u64,
    pub error_after_pct: f64,
}

impl Measured {
    /// The report's row, with the refit vision term.
    pub fn point(&self, after: &ActivationModel) -> TowerPoint {
        let v = self.record.vision.as_ref();
        let measured = v.map_or(0, |v| v.measured_bytes);
        let predicted_before = v.map_or(0, |v| v.predicted_bytes);
        let predicted_after = v.map_or(0, |v| {
            after
                .vision
                .predict(&v.shape, self.record.elem_bytes, &v.patches)
        });
        TowerPoint {
            width: self.width,
            height: self.height,
            patches: v.map_or(0, |v| v.patches.iter().sum()),
            measured_bytes: measured,
            predicted_before,
            error_before_pct: pct(predicted_before, measured),
            predicted_after,
            error_after_pct: pct(predicted_after, measured),
        }
    }
}

/// A deterministic image of `w` × `h` (gradients and a checker).
fn image(w: u32, h: u32) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
    for y in 0..h {
        for x in 0..w {
            let c = ((x / 16) ^ (y / 16)) & 1;
            rgb.extend_from_slice(&[
                (x * 255 / w.max(2)) as u8,
                (y * 255 / h.max(2)) as u8,
                if c == 1 { 200 } else { 40 },
            ]);
        }
    }
    rgb
}

/// `--image-sizes` on a model without a vision tower: a usage error (2), before anything
/// runs.
pub fn check(model: &Model, args: &CalibrateArgs) -> Result<(), Exit> {
    if !args.image_sizes.is_empty() && model.vision.is_none() {
        eprintln!(
            "mlxsup: calibrate: --image-sizes: {} ({}) has no vision tower",
            model.dir.display(),
            model.architecture
        );
        return Err(Exit::Usage);
    }
    Ok(())
}

/// Measures the tower at each of `args.image_sizes` (none: nothing). Errors are reported
/// here: a model without a tower or a size the processor refuses is a usage error (2),
/// unreadable processor settings a bad model (5), a failed worker 4.
pub async fn measure(
    model: &Model,
    args: &CalibrateArgs,
    budget: u64,
    before: &Calibration,
    store: Option<&Store>,
) -> Result<Vec<Measured>, Exit> {
    if args.image_sizes.is_empty() {
        return Ok(Vec::new());
    }
    check(model, args)?;
    let cfg = vision::ProcessorConfig::from_model_dir(&model.dir).map_err(|e| {
        eprintln!("mlxsup: cannot read model: {e}");
        Exit::BadModel
    })?;
    let mut out = Vec::new();
    for (i, &(w, h)) in args.image_sizes.iter().enumerate() {
        // Made at the processed size, so nothing large is ever allocated.
        let (rh, rw) = vision::smart_resize(h, w, &cfg).map_err(|e| {
            eprintln!("mlxsup: calibrate: --image-sizes {w}x{h}: {e}");
            Exit::Usage
        })?;
        let rgb_bytes = rw as usize * rh as usize * 3;
        if rgb_bytes > crate::images::MAX_IMAGE_BYTES {
            eprintln!(
                "mlxsup: calibrate: --image-sizes {w}x{h}: processed to {rw}x{rh}, {rgb_bytes} bytes of RGB, over the {} one request carries",
                crate::images::MAX_IMAGE_BYTES
            );
            return Err(Exit::Usage);
        }
        let req = PlanRequest {
            context: Some(CONTEXT),
            prefill_chunk: args.prefill_chunk,
            device: args.device,
            compute: args.compute,
            kv_bits: args.kv_bits,
            images: 1,
            image_size: Some((rw, rh)),
            calibration: before.clone(),
            ..PlanRequest::new(budget)
        };
        let plan = plan::plan(model, &req);
        let compute_f32 = plan.estimate.weights.compute_f32;
        if !plan.fits() {
            eprintln!(
                "mlxsup: calibrate: an image of {rw}x{rh} does not fit the {} budget ({} needed); stopping the images here",
                Bytes(budget),
                Bytes(plan.estimate.total_bytes)
            );
            break;
        }
        eprintln!(
            "mlxsup: calibrate: image {rw}x{rh} ({}/{}): tower predicted {} ...",
            i + 1,
            args.image_sizes.len(),
            Bytes(
                plan.estimate
                    .vision
                    .as_ref()
                    .map_or(0, |v| v.activation_bytes)
            )
        );
        let gen = GenerateRequest {
            prompt: Prompt::Chat(vec![ChatMessage {
                role: "user".into(),
                content: "Describe the picture.".into(),
            }]),
            max_tokens: 1,
            sampling: Sampling::default(),
            stop: vec![],
            fault: None,
            images: vec![ImageInput {
                message: 0,
                width: rw,
                height: rh,
                rgb: image(rw, rh),
            }],
        };
        let (done, info, vision) = match super::measure_request(plan, gen).await {
            Ok((d, i, Some(v))) => (d, i, v),
            Ok(_) => {
                eprintln!("mlxsup: calibrate: image {rw}x{rh}: the worker reported no tower");
                return Err(Exit::WorkerFailed);
            }
            Err(e) => {
                eprintln!("mlxsup: calibrate: image {rw}x{rh}: {e}");
                return Err(Exit::WorkerFailed);
            }
        };
        eprintln!(
            "mlxsup: calibrate: image {rw}x{rh}: tower {} vs predicted {} ({:+.1}%)",
            Bytes(vision.activation_bytes),
            Bytes(vision.predicted_bytes),
            pct(vision.predicted_bytes, vision.activation_bytes)
        );
        let used = crate::plan::used_estimate(model, &req, &done, compute_f32);
        let machine = calibration::machine_of(&info);
        let mut record = Record::new(machine.clone(), model, &used, done.peak_bytes, "calibrate");
        record.vision = VisionRecord::of(model, &vision);
        for w in calibration::record(
            store,
            machine,
            model,
            &used,
            done.peak_bytes,
            Some(&vision),
            "calibrate",
        ) {
            eprintln!("mlxsup: warning: {w}");
        }
        out.push(Measured {
            record,
            width: rw,
            height: rh,
        });
    }
    Ok(out)
}
