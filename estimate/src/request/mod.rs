//! `estimate` for a `Request`: weights + KV cache + activations + overhead, the verdict
//! against the budget, and advice. `Estimate` serializes to the `inspect --json` object of
//! docs/CONTRACT.md (with more fields).
use serde::Serialize;

use crate::activation::{Activation, ActivationModel, DEFAULT_PREFILL_CHUNK};
use crate::bytes::Bytes;
use crate::calibration::{Calibration, CalibrationSource};
use crate::kv_cache::{kv_cache, KvCache};
use crate::model::{Model, WeightSource};
use crate::verdict::{Verdict, TIGHT_FRACTION};
use crate::weights::WeightParts;

mod images;
use images::{image_advice, image_plan};

/// Default context when the request gives none: the model's `max_position_embeddings`,
/// capped here. 32768 tokens covers real use on one machine; a model's 128K–1M maximum
/// would make every estimate a refusal. The cap is shown (`context_capped`).
pub const DEFAULT_CONTEXT_CAP: u64 = 32_768;

/// Context used when the config names no maximum.
pub const FALLBACK_CONTEXT: u64 = 4096;

/// Quantization bits tried, best quality first, when advising how to fit.
pub const ADVICE_BITS: [u8; 5] = [8, 6, 4, 3, 2];

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

/// The weights part of an estimate.
#[derive(Clone, Debug, Serialize)]
pub struct WeightsReport {
    /// Bytes used in the total.
    pub bytes: u64,
    /// `safetensors_header`, `index_total_size` or `config`.
    pub source: WeightSource,
    /// The checkpoint's quantization.
    pub quantization: String,
    /// When set, `bytes` is the what-if at this many bits (`--quant-bits`).
    pub quant_bits: Option<u8>,
    /// The checkpoint's own bytes (before any what-if).
    pub stored_bytes: u64,
    /// Sum over the shard headers, when present.
    pub header_bytes: Option<u64>,
    /// The index's `total_size`, when present.
    pub index_total_size: Option<u64>,
    /// The analytic figure from the config, when available.
    pub analytic_bytes: Option<u64>,
    /// Analytic bytes per component.
    pub analytic_parts: Option<WeightParts>,
    /// Vision tower and projector bytes (included in `bytes`).
    pub vision_bytes: u64,
    /// Whether `bytes` is the weights at f32 compute (`--compute`).
    pub compute_f32: bool,
    /// The weights at the checkpoint's own dtype (or the `--quant-bits` what-if).
    pub native_bytes: u64,
    /// The weights computed in f32 (upcast, or dequantized at load), when modelled.
    pub f32_bytes: Option<u64>,
}

/// Image activations (`--images`).
#[derive(Clone, Debug, Serialize)]
pub struct VisionReport {
    /// Images.
    pub images: u64,
    /// Tokens each image adds to the context.
    pub tokens_per_image: u64,
    /// Encoder activation bytes for all images.
    pub activation_bytes: u64,
    /// The image size planned and what the processor makes of it.
    pub image: Option<crate::vision::ImagePlan>,
    /// Patches the vision tower sees per image.
    pub patches_per_image: u64,
    /// All images' tokens (added to the context in the KV cache).
    pub image_tokens: u64,
    /// The KV cache bytes of those tokens (included in `kv_cache.bytes`).
    pub kv_bytes: u64,
    /// Which phase sets the peak: `vision_tower` (its activations are larger than the
    /// text's KV cache and prefill together) or `prefill`. The tower runs first and frees
    /// what it allocated: the total counts the larger, not both.
    pub peak_phase: &'static str,
}

