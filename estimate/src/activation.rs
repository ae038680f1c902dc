//! The activation and runtime-overhead model: what a prefill chunk or a decode step needs
//! on top of the weights and the KV cache. It is the one model of mlxsup: the preflight
//! (`estimate`), the worker's soft guard, the daemon's admission, the run summary and the
//! calibration store all call [`ActivationModel::predict`].
//!
//! The peak of one prefill chunk of `chunk` tokens against `context` cached tokens is
//!
//! ```text
//! scores   = heads × chunk × attended × score_bytes    (per layer, one layer at a time)
//! mlp      = chunk × (hidden + intermediate) × mlp_bytes
//! mask     = chunk × attended × mask_bytes             (sliding window, past the window)
//! logits   = vocab × LOGIT_BYTES                       (last position only)
//! overhead = overhead_bytes
//! ```
//!
//! `attended` is the context, or behind a sliding window what the rotating cache holds
//! ([`attended_positions`]); past the window the mask is an explicit boolean array.
//!
//! times the batch, with one set of [`Coefficients`] per activation dtype class (2-byte
//! bf16/f16, 4-byte f32): the CPU backend keeps f32 scores and softmax in both, but the
//! buffers around them follow the dtype. The built-in coefficients ([`BUILTIN`]) are
//! fitted to MLX peaks the worker measured on this project's CPU machine (BENCHMARKS.md,
//! section 10); the calibration store refits them per machine from the user's own runs.
//! (They replace the first constants, fitted to three mlx-lm peaks of one bf16 qwen2,
//! which under-predicted the worker's f32-compute peaks by up to 40%.)
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
    /// Bytes per element of an explicit attention mask (chunk × attended), built when a
    /// sliding window is passed.
    #[serde(default)]
    pub mask_bytes: f64,
    /// Fixed runtime overhead in bytes (allocator rounding, small buffers).
    pub overhead_bytes: f64,
}

/// The activation model: coefficients for 2-byte and for 4-byte activations, and the
/// vision tower's.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationModel {
    /// bf16 / f16 activations (and quantized weights, whose scales are bf16/f16).
    pub half: Coefficients,
    /// f32 activations (f32 checkpoints, `--compute f32`).
    pub full: Coefficients,
    /// A vision-language model's tower ([`crate::vision_activation`]).
    #[serde(default)]
    pub vision: crate::vision_activation::VisionModel,
}

