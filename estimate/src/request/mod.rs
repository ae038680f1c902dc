//! `estimate` for a `Request`: weights + KV cache + activations + overhead, the verdict
//! against the budget, and advice. `Estimate` serializes to the `inspect --json` object of
//! docs/CONTRACT.md (with more fields).
//!
//! The report types are in `report`, the bytes of one configuration in `totals`, the
//! advice and its searches in `advice`, and the images' part in `images`.

use crate::activation::DEFAULT_PREFILL_CHUNK;
use crate::bytes::Bytes;
use crate::calibration::Calibration;
use crate::model::Model;
use crate::verdict::{Verdict, TIGHT_FRACTION};

mod advice;
mod images;
mod report;
mod totals;
use advice::advise;
pub use advice::{largest_context_within, ADVICE_BITS};
use images::{image_advice, image_plan};
pub use report::{Estimate, VisionReport, WeightsReport};
pub use totals::activation_elem_bytes;
use totals::totals;

/// Default context when the request gives none: the model's `max_position_embeddings`,
/// capped here. 32768 tokens covers real use on one machine; a model's 128K–1M maximum
/// would make every estimate a refusal. The cap is shown (`context_capped`).
pub const DEFAULT_CONTEXT_CAP: u64 = 32_768;

/// Context used when the config names no maximum.
pub const FALLBACK_CONTEXT: u64 = 4096;

/// What is being asked.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Context tokens; `None` = the model's maximum capped at [`DEFAULT_CONTEXT_CAP`].
    pub context: Option<u64>,
    /// Sequences generated together.
    pub batch: u64,
    /// Quantized KV cache bits (4 or 8), or `None` for the model dtype.
    pub kv_bits: Option<u8>,
    /// Images in the prompt.
    pub images: u64,
    /// Their size (width, height); `None` = [`crate::vision::DEFAULT_IMAGE_SIZE`]. On the
    /// Qwen2-VL family the processor's smart resize of this size decides the patches and
    /// tokens planned.
    pub image_size: Option<(u32, u32)>,
    /// What-if: weights quantized with MLX affine at this many bits (group 64).
    pub quant_bits: Option<u8>,
    /// Prefill chunk in tokens.
    pub prefill_chunk: u64,
    /// Bytes the model may use.
    pub budget: Bytes,
    /// Plan for f32 compute (the worker's CPU policy): weights upcast or dequantized, the
    /// KV cache in f32.
    pub compute_f32: bool,
    /// The activation coefficients and the measured floor (built-in by default).
    pub calibration: Calibration,
}

impl Default for Request {
    fn default() -> Request {
        Request {
            context: None,
            batch: 1,
            kv_bits: None,
            images: 0,
            image_size: None,
            quant_bits: None,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            budget: Bytes(0),
            compute_f32: false,
            calibration: Calibration::default(),
        }
    }
}

/// Estimates `model` under `req`.
pub fn estimate(model: &Model, req: &Request) -> Estimate {
    let (default_context, capped) = match model.max_position_embeddings {
        Some(m) if m > DEFAULT_CONTEXT_CAP => (DEFAULT_CONTEXT_CAP, true),
        Some(m) if m > 0 => (m, false),
        _ => (FALLBACK_CONTEXT, false),
    };
    let context = req.context.unwrap_or(default_context).max(1);
    let mut warnings = model.warnings.clone();
    if let (Some(c), Some(m)) = (req.context, model.max_position_embeddings) {
        if c > m {
            warnings.push(format!(
                "context {c} is beyond the model's max_position_embeddings {m}"
            ));
        }
    }
    let what_if = req
        .quant_bits
        .and_then(|b| model.weights_at_bits(b).map(|w| (b, w)));
    if req.quant_bits.is_some() && what_if.is_none() {
        warnings.push("--quant-bits ignored: the config cannot be modelled".to_string());
    }
    let native = what_if.map_or(model.weights.bytes, |(_, w)| w);
    let f32_bytes = crate::compute::f32_weight_bytes(model);
    let weights = match f32_bytes {
        Some(w) if req.compute_f32 => w,
        _ => native,
    };
    let t = totals(model, weights, context, req);
    let budget = req.budget.0;
    let verdict = Verdict::of(t.total, budget);
    let mut advice = advise(model, req, weights, context, t.total, verdict);
    if verdict == Verdict::DoesNotFit {
        if let Some(a) = image_advice(model, req, weights, context, budget) {
            advice.push_str(&a);
        }
    }
    let image = image_plan(model, req);
    if let (Some(v), Some(size)) = (&model.vision, req.image_size.filter(|_| req.images > 0)) {
        if let Err(e) = crate::vision::plan_image(v, Some(size)) {
            warnings.push(format!("{e}; planned at the default size instead"));
        } else if v.qwen.is_none() {
            warnings.push(format!(
                "--image-size is not modelled for `{}`: its fixed {} tokens per image are planned",
                model.architecture, v.tokens_per_image
            ));
        }
    }
    let vision = (req.images > 0).then(|| VisionReport {
        images: req.images,
        tokens_per_image: image.map_or(0, |p| p.tokens),
        activation_bytes: t.vision_act,
        image,
        patches_per_image: image.map_or(0, |p| p.patches),
        image_tokens: image.map_or(0, |p| p.tokens.saturating_mul(req.images)),
        kv_bytes: t.image_kv,
        peak_phase: if t.tower_is_peak {
            "vision_tower"
        } else {
            "prefill"
        },
    });
    if req.images > 0 && model.vision.is_none() {
        warnings.push("--images given but the model has no vision tower".to_string());
    }
    Estimate {
        model: model.dir.display().to_string(),
        architecture: model.architecture.clone(),
        weights: WeightsReport {
            bytes: weights,
            source: model.weights.source,
            quantization: model.quantization.describe(),
            quant_bits: what_if.map(|(b, _)| b),
            stored_bytes: model.weights.bytes,
            header_bytes: model.weights.header_bytes,
            index_total_size: model.weights.index_total_size,
            analytic_bytes: model.weights.analytic_bytes,
            analytic_parts: model.weights.analytic_parts.clone(),
            vision_bytes: model.weights.vision_bytes,
            compute_f32: req.compute_f32,
            native_bytes: native,
            f32_bytes,
        },
        kv_cache: t.kv,
        activation_bytes: t.act.bytes.saturating_add(t.vision_act),
        overhead_bytes: t.overhead,
        load_transient_bytes: t.load_transient,
        total_bytes: t.total,
        budget_bytes: budget,
        verdict,
        advice,
        activation: t.act,
        vision,
        max_position_embeddings: model.max_position_embeddings,
        context_capped: capped && req.context.is_none(),
        tight_fraction: TIGHT_FRACTION,
        calibration: req.calibration.description.clone(),
        calibration_source: req.calibration.source,
        activation_model: req.calibration.model,
        activation_elem_bytes: activation_elem_bytes(model, req),
        floor_bytes: t.floor,
        warnings,
        worker_runs: model.config.description().worker_runs(),
    }
}
