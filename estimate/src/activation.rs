//! The activation and runtime-overhead model: what a prefill chunk or a decode step needs
//! on top of the weights and the KV cache. It is the one model of mlxsup: the preflight
//! (`estimate`), the worker's soft guard, the daemon's admission, the run summary and the
//! calibration store all call [`ActivationModel::predict`].
//!
//! The peak of one prefill chunk of `chunk` tokens against `context` cached tokens is
//!
//! ```text
//! scores   = heads × chunk × context × score_bytes     (per layer, one layer at a time)
//! mlp      = chunk × (hidden + intermediate) × mlp_bytes
//! logits   = vocab × LOGIT_BYTES                       (last position only)
//! overhead = overhead_bytes
//! ```
//!
//! times the batch, with one set of [`Coefficients`] per activation dtype class (2-byte
//! bf16/f16, 4-byte f32): the CPU backend keeps f32 scores and softmax in both, but the
//! buffers around them follow the dtype. The built-in coefficients ([`BUILTIN`]) are
//! fitted to MLX peaks the worker measured on this project's CPU machine (BENCHMARKS.md,
//! section 10); the calibration store refits them per machine from the user's own runs.
use serde::{Deserialize, Serialize};

/// Constants that are not fitted.
pub mod constants {
    /// Bytes per logit of the last position (f32).
    pub const LOGIT_BYTES: u64 = 4;
    /// mlx-lm's `prefill_step_size`: the default prefill chunk in tokens.
    pub const DEFAULT_PREFILL_CHUNK: u64 = 2048;
}

pub use constants::DEFAULT_PREFILL_CHUNK;

/// The fitted coefficients for one activation dtype class.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coefficients {
    /// Bytes live at the peak per attention score of one layer (heads × chunk × context).
    pub score_bytes: f64,
    /// Bytes live per token and per (hidden + intermediate) element.
    pub mlp_bytes: f64,
    /// Fixed runtime overhead in bytes (allocator rounding, small buffers).
    pub overhead_bytes: f64,
}

/// The activation model: coefficients for 2-byte and for 4-byte activations.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationModel {
    /// bf16 / f16 activations (and quantized weights, whose scales are bf16/f16).
    pub half: Coefficients,
    /// f32 activations (f32 checkpoints, `--compute f32`).
    pub full: Coefficients,
}

/// The built-in coefficients (see the module docs).
pub const BUILTIN: ActivationModel = ActivationModel {
    half: Coefficients {
        score_bytes: 2.152,
        mlp_bytes: 12.43,
        overhead_bytes: 2_100_000.0,
    },
    full: Coefficients {
        score_bytes: 2.152,
        mlp_bytes: 12.43,
        overhead_bytes: 2_100_000.0,
    },
};

impl Default for ActivationModel {
    fn default() -> Self {
        BUILTIN
    }
}

/// The activation dtype class of elements of `elem_bytes` bytes: `half` or `full`.
pub fn dtype_class(elem_bytes: u64) -> &'static str {
    if elem_bytes >= 4 {
        "full"
    } else {
        "half"
    }
}

impl ActivationModel {
    /// The coefficients for activations of `elem_bytes` bytes.
    pub fn coefficients(&self, elem_bytes: u64) -> &Coefficients {
        if elem_bytes >= 4 {
            &self.full
        } else {
            &self.half
        }
    }

    /// The coefficients for a dtype class (`half`, `full`), mutably.
    pub fn coefficients_mut(&mut self, elem_bytes: u64) -> &mut Coefficients {
        if elem_bytes >= 4 {
            &mut self.full
        } else {
            &mut self.half
        }
    }

    /// Activation bytes of one forward pass over `chunk` new tokens (capped at
    /// `context`) attending to `context` positions, for `batch` sequences, with
    /// activations of `elem_bytes` bytes. Excludes the runtime overhead
    /// ([`ActivationModel::overhead_bytes`]). The preflight calls it for the largest
    /// prefill chunk at the planned context; the worker's soft guard before every chunk
    /// and decode step.
    pub fn predict(
        &self,
        d: &ActivationDims,
        elem_bytes: u64,
        chunk: u64,
        context: u64,
        batch: u64,
    ) -> Activation {
        let k = self.coefficients(elem_bytes);
        let f = Features::of(d, chunk, context, batch);
        let scores = f.scores * k.score_bytes;
        let mlp = f.mlp * k.mlp_bytes;
        let (scores, mlp, logits) = (to_u64(scores), to_u64(mlp), to_u64(f.logits));
        Activation {
            scores_bytes: scores,
            mlp_bytes: mlp,
            logits_bytes: logits,
            bytes: scores.saturating_add(mlp).saturating_add(logits),
            chunk: f.chunk,
        }
    }

    /// The fixed runtime overhead for activations of `elem_bytes` bytes.
    pub fn overhead_bytes(&self, elem_bytes: u64) -> u64 {
        to_u64(self.coefficients(elem_bytes).overhead_bytes)
    }
}

/// The quantities the coefficients multiply, for one forward pass (the calibration fit
/// regresses measured peaks on them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Features {
    /// The chunk actually used (capped at the context, at least 1).
    pub chunk: u64,
    /// Attention scores of one layer: heads × chunk × context × batch.
    pub scores: f64,
    /// chunk × (hidden + intermediate) × batch.
    pub mlp: f64,
    /// Logit bytes of the last position (not fitted).
    pub logits: f64,
}

impl Features {
    /// The features of `chunk` tokens attending to `context` positions.
    pub fn of(d: &ActivationDims, chunk: u64, context: u64, batch: u64) -> Features {
        let chunk = chunk.min(context).max(1);
        let batch = batch.max(1) as f64;
        Features {
            chunk,
            scores: d.heads as f64 * chunk as f64 * context as f64 * batch,
            mlp: chunk as f64 * (d.hidden as f64 + d.intermediate as f64) * batch,
            logits: d.vocab as f64 * constants::LOGIT_BYTES as f64 * batch,
        }
    }
}

/// The dimensions the activation model needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// [`ActivationModel::predict`] with the built-in coefficients, for 2-byte activations.
pub fn activation_bytes(d: &ActivationDims, chunk: u64, context: u64, batch: u64) -> Activation {
    BUILTIN.predict(d, 2, chunk, context, batch)
}

/// The built-in fixed runtime overhead (2-byte activations).
pub fn overhead_bytes() -> u64 {
    BUILTIN.overhead_bytes(2)
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
    let k = BUILTIN.half;
    // In f64 throughout: patches² and d + inter can pass u64 for implausible inputs.
    let patches = patches as f64;
    let per_image = heads as f64 * patches * patches * k.score_bytes
        + patches * (d as f64 + inter as f64) * k.mlp_bytes;
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