/// The built-in coefficients: a least-squares fit (weighted by 1/peak) to the 92 MLX
/// peaks of BENCHMARKS.md §10 (llama, mistral past its window, qwen2, qwen3 in bf16, f32,
/// 4-bit and 8-bit, contexts 128–8192, chunks 512 and 2048, and SmolLM2-135M; worker on
/// MLX 0.32.2's CPU backend; the larger peak of two sweeps), then the score, MLP and mask
/// terms raised 1.5% and the bf16 overhead 650 kB: the margin with the lowest median error
/// that leaves no measured peak under-predicted by more than 2%. The f32 class saw no
/// sliding-window run: its mask term is the bf16 one (the mask is boolean either way).
pub const BUILTIN: ActivationModel = ActivationModel {
    half: Coefficients {
        score_bytes: 2.347,
        mlp_bytes: 16.52,
        mask_bytes: 1.69,
        overhead_bytes: 842_000.0,
    },
    full: Coefficients {
        score_bytes: 4.583,
        mlp_bytes: 20.71,
        mask_bytes: 1.69,
        overhead_bytes: 483_000.0,
    },
    vision: crate::vision_activation::BUILTIN_VISION,
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
    /// `attended`) attending to `attended` positions behind a sliding `window` (or none),
    /// for `batch` sequences, with activations of `elem_bytes` bytes. Excludes the runtime
    /// overhead ([`ActivationModel::overhead_bytes`]). The preflight calls it for the
    /// largest prefill chunk at the planned context; the worker's soft guard before every
    /// chunk and decode step.
    pub fn predict(
        &self,
        d: &ActivationDims,
        elem_bytes: u64,
        chunk: u64,
        attended: Attended,
        batch: u64,
    ) -> Activation {
        let k = self.coefficients(elem_bytes);
        let f = Features::of(d, chunk, attended, batch);
        let scores = f.scores * k.score_bytes + f.mask * k.mask_bytes;
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

/// What a forward pass attends to: `positions` keys, behind a sliding `window` when every
/// attention layer has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attended {
    /// Keys each query sees at most (cached + new).
    pub positions: u64,
    /// The sliding window, when every attention layer keeps one.
    pub window: Option<u64>,
}

impl Attended {
    /// Full attention over `positions`.
    pub fn full(positions: u64) -> Attended {
        Attended {
            positions,
            window: None,
        }
    }

    /// Whether the mask is an explicit array (past the window).
    pub fn masked(&self) -> bool {
        self.window.is_some_and(|w| self.positions > w)
    }
}

/// The sliding window when every attention layer keeps one (the largest), else `None`.
pub fn attention_window(layers: &[crate::kv_cache::LayerKv]) -> Option<u64> {
    use crate::kv_cache::LayerKv;
    let mut window: Option<u64> = None;
    for l in layers {
        match *l {
            LayerKv::Sliding { window: w, .. } => window = Some(window.unwrap_or(0).max(w)),
            LayerKv::Full { .. } | LayerKv::Mla { .. } => return None,
            LayerKv::State { .. } => {}
        }
    }
    window
}

/// What the last prefill chunk of `chunk` tokens attends to at `context`: all positions,
/// unless every attention layer keeps a sliding window, whose rotating cache holds
/// `window − 1` old positions next to the chunk (as mlx-lm's `RotatingKVCache`). The
/// worker computes the same from its caches.
pub fn attended_positions(
    layers: &[crate::kv_cache::LayerKv],
    context: u64,
    chunk: u64,
) -> Attended {
    let chunk = chunk.min(context).max(1);
    match attention_window(layers) {
        Some(w) => Attended {
            positions: context
                .saturating_sub(chunk)
                .min(w.saturating_sub(1))
                .saturating_add(chunk),
            window: Some(w),
        },
        None => Attended::full(context),
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
    /// Elements of an explicit mask: chunk × attended × batch past a sliding window.
    pub mask: f64,
    /// Logit bytes of the last position (not fitted).
    pub logits: f64,
}

impl Features {
    /// The features of `chunk` tokens attending to `attended`.
    pub fn of(d: &ActivationDims, chunk: u64, attended: Attended, batch: u64) -> Features {
        let context = attended.positions.max(1);
        let chunk = chunk.min(context).max(1);
        let batch = batch.max(1) as f64;
        let pairs = chunk as f64 * context as f64 * batch;
        Features {
            chunk,
            scores: d.heads as f64 * pairs,
            mask: if attended.masked() { pairs } else { 0.0 },
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
    BUILTIN.predict(d, 2, chunk, Attended::full(context), batch)
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

    /// Worker peaks measured for BENCHMARKS.md §10 (MLX 0.32.2, CPU): the built-in
    /// model is within [−2%, +7%] of each. (dims, elem bytes, chunk, context, window,
    /// weights + KV as the estimator counts them, measured peak.)
    #[test]
    fn reproduces_measured_worker_peaks() {
        let tiny = ActivationDims {
            heads: 4,
            hidden: 256,
            intermediate: 512,
            vocab: 1024,
        };
        let smol = ActivationDims {
            heads: 9,
            hidden: 576,
            intermediate: 1536,
            vocab: 49152,
        };
        type Case = (ActivationDims, u64, u64, u64, Option<u64>, f64, f64);
        let cases: &[Case] = &[
            // llama bf16, native: chunk 2048 at 2048; chunk 512 at 2048
            (tiny, 2, 2048, 2048, None, 9.50, 69.46),
            (tiny, 2, 512, 2048, None, 9.50, 24.83),
            // qwen3 bf16 at 2048 (q/k norms: the largest under-prediction)
            (tiny, 2, 2048, 2048, None, 9.01, 70.95),
            // mistral bf16 at 8192, past its 4096 window: chunks 2048 and 512
            (tiny, 2, 2048, 8192, Some(4096), 13.50, 165.38),
            (tiny, 2, 512, 8192, Some(4096), 13.50, 45.85),
            // the real SmolLM2-135M, f32 compute, at 2048 with chunks 2048 and 512
            (smol, 4, 2048, 2048, None, 603.134, 830.8),
            (smol, 4, 512, 2048, None, 603.134, 661.39),
        ];
        for &(d, elem, chunk, context, window, base_mib, peak_mib) in cases {
            let attended = match window {
                Some(w) => Attended {
                    positions: (context - chunk).min(w - 1) + chunk,
                    window: Some(w),
                },
                None => Attended::full(context),
            };
            let base = base_mib * 1048576.0;
            let total = base
                + BUILTIN.predict(&d, elem, chunk, attended, 1).bytes as f64
                + BUILTIN.overhead_bytes(elem) as f64;
            let peak = peak_mib * 1048576.0;
            let err = (total - peak) / peak;
            assert!(
                (-0.02..=0.07).contains(&err),
                "{d:?} chunk {chunk} context {context}: {:.2}%",
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