/// The estimate: the `inspect --json` object.
#[derive(Clone, Debug, Serialize)]
pub struct Estimate {
    /// The model folder.
    pub model: String,
    /// The config's `model_type`.
    pub architecture: String,
    /// Weights.
    pub weights: WeightsReport,
    /// KV cache.
    pub kv_cache: KvCache,
    /// Activations of one prefill chunk (text and images).
    pub activation_bytes: u64,
    /// Fixed runtime overhead.
    pub overhead_bytes: u64,
    /// What loading adds for a moment on top of the weights (f32 compute: the largest
    /// matrix once more while it is transposed or dequantized; 0 otherwise).
    pub load_transient_bytes: u64,
    /// Weights + the larger of (KV cache + activations) and the load transient +
    /// overhead: the peak.
    pub total_bytes: u64,
    /// The budget compared against.
    pub budget_bytes: u64,
    /// `fits`, `tight` or `does_not_fit`.
    pub verdict: Verdict,
    /// One line for a person.
    pub advice: String,
    /// The text activation terms.
    pub activation: Activation,
    /// Image activations, when images were asked for.
    pub vision: Option<VisionReport>,
    /// The model's `max_position_embeddings`.
    pub max_position_embeddings: Option<u64>,
    /// Whether the default context was capped at [`DEFAULT_CONTEXT_CAP`].
    pub context_capped: bool,
    /// Budget fraction above which the verdict is `tight`.
    pub tight_fraction: f64,
    /// Where the activation constants come from, in words.
    pub calibration: String,
    /// `builtin` or `machine` (the calibration store of this machine).
    pub calibration_source: CalibrationSource,
    /// The coefficients used (the worker's soft guard is given the same).
    pub activation_model: ActivationModel,
    /// Activation element bytes planned for (2, or 4 at f32 compute).
    pub activation_elem_bytes: u64,
    /// A peak measured on this machine for this model at no larger context and chunk,
    /// when the total was raised to it (0 when not).
    pub floor_bytes: u64,
    /// Disagreements between sources and assumptions made.
    pub warnings: Vec<String>,
}

/// Totals for one configuration, used for the estimate and for advice searches.
struct Totals {
    kv: KvCache,
    act: Activation,
    vision_act: u64,
    tower_is_peak: bool,
    image_kv: u64,
    load_transient: u64,
    overhead: u64,
    floor: u64,
    total: u64,
}

/// Activation element bytes for `req`: 4 at f32 compute, else the model's dtype.
pub fn activation_elem_bytes(model: &Model, req: &Request) -> u64 {
    if req.compute_f32 {
        4
    } else {
        model.kv_dtype_bytes()
    }
}

fn totals(model: &Model, weights: u64, context: u64, req: &Request) -> Totals {
    let batch = req.batch.max(1);
    let kv_dtype_bytes = activation_elem_bytes(model, req);
    let image = image_plan(model, req);
    // `context` counts the text; the images' tokens come on top of it.
    let image_tokens = image.map_or(0, |p| p.tokens.saturating_mul(req.images));
    let text_context = context;
    let context = context.saturating_add(image_tokens);
    let kv = kv_cache(
        &model.kv_layers,
        context,
        batch,
        kv_dtype_bytes,
        req.kv_bits,
    );
    let image_kv = if image_tokens > 0 {
        let text = kv_cache(
            &model.kv_layers,
            text_context,
            batch,
            kv_dtype_bytes,
            req.kv_bits,
        );
        kv.bytes.saturating_sub(text.bytes)
    } else {
        0
    };
    let chunk = if req.prefill_chunk == 0 {
        DEFAULT_PREFILL_CHUNK
    } else {
        req.prefill_chunk
    };
    let coefficients = &req.calibration.model;
    let attended = crate::activation::attended_positions(&model.kv_layers, context, chunk);
    let act = coefficients.predict(&model.activation, kv_dtype_bytes, chunk, attended, batch);
    let overhead = coefficients.overhead_bytes(kv_dtype_bytes);
    let vision_act = match (&model.vision, image) {
        (Some(v), Some(p)) => coefficients.vision.predict_uniform(
            &v.tower_shape(),
            kv_dtype_bytes,
            req.images,
            p.patches,
        ),
        _ => 0,
    };
    // With images the prompt's embeddings (images spliced in) are held through the
    // prefill.
    let embeds = if image_tokens > 0 {
        context
            .saturating_mul(model.activation.hidden)
            .saturating_mul(kv_dtype_bytes)
    } else {
        0
    };
    // The f32 build's load transient is freed before the first token: the peak is the
    // larger of it and what the run adds.
    let load_transient = if req.compute_f32 {
        crate::compute::f32_load_transient_bytes(model)
    } else {
        0
    };
    // The tower runs and frees its activations before the first prefill chunk: the
    // peak is the larger phase, not both.
    let run = kv
        .bytes
        .saturating_add(act.bytes)
        .saturating_add(embeds)
        .max(vision_act);
    let total = weights
        .saturating_add(run.max(load_transient))
        .saturating_add(overhead);
    // Never below a peak measured for this model at no larger context and chunk.
    let floor = if batch == 1 && req.images == 0 && req.kv_bits.is_none() {
        req.calibration
            .floor_bytes(kv_dtype_bytes, context, act.chunk)
    } else {
        0
    };
    let tower_is_peak = vision_act > kv.bytes.saturating_add(act.bytes).saturating_add(embeds);
    Totals {
        kv,
        act,
        vision_act,
        tower_is_peak,
        image_kv,
        load_transient,
        overhead,
        floor: if floor > total { floor } else { 0 },
        total: total.max(floor),
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
    }
}

