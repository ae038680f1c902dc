//! The activation and runtime-overhead model: what a prefill chunk needs on top of the
//! weights and the KV cache. All constants live here, in [`constants`].
//!
//! The peak of one prefill chunk of `chunk` tokens against `context` cached tokens is
//!
//! ```text
//! scores  = heads × chunk × context × SCORE_BYTES × SCORE_LIVE_FRACTION   (per layer, one layer at a time)
//! mlp     = chunk × (hidden + intermediate) × MLP_BYTES_PER_ELEMENT
//! logits  = vocab × LOGIT_BYTES                                            (last position only)
//! overhead = RUNTIME_OVERHEAD_BYTES
//! ```
//!
//! times the batch. mlx-lm evaluates only the cache during prefill, so the output head
//! runs for the last position only. The constants are fitted to the three peaks measured
//! with mlx-lm 0.32.2 on the CPU backend (DESIGN.md: a bf16 qwen2 with 16 heads, 4 KV
//! heads of 64, 16 layers, hidden 1024, intermediate 2816, vocab 32000, 492 MB of
//! weights: prompt 128 → 503 MB, 1024 → 596 MB, 2048 → 770 MB); the model reproduces them
//! within 1% (see the tests). A later issue recalibrates them from peaks the worker
//! measures on more models and on Metal.
use serde::Serialize;

/// Every constant of the activation model, in one place.
pub mod constants {
    /// Bytes per attention score: the CPU backend computes scores in f32.
    pub const SCORE_BYTES: f64 = 4.0;
    /// Fraction of one layer's f32 score matrix live at the peak (fitted: 0.538).
    pub const SCORE_LIVE_FRACTION: f64 = 0.538;
    /// Bytes live per token and per (hidden + intermediate) element in the MLP and
    /// residual stream (fitted: 12.43, about three f32 or six bf16 buffers).
    pub const MLP_BYTES_PER_ELEMENT: f64 = 12.43;
    /// Bytes per logit of the last position (f32).
    pub const LOGIT_BYTES: u64 = 4;
    /// Fixed runtime overhead: MLX allocator headroom, small buffers (fitted: 2.1 MB).
    pub const RUNTIME_OVERHEAD_BYTES: u64 = 2_100_000;
    /// mlx-lm's `prefill_step_size`: the default prefill chunk in tokens.
    pub const DEFAULT_PREFILL_CHUNK: u64 = 2048;
}

pub use constants::DEFAULT_PREFILL_CHUNK;

/// The dimensions the activation model needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ActivationDims {
    /// Query heads.
    pub heads: u64,
    /// Hidden size.
    pub hidden: u64,
    /// Intermediate width per token (dense MLP, or top-k × expert width for MoE).
    pub intermediate: u64,
    /// Vocabulary size.
    pub vocab: u64,
}

/// The activation estimate, per term.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Activation {
    /// Attention scores of one layer.
    pub scores_bytes: u64,
    /// MLP intermediates and residual stream.
    pub mlp_bytes: u64,
    /// Logits of the last position.
    pub logits_bytes: u64,
    /// Sum of the three.
    pub bytes: u64,
    /// The prefill chunk used, in tokens.
    pub chunk: u64,
}

/// Activation bytes of one prefill chunk of `chunk` tokens (capped at `context`) attending
/// to `context` tokens, for `batch` sequences. Excludes [`constants::RUNTIME_OVERHEAD_BYTES`],
/// which [`overhead_bytes`] reports.
pub fn activation_bytes(d: &ActivationDims, chunk: u64, context: u64, batch: u64) -> Activation {
    use constants::*;
    let chunk = chunk.min(context).max(1);
    let batch = batch.max(1) as f64;
    let scores =
        d.heads as f64 * chunk as f64 * context as f64 * SCORE_BYTES * SCORE_LIVE_FRACTION * batch;
    let mlp = chunk as f64 * (d.hidden + d.intermediate) as f64 * MLP_BYTES_PER_ELEMENT * batch;
    let logits = d.vocab as f64 * LOGIT_BYTES as f64 * batch;
    let (scores, mlp, logits) = (to_u64(scores), to_u64(mlp), to_u64(logits));
    Activation {
        scores_bytes: scores,
        mlp_bytes: mlp,
        logits_bytes: logits,
        bytes: scores.saturating_add(mlp).saturating_add(logits),
        chunk,
    }
}

/// The fixed runtime overhead.
pub fn overhead_bytes() -> u64 {
    constants::RUNTIME_OVERHEAD_BYTES
}

/// The largest prefill chunk (≤ `max_chunk`) whose activations fit in `bytes`, for a
/// worker that shrinks its chunk to stay within a budget; `None` if not even one token fits.
pub fn largest_chunk_within(
    d: &ActivationDims,
    bytes: u64,
    context: u64,
    batch: u64,
    max_chunk: u64,
) -> Option<u64> {
    let fits = |c: u64| activation_bytes(d, c, context, batch).bytes <= bytes;
    largest_fitting(max_chunk.max(1), fits)
}

/// The largest `x` in `1..=upto` for which `fits(x)` holds, `fits` being monotone
/// (true up to some point, false after); `None` when even 1 does not fit.
pub fn largest_fitting(upto: u64, fits: impl Fn(u64) -> bool) -> Option<u64> {
    if upto == 0 || !fits(1) {
        return None;
    }
    if fits(upto) {
        return Some(upto);
    }
    let (mut lo, mut hi) = (1, upto);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// Activations of the vision encoder for `images` images of `patches` patches each, with
/// encoder width `d`, MLP width `inter` and `heads` heads (full attention per image).
pub fn vision_activation_bytes(images: u64, patches: u64, d: u64, inter: u64, heads: u64) -> u64 {
    use constants::*;
    // In f64 throughout: patches² and d + inter can pass u64 for implausible inputs.
    let patches = patches as f64;
    let per_image = heads as f64 * patches * patches * SCORE_BYTES * SCORE_LIVE_FRACTION
        + patches * (d as f64 + inter as f64) * MLP_BYTES_PER_ELEMENT;
    to_u64(per_image * images as f64)
}

fn to_u64(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        x.min(u64::MAX as f64) as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three peaks of DESIGN.md, reproduced within 1%.
    #[test]
    fn reproduces_the_measured_peaks() {
        let d = ActivationDims {
            heads: 16,
            hidden: 1024,
            intermediate: 2816,
            vocab: 32000,
        };
        let weights = 492_000_000u64;
        for (prompt, peak) in [(128u64, 503e6), (1024, 596e6), (2048, 770e6)] {
            let kv = 16 * 2 * 4 * 64 * 2 * prompt;
            let total = weights
                + kv
                + activation_bytes(&d, DEFAULT_PREFILL_CHUNK, prompt, 1).bytes
                + overhead_bytes();
            let err = (total as f64 - peak) / peak;
            assert!(
                err.abs() < 0.01,
                "prompt {prompt}: {total} vs {peak} ({:.2}%)",
                err * 100.0
            );
        }
    }

    #[test]
    fn smaller_chunks_need_less() {
        let d = ActivationDims {
            heads: 32,
            hidden: 4096,
            intermediate: 14336,
            vocab: 128256,
        };
        let big = activation_bytes(&d, 2048, 32768, 1).bytes;
        let small = activation_bytes(&d, 512, 32768, 1).bytes;
        assert!(small < big / 3);
        let c = largest_chunk_within(&d, small, 32768, 1, 2048);
        assert_eq!(c, Some(512));
        assert_eq!(largest_chunk_within(&d, 10, 32768, 1, 2048), None);
    }
}
