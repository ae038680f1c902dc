//! One record of the calibration store: what ran (the model's shape facts, dtype,
//! context, prefill chunk), where (machine, backend, MLX version), and the predicted and
//! measured MLX peaks; for a run with images, its vision tower's measured peak too.
use estimate::vision_activation::{TowerShape, VisionSample};
use estimate::{calibration::Sample, ActivationDims, Estimate, Model};
use serde::{Deserialize, Serialize};

/// The shape facts of a model that decide its memory: two runs of models with equal
/// facts are the same shape (the floor applies across them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFacts {
    pub architecture: String,
    pub layers: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub hidden: u64,
    pub intermediate: u64,
    pub vocab: u64,
    /// The checkpoint's dtype (`bfloat16`, `float32`).
    pub dtype: String,
    /// `none`, `mlx affine 4-bit group 64`, ...
    pub quantization: String,
    /// The checkpoint's own weight bytes.
    pub stored_weight_bytes: u64,
}

impl ModelFacts {
    pub fn of(model: &Model) -> ModelFacts {
        let d = &model.dims;
        ModelFacts {
            architecture: model.architecture.clone(),
            layers: d.layers,
            heads: model.activation.heads,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
            hidden: model.activation.hidden,
            intermediate: model.activation.intermediate,
            vocab: model.activation.vocab,
            dtype: model.dtype.to_string(),
            quantization: model.quantization.describe(),
            stored_weight_bytes: model.weights.bytes,
        }
    }

    fn dims(&self) -> ActivationDims {
        ActivationDims {
            heads: self.heads,
            hidden: self.hidden,
            intermediate: self.intermediate,
            vocab: self.vocab,
        }
    }
}

/// Where a run ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// The host name.
    pub host: String,
    /// `cpu`, `metal` or `cuda`.
    pub backend: String,
    /// MLX's version (`0.32.2`).
    pub mlx_version: String,
}

/// One successful run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub machine: Machine,
    pub model: ModelFacts,
    /// Activation element bytes (2, or 4 at f32 compute).
    pub elem_bytes: u64,
    /// Prompt + generated tokens.
    pub context: u64,
    /// The largest prefill chunk (capped at the context).
    pub chunk: u64,
    /// Keys the last chunk attended to (less than `context` behind a sliding window).
    #[serde(default)]
    pub attended: u64,
    /// The sliding window, when every attention layer keeps one.
    #[serde(default)]
    pub window: Option<u64>,
    /// Quantized KV cache bits, when the run used them (such records are kept but not
    /// fitted: the activation model is for the model-dtype cache).
    #[serde(default)]
    pub kv_bits: Option<u8>,
    /// Predicted weights + KV cache at `context`.
    pub base_bytes: u64,
    /// Predicted weights at the compute dtype.
    #[serde(default)]
    pub weight_bytes: u64,
    /// The f32 build's predicted load transient (0 at the native dtype): freed before the
    /// first token, but in the measured peak when it was the larger part.
    #[serde(default)]
    pub load_transient_bytes: u64,
    /// The predicted peak at `context` (the estimate's total).
    pub predicted_bytes: u64,
    /// MLX's measured peak.
    pub peak_bytes: u64,
    /// Seconds since the Unix epoch.
    pub unix_time: u64,
    /// `run`, `daemon` or `calibrate`.
    pub source: String,
    /// A run with images: its vision tower (such a record fits the vision term only: its
    /// peak may be the tower's, so it is neither a text sample nor a floor).
    #[serde(default)]
    pub vision: Option<VisionRecord>,
}

/// What a run's vision tower measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionRecord {
    pub shape: TowerShape,
    /// Patches of each image.
    pub patches: Vec<u64>,
    /// The tower's MLX peak above what MLX held when it started.
    pub measured_bytes: u64,
    /// The vision term predicted for it.
    pub predicted_bytes: u64,
}

impl VisionRecord {
    /// The tower of `model` as the worker measured it (`None` for a model without one).
    pub fn of(model: &Model, peak: &protocol::VisionPeak) -> Option<VisionRecord> {
        let v = model.vision.as_ref()?;
        Some(VisionRecord {
            shape: v.tower_shape(),
            patches: peak.patches.clone(),
            measured_bytes: peak.activation_bytes,
            predicted_bytes: peak.predicted_bytes,
        })
    }
}

impl Record {
    /// A record of a run of `model` that used `context` tokens, estimated by `used` (the
    /// estimate at that context) and peaking at `peak_bytes`.
    pub fn new(
        machine: Machine,
        model: &Model,
        used: &Estimate,
        peak_bytes: u64,
        source: &str,
    ) -> Record {
        let attended = estimate::activation::attended_positions(
            &model.kv_layers,
            used.kv_cache.context,
            used.activation.chunk,
        );
        Record {
            machine,
            model: ModelFacts::of(model),
            elem_bytes: used.activation_elem_bytes,
            context: used.kv_cache.context,
            chunk: used.activation.chunk,
            attended: attended.positions,
            window: attended.window,
            kv_bits: used.kv_cache.kv_bits,
            base_bytes: used.weights.bytes.saturating_add(used.kv_cache.bytes),
            weight_bytes: used.weights.bytes,
            load_transient_bytes: used.load_transient_bytes,
            predicted_bytes: used.total_bytes,
            peak_bytes,
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            source: source.to_string(),
            vision: None,
        }
    }

    /// Whether the peak measured the run's activations: not when it may have been the
    /// f32 build's load transient (the peak at most the weights, the transient and 2%).
    pub fn measures_activations(&self) -> bool {
        let transient_peak = self
            .weight_bytes
            .saturating_add(self.load_transient_bytes)
            .saturating_add(self.peak_bytes / 50);
        self.load_transient_bytes == 0 || self.peak_bytes > transient_peak
    }

    /// The record's vision tower as the vision fit needs it.
    pub fn vision_sample(&self) -> Option<VisionSample> {
        self.vision.as_ref().map(|v| VisionSample {
            shape: v.shape,
            elem_bytes: self.elem_bytes,
            patches: v.patches.clone(),
            measured_bytes: v.measured_bytes,
        })
    }

    /// The record as the fit needs it.
    pub fn sample(&self) -> Sample {
        Sample {
            dims: self.model.dims(),
            elem_bytes: self.elem_bytes,
            chunk: self.chunk,
            context: self.context,
            attended: estimate::activation::Attended {
                positions: if self.attended > 0 {
                    self.attended
                } else {
                    self.context
                },
                window: self.window,
            },
            base_bytes: self.base_bytes,
            peak_bytes: self.peak_bytes,
        }
    }
}