/// The largest context in `1..=upto` whose total stays within `limit`.
pub fn largest_context_within(
    model: &Model,
    req: &Request,
    weights: u64,
    upto: u64,
    limit: u64,
) -> Option<u64> {
    crate::activation::largest_fitting(upto, |c| totals(model, weights, c, req).total <= limit)
}

fn advise(
    model: &Model,
    req: &Request,
    weights: u64,
    context: u64,
    total: u64,
    verdict: Verdict,
) -> String {
    let budget = req.budget.0;
    let pct = if budget > 0 {
        total as f64 / budget as f64 * 100.0
    } else {
        f64::INFINITY
    };
    match verdict {
        Verdict::Fits => format!(
            "fits: {} of {} ({pct:.0}%) at context {context}",
            Bytes(total),
            Bytes(budget)
        ),
        Verdict::Tight => {
            let comfy = (TIGHT_FRACTION * budget as f64) as u64;
            match largest_context_within(model, req, weights, context, comfy) {
                Some(c) if c >= 256 => format!(
                    "tight: {pct:.0}% of the budget, expect slowness or swapping; --context {c} stays under {:.0}%",
                    TIGHT_FRACTION * 100.0
                ),
                _ => format!("tight: {pct:.0}% of the budget, expect slowness or swapping; a smaller quantization would help"),
            }
        }
        Verdict::DoesNotFit => {
            // f32 compute holds quantized weights dequantized: a smaller quantization
            // does not help it; the checkpoint's own dtype does.
            let native = Request {
                compute_f32: false,
                ..req.clone()
            };
            let native_weights = req
                .quant_bits
                .and_then(|b| model.weights_at_bits(b))
                .unwrap_or(model.weights.bytes);
            let native_total = totals(model, native_weights, context, &native).total;
            if req.compute_f32 && native_total <= budget {
                return format!(
                    "does not fit as f32 compute: needs {} of {}; in the checkpoint's own dtype it needs {} (--compute native)",
                    Bytes(total),
                    Bytes(budget),
                    Bytes(native_total)
                );
            }
            if let Some(c) =
                largest_context_within(model, req, weights, context, budget).filter(|&c| c >= 256)
            {
                let mut s = format!(
                    "does not fit: needs {} of {}; the largest context that fits is {c} (--context {c})",
                    Bytes(total),
                    Bytes(budget)
                );
                if req.kv_bits.is_none() {
                    let q = Request {
                        kv_bits: Some(4),
                        ..req.clone()
                    };
                    if totals(model, weights, context, &q).total <= budget {
                        s.push_str(&format!(", or keep context {context} with --kv-bits 4"));
                    }
                }
                return s;
            }
            if req.compute_f32 {
                return format!(
                    "does not fit as f32 compute: needs {} of {}, and {} in the checkpoint's own dtype: --compute native, with a smaller context or quantization (mlxsup inspect --compute native)",
                    Bytes(total),
                    Bytes(budget),
                    Bytes(native_total)
                );
            }
            let current_bits = req.quant_bits.map(u64::from);
            for bits in ADVICE_BITS {
                if current_bits.is_some_and(|b| u64::from(bits) >= b) {
                    continue;
                }
                let Some(w) = model.weights_at_bits(bits) else {
                    break;
                };
                if w >= weights {
                    continue;
                }
                let t = totals(model, w, context, req).total;
                if t <= budget {
                    return format!(
                        "does not fit: needs {} of {}; quantized to {bits}-bit it would need {} (--quant-bits {bits})",
                        Bytes(total),
                        Bytes(budget),
                        Bytes(t)
                    );
                }
                if let Some(c) =
                    largest_context_within(model, req, w, context, budget).filter(|&c| c >= 256)
                {
                    return format!(
                        "does not fit: needs {} of {}; quantized to {bits}-bit it fits up to context {c} (--quant-bits {bits} --context {c})",
                        Bytes(total),
                        Bytes(budget)
                    );
                }
            }
            format!(
                "does not fit: needs {} of {}, and no context or quantization brings it within the budget",
                Bytes(total),
                Bytes(budget)
            )
        }
    }
}
