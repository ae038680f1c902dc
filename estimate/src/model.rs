//! `Model`: everything the estimator knows about a model folder, read once — config,
//! quantization, shard headers (headers only), the shard index, the analytic weights,
//! the KV-cache layout and the activation dimensions.
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::activation::ActivationDims;
use crate::config::Config;
use crate::dims::{activation_dims, vision_dims};
use crate::dtype::Dtype;
use crate::error::EstimateError;
use crate::fsread::MAX_INDEX_BYTES;
use crate::index::{ShardIndex, INDEX_FILE};
use crate::kv_cache::{layer_layout, LayerKv};
use crate::quantization::Quantization;
use crate::safetensors_header::{read_shard, ShardHeader};
use crate::weights::{analytic_weights, AnalyticWeights, Names, TextDims, WeightParts};

pub use ::model::Description;

/// Largest `config.json` or index accepted (they are kilobytes; this stops a runaway file).
/// Kept for callers; the caps used are [`crate::fsread::MAX_CONFIG_BYTES`] and [`MAX_INDEX_BYTES`].
pub const MAX_JSON_BYTES: u64 = MAX_INDEX_BYTES;

/// Sources disagreeing by more than this fraction produce a warning.
pub const DISAGREEMENT_WARNING: f64 = 0.03;

/// Where the weight bytes come from, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightSource {
    /// Exact: dtype × shape of every tensor in every shard's header.
    SafetensorsHeader,
    /// The publisher's `metadata.total_size` in `model.safetensors.index.json`.
    IndexTotalSize,
    /// Analytic, from `config.json` and its quantization.
    Config,
    /// Exact: ggml type × shape of every tensor in a GGUF file's header.
    GgufHeader,
}

impl WeightSource {
    /// The name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            WeightSource::SafetensorsHeader => "safetensors_header",
            WeightSource::IndexTotalSize => "index_total_size",
            WeightSource::Config => "config",
            WeightSource::GgufHeader => "gguf_header",
        }
    }
}

/// What the folder says about the weights, from every source available.
#[derive(Clone, Debug, Serialize)]
pub struct Weights {
    /// The bytes used for the estimate.
    pub bytes: u64,
    /// Where they come from.
    pub source: WeightSource,
    /// Sum of tensor bytes over all shard headers, when shards are present.
    pub header_bytes: Option<u64>,
    /// The index's `total_size`, when present and non-zero.
    pub index_total_size: Option<u64>,
    /// The analytic figure, when the config could be modelled.
    pub analytic_bytes: Option<u64>,
    /// Analytic bytes per component (for the breakdown table).
    pub analytic_parts: Option<WeightParts>,
    /// Vision-tower bytes: exact from headers when present, else analytic.
    pub vision_bytes: u64,
}

/// The vision encoder's shape, for image activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct VisionDims {
    /// Encoder width.
    pub width: u64,
    /// Encoder MLP width.
    pub intermediate: u64,
    /// Encoder heads.
    pub heads: u64,
    /// Patches the encoder sees per image.
    pub patches_per_image: u64,
    /// Tokens one image adds to the language model's context.
    pub tokens_per_image: u64,
    /// The Qwen2-VL processor's grid, when the image size decides the counts above
    /// (`crate::vision::plan_image`).
    pub qwen: Option<crate::vision::QwenGrid>,
    /// Every block attends to the whole image (Qwen2-VL; Qwen2.5-VL's blocks use windows
    /// but a few).
    pub all_full_attention: bool,
}

impl VisionDims {
    /// What the tower's activations depend on (pixel values per patch: the Qwen2-VL
    /// grid's channels × temporal patch × patch², else 3 × 2 × 14²).
    pub fn tower_shape(&self) -> crate::vision_activation::TowerShape {
        crate::vision_activation::TowerShape {
            heads: self.heads,
            hidden: self.width,
            intermediate: self.intermediate,
            all_full_attention: self.all_full_attention,
            values_per_patch: self.qwen.as_ref().map_or(3 * 2 * 14 * 14, |q| {
                3 * u64::from(q.temporal_patch_size)
                    * u64::from(q.patch_size)
                    * u64::from(q.patch_size)
            }),
        }
    }
}

