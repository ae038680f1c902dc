//! The report types of an estimate: [`Estimate`] (the `inspect --json` object), its
//! weights part and its images part.

use serde::Serialize;

use crate::activation::{Activation, ActivationModel};
use crate::calibration::CalibrationSource;
use crate::kv_cache::KvCache;
use crate::model::WeightSource;
use crate::verdict::Verdict;
use crate::weights::WeightParts;

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
    /// Whether the default context was capped at [`DEFAULT_CONTEXT_CAP`](super::DEFAULT_CONTEXT_CAP).
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
    /// Whether the worker runs this model's family (its `model_type`): when false the
    /// estimate still plans it, but `run`, `load` and `generate` refuse it (exit 5).
    pub worker_runs: bool,
}
