//! The bytes of one configuration (weights, KV cache, activations, the load transient,
//! overhead, the measured floor) and their total, used for the estimate and for advice.

use crate::activation::{Activation, DEFAULT_PREFILL_CHUNK};
use crate::kv_cache::{kv_cache, KvCache};
use crate::model::Model;

use super::{image_plan, Request};

/// Totals for one configuration, used for the estimate and for advice searches.
pub(super) struct Totals {
    pub(super) kv: KvCache,
    pub(super) act: Activation,
    pub(super) vision_act: u64,
    pub(super) tower_is_peak: bool,
    pub(super) image_kv: u64,
    pub(super) load_transient: u64,
    pub(super) overhead: u64,
    pub(super) floor: u64,
    pub(super) total: u64,
}

/// Activation element bytes for `req`: 4 at f32 compute, else the model's dtype.
pub fn activation_elem_bytes(model: &Model, req: &Request) -> u64 {
    if req.compute_f32 {
        4
    } else {
        model.kv_dtype_bytes()
    }
}

pub(super) fn totals(model: &Model, weights: u64, context: u64, req: &Request) -> Totals {
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
    let text = kv.bytes.saturating_add(act.bytes).saturating_add(embeds);
    let tower_is_peak = vision_act > text;
    let run = text.max(vision_act);
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