/// A model folder, read.
#[derive(Clone, Debug)]
pub struct Model {
    /// The folder.
    pub dir: PathBuf,
    /// `config.json`.
    pub config: Config,
    /// The config's `model_type`.
    pub architecture: String,
    /// The checkpoint's quantization.
    pub quantization: Quantization,
    /// The dtype of unquantized tensors (and of the KV cache).
    pub dtype: Dtype,
    /// Headers of the top-level `*.safetensors` shards, in file-name order.
    pub shards: Vec<ShardHeader>,
    /// The shard index, when present.
    pub index: Option<ShardIndex>,
    /// The analytic weights, when the config could be modelled.
    pub analytic: Option<AnalyticWeights>,
    /// Weight bytes and their source.
    pub weights: Weights,
    /// Language-model dimensions.
    pub dims: TextDims,
    /// The KV cache layout, one entry per layer.
    pub kv_layers: Vec<LayerKv>,
    /// Dimensions for the activation model.
    pub activation: ActivationDims,
    /// The vision encoder, when the model has one.
    pub vision: Option<VisionDims>,
    /// `max_position_embeddings`, when the config gives it.
    pub max_position_embeddings: Option<u64>,
    /// Disagreements and assumptions worth telling a person.
    pub warnings: Vec<String>,
    /// Bytes read from disk to build this (headers and JSON files).
    pub bytes_read: u64,
}

/// Opens a model folder; shorthand for [`Model::open`].
pub fn open(dir: &Path) -> Result<Model, EstimateError> {
    Model::open(dir)
}

fn read_json_file(
    path: &Path,
    cap: u64,
    what: &str,
    bytes_read: &mut u64,
) -> Result<Vec<u8>, EstimateError> {
    let buf = crate::fsread::read_capped(path, cap, what)?;
    *bytes_read += buf.len() as u64;
    Ok(buf)
}

