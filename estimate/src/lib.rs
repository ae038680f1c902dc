//! The one memory estimator of mlxsup: from a model folder and a request, the bytes the
//! weights, the KV cache and the activations will need, and whether that fits a budget.
//!
//! It is pure: it reads the folder's `config.json`, `model.safetensors.index.json` and
//! the safetensors headers (never the tensor data), and queries nothing about the
//! machine — the budget is an input. `inspect`, the preflight of `mlxsup run`, the
//! daemon's admission and the worker's choice of prefill chunk all call it.
//!
//! ```no_run
//! use estimate::{Bytes, Model, Request};
//! let model = Model::open(std::path::Path::new("models/qwen2"))?;
//! let est = estimate::estimate(&model, &Request { budget: Bytes(16 << 30), ..Request::default() });
//! println!("{} ({})", Bytes(est.total_bytes), est.verdict);
//! # Ok::<(), estimate::EstimateError>(())
//! ```
pub mod activation;
pub mod bytes;
pub mod calibration;
pub mod compute;
pub mod config;
mod dims;
pub mod dtype;
pub mod error;
pub mod fsread;
pub mod gguf;
pub mod index;
pub mod json_size;
pub mod kv_cache;
/// The plausible ranges of config numbers (the `model` crate's, shared with the worker).
pub use ::model::limits;
pub mod model;
/// How a checkpoint stores its weights (the `model` crate's description of it).
pub use ::model::quantization;
pub mod request;
pub mod safetensors_header;
pub mod verdict;
pub mod vision;
pub mod vision_activation;
pub mod weights;

pub use activation::{
    activation_bytes, ActivationDims, ActivationModel, Coefficients, DEFAULT_PREFILL_CHUNK,
};
pub use bytes::{Bytes, ParseBytesError};
pub use calibration::{Calibration, CalibrationSource};
pub use dtype::Dtype;
pub use error::EstimateError;
pub use fsread::{read_capped, read_capped_string, FileError};
pub use kv_cache::{kv_bytes_per_token, LayerKv};
pub use limits::Implausible;
pub use model::{open, Model, WeightSource};
pub use quantization::Quantization;
pub use request::{estimate, Estimate, Request, DEFAULT_CONTEXT_CAP};
pub use verdict::{Verdict, TIGHT_FRACTION};