impl Model {
    /// Reads a model folder: `config.json`, the index, and only the headers of the
    /// top-level `*.safetensors` shards. A `.gguf` file (or a folder holding one and no
    /// `config.json`) is read from its header alone, see [`crate::gguf`].
    pub fn open(dir: &Path) -> Result<Model, EstimateError> {
        if let Some(gguf) = crate::gguf::locate(dir)? {
            return crate::gguf::open_model(&gguf);
        }
        let meta = fs::metadata(dir).map_err(|e| EstimateError::NotADirectory {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        if !meta.is_dir() {
            return Err(EstimateError::NotADirectory {
                path: dir.to_path_buf(),
                reason: "it is a file".to_string(),
            });
        }
        let (config, mut bytes_read) = Config::read(dir)?;

        let index_path = dir.join(INDEX_FILE);
        let index = if crate::fsread::present(&index_path) {
            Some(ShardIndex::parse(
                &index_path,
                &read_json_file(&index_path, MAX_INDEX_BYTES, INDEX_FILE, &mut bytes_read)?,
            )?)
        } else {
            None
        };

        let mut shard_paths = Vec::new();
        let entries = fs::read_dir(dir).map_err(|source| EstimateError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| EstimateError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) == Some("safetensors") {
                // Follows symlinks (Hugging Face caches link into blobs/); a loop, a
                // dangling link, a directory or a FIFO is an error naming the shard.
                crate::fsread::check_regular(&path, "the shard")?;
                shard_paths.push(path);
            }
        }
        shard_paths.sort();
        let mut shards = Vec::with_capacity(shard_paths.len());
        for p in &shard_paths {
            let h = read_shard(p)?;
            bytes_read += h.header_bytes;
            shards.push(h);
        }
        let mut warnings = Vec::new();
        if let (Some(idx), false) = (&index, shards.is_empty()) {
            let present: BTreeSet<String> = shard_paths
                .iter()
                .filter_map(|p| p.file_name().and_then(|f| f.to_str()).map(str::to_string))
                .collect();
            if let Some(missing) = idx
                .shard_files()
                .into_iter()
                .find(|f| !present.contains(*f))
            {
                return Err(EstimateError::MissingShard {
                    path: idx.path.clone(),
                    shard: missing.to_string(),
                });
            }
            let indexed = idx.shard_files();
            for extra in present.iter().filter(|p| !indexed.contains(p.as_str())) {
                warnings.push(format!("{extra} is not in {INDEX_FILE}; its tensors are counted (mlx-lm loads every shard)"));
            }
        }
        Model::build(dir, config, index, shards, warnings, bytes_read)
    }

    pub(crate) fn build(
        dir: &Path,
        config: Config,
        index: Option<ShardIndex>,
        shards: Vec<ShardHeader>,
        mut warnings: Vec<String>,
        mut bytes_read: u64,
    ) -> Result<Model, EstimateError> {
        let quantization = config.description().quantization.clone();
        let names: Option<BTreeSet<String>> = if !shards.is_empty() {
            Some(
                shards
                    .iter()
                    .flat_map(|s| s.tensors.iter().map(|t| t.name.clone()))
                    .collect(),
            )
        } else {
            index
                .as_ref()
                .filter(|i| !i.weight_map.is_empty())
                .map(|i| i.weight_map.keys().cloned().collect())
        };
        let dims = config.description().dims.clone();
        let analytic = analytic_weights(&config, &quantization, Names(names.as_ref()));
        let header_bytes =
            (!shards.is_empty()).then(|| shards.iter().map(|s| s.tensor_bytes).sum::<u64>());
        let index_total_size = index.as_ref().and_then(|i| i.total_size);
        if let Some(i) = &index {
            if i.total_size_raw == Some(0) {
                warnings.push(format!(
                    "{}: metadata.total_size is 0; ignored",
                    i.path.display()
                ));
            } else if i.total_size_raw.is_none() {
                warnings.push(format!("{}: has no metadata.total_size", i.path.display()));
            }
        }
        // Without shards or a usable index the analytic model is the only source, so its
        // failure is the model's failure.
        let analytic = match analytic {
            Ok(a) => Some(a),
            Err(e) if header_bytes.is_some() || index_total_size.is_some() => {
                warnings.push(format!("analytic weights unavailable: {e}"));
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(a) = &analytic {
            warnings.extend(a.notes.iter().cloned());
        }
        let analytic_bytes = analytic.as_ref().map(|a| a.parts.total());
        let (bytes, source) = match (header_bytes, index_total_size, analytic_bytes) {
            (Some(h), _, _) => (h, WeightSource::SafetensorsHeader),
            (None, Some(i), _) => (i, WeightSource::IndexTotalSize),
            (None, None, Some(a)) => (a, WeightSource::Config),
            (None, None, None) => return Err(config.error("cannot determine the weights: no shards, no index total_size, and the config cannot be modelled".into())),
        };
        let disagree =
            |a: u64, b: u64| a.abs_diff(b) as f64 > DISAGREEMENT_WARNING * a.max(b) as f64;
        let pct = |a: u64, b: u64| (a as f64 - b as f64) / b.max(1) as f64 * 100.0;
        if let (Some(h), Some(i)) = (header_bytes, index_total_size) {
            if disagree(h, i) {
                warnings.push(format!(
                    "index total_size {i} disagrees with the shard headers' {h} bytes ({:+.1}%); the headers are used",
                    pct(i, h)
                ));
            }
        }
        if let Some(a) = analytic_bytes {
            if disagree(bytes, a) {
                warnings.push(format!(
                    "{} says {bytes} bytes but the config implies {a} ({:+.1}%): check the config's dtype, tied embeddings and quantization",
                    source.as_str(),
                    pct(bytes, a)
                ));
            }
        }
        if let Some(h) = config.bool("tie_word_embeddings").filter(|t| *t) {
            let stored = names
                .as_ref()
                .is_some_and(|n| n.iter().any(|s| s.starts_with("lm_head.")));
            if h && stored {
                warnings.push("config says tie_word_embeddings but the checkpoint stores lm_head.weight; it is counted".into());
            }
        }
        let dtype = config
            .dtype()
            .unwrap_or_else(|| dominant_float_dtype(&shards).unwrap_or(Dtype::Bf16));
        let kv_dtype_bytes = match dtype {
            Dtype::F32 => 4,
            _ => 2,
        };
        let kv_layers = layer_layout(&config, &dims, kv_dtype_bytes);
        let activation = activation_dims(&config, &dims);
        let mut vision = vision_dims(&config);
        if let Some(grid) = vision.as_mut().and_then(|v| v.qwen.as_mut()) {
            grid.read_preprocessor(dir, &mut warnings, &mut bytes_read);
        }
        let vision_bytes = if !shards.is_empty() {
            shards
                .iter()
                .flat_map(|s| &s.tensors)
                .filter(|t| is_vision_tensor(&t.name))
                .map(|t| t.bytes)
                .sum()
        } else {
            analytic.as_ref().map_or(0, |a| a.parts.vision)
        };
        let max_position_embeddings = config.description().max_position_embeddings;
        Ok(Model {
            dir: dir.to_path_buf(),
            architecture: config.model_type().to_string(),
            quantization,
            dtype,
            shards,
            index,
            weights: Weights {
                bytes,
                source,
                header_bytes,
                index_total_size,
                analytic_bytes,
                analytic_parts: analytic.as_ref().map(|a| a.parts.clone()),
                vision_bytes,
            },
            analytic,
            dims,
            kv_layers,
            activation,
            vision,
            max_position_embeddings,
            warnings,
            bytes_read,
            config,
        })
    }

    /// For loading, not just estimating: every shard the index names is present (its
    /// header was read and checked by [`Model::open`]) and there is at least one shard.
    /// A folder of metadata only can be inspected but not run.
    pub fn require_weights(&self) -> Result<(), EstimateError> {
        if self.shards.is_empty() {
            return match &self.index {
                Some(idx) if !idx.weight_map.is_empty() => Err(EstimateError::MissingShard {
                    path: idx.path.clone(),
                    shard: idx
                        .shard_files()
                        .into_iter()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                }),
                _ => Err(EstimateError::NoWeights {
                    path: self.dir.clone(),
                }),
            };
        }
        // With shards present, `open` already refused an index naming a missing one.
        Ok(())
    }

    /// Bytes per element of the KV cache (the model's activation dtype).
    pub fn kv_dtype_bytes(&self) -> u64 {
        match self.dtype {
            Dtype::F32 => 4,
            _ => 2,
        }
    }

    /// Weight bytes if the model were quantized with MLX affine `bits` (group 64): exact
    /// per tensor from the headers of an unquantized checkpoint (2-D and 3-D weights whose
    /// last dimension divides by 64, outside norms and the vision tower), else analytic.
    pub fn weights_at_bits(&self, bits: u8) -> Option<u64> {
        let bits = u64::from(bits);
        if !self.shards.is_empty() && !self.quantization.is_quantized() {
            let total = self
                .shards
                .iter()
                .flat_map(|s| &s.tensors)
                .map(|t| {
                    let quantizable = t.name.ends_with("weight")
                        && (2..=3).contains(&t.shape.len())
                        && t.shape.last().is_some_and(|d| d % 64 == 0)
                        && !t.name.contains("norm")
                        && !is_vision_tensor(&t.name);
                    if quantizable {
                        let numel: u64 = t.shape.iter().product();
                        let scale_bytes = (t.dtype.bits() / 8).clamp(1, 2);
                        numel * bits / 8 + 2 * (numel / 64) * scale_bytes
                    } else {
                        t.bytes
                    }
                })
                .sum();
            return Some(total);
        }
        let names: Option<BTreeSet<String>> = self
            .index
            .as_ref()
            .map(|i| i.weight_map.keys().cloned().collect());
        let q = Quantization::MlxAffine {
            bits,
            group_size: 64,
            overrides: Vec::new(),
        };
        analytic_weights(&self.config, &q, Names(names.as_ref()))
            .ok()
            .map(|a| a.parts.total())
    }
}

/// Whether a tensor belongs to a vision tower or projector.
pub fn is_vision_tensor(name: &str) -> bool {
    [
        "vision",
        "visual",
        "multi_modal_projector",
        "sam_model",
        "qwen2_model",
        "projector",
        "resampler",
        "vpm.",
    ]
    .iter()
    .any(|k| name.contains(k))
}

fn dominant_float_dtype(shards: &[ShardHeader]) -> Option<Dtype> {
    let mut by: Vec<(Dtype, u64)> = Vec::new();
    for t in shards.iter().flat_map(|s| &s.tensors) {
        if matches!(t.dtype, Dtype::F16 | Dtype::Bf16 | Dtype::F32) {
            match by.iter_mut().find(|(d, _)| *d == t.dtype) {
                Some((_, n)) => *n += t.bytes,
                None => by.push((t.dtype, t.bytes)),
            }
        }
    }
    by.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| d)
}
