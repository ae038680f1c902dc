//! `config.json` (+ `generation_config.json`) of a model folder, read into one struct.

use std::path::Path;

use protocol::WorkerError;
use serde_json::Value;

use super::error::load_failed;
use super::rope;

pub use super::moe::MoeConfig;
pub use super::rope::RopeKind;

/// The `model_type`s this engine can run.
pub const SUPPORTED: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "gemma3",
    "phi3",
    "mixtral",
    "qwen3_moe",
    "qwen2_5_vl",
    "qwen2_vl",
];

/// The decoder families, each a switch in the one shared decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    /// Gemma 1 (`gemma`).
    Gemma,
    Gemma2,
    Gemma3Text,
    Phi3,
    Mixtral,
    Qwen3Moe,
}

impl Family {
    /// Gemma's `(1 + weight)` RMSNorm, scaled embeddings, extra norms and gelu MLP.
    pub fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma | Family::Gemma2 | Family::Gemma3Text)
    }

    /// Gemma 2/3: norms around the attention output and the MLP too.
    pub fn has_sandwich_norms(self) -> bool {
        matches!(self, Family::Gemma2 | Family::Gemma3Text)
    }
}

/// Quantization of one linear or embedding layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantParams {
    pub group_size: i32,
    pub bits: i32,
}

/// The model's configuration, as far as the engine needs it.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub model_type: String,
    pub family: Family,
    pub hidden_size: i32,
    pub num_layers: usize,
    pub intermediate_size: i32,
    pub num_heads: i32,
    pub num_kv_heads: i32,
    pub head_dim: i32,
    pub rms_norm_eps: f32,
    pub vocab_size: i32,
    pub rope_theta: f32,
    pub rope_traditional: bool,
    pub rope: RopeKind,
    /// The rotated features per head (`partial_rotary_factor` × head_dim).
    pub rope_dims: i32,
    /// Gemma 3: the base of the sliding-window layers' RoPE (no scaling there).
    pub rope_local_base: Option<f32>,
    /// The attention scale (`head_dim^-0.5`, or Gemma's `query_pre_attn_scalar^-0.5`).
    pub attn_scale: f32,
    /// Gemma 2: `tanh` soft-capping of the attention scores.
    pub attn_softcap: Option<f32>,
    /// Gemma 2: `tanh` soft-capping of the logits.
    pub final_softcap: Option<f32>,
    /// Routed experts (Mixtral, Qwen3-MoE).
    pub moe: Option<MoeConfig>,
    /// The weights' name prefix of the text model (`language_model.` for a multimodal
    /// Gemma 3, whose other tensors — the vision tower — are not loaded).
    pub weight_prefix: Option<String>,
    /// A vision-language model (Qwen2.5-VL): its vision tower, image tokens and
    /// multimodal RoPE.
    pub vl: Option<super::vision::VlConfig>,
    /// `None`: decide from the presence of `lm_head.weight`.
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub sliding_window: Option<usize>,
    /// Per layer: does it use the sliding window?
    pub sliding_layers: Vec<bool>,
    pub eos_token_ids: Vec<u32>,
    /// The default quantization (`quantization` in config.json).
    pub quantization: Option<QuantParams>,
    /// The raw `quantization` object, for per-layer overrides.
    pub quantization_raw: Option<serde_json::Map<String, Value>>,
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn int(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

/// Token ids; one that does not fit a `u32` is dropped, never truncated (the shared
/// validation has already refused it in config.json).
fn ids(v: Option<&Value>) -> Vec<u32> {
    let id = |x: &Value| x.as_u64().and_then(|n| u32::try_from(n).ok());
    match v {
        Some(n @ Value::Number(_)) => id(n).into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(id).collect(),
        _ => Vec::new(),
    }
}

/// Reads a JSON file of the model through the capped regular-file read.
fn read_json(path: &Path, what: &str) -> Result<Value, WorkerError> {
    let bytes = estimate::fsread::read_capped(path, estimate::fsread::MAX_CONFIG_BYTES, what)
        .map_err(|e| load_failed(e.to_string()))?;
    estimate::json_size::check_values(path, &bytes, estimate::json_size::MAX_CONFIG_VALUES)
        .map_err(|e| load_failed(e.to_string()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| load_failed(format!("{} is not valid JSON: {e}", path.display())))
}

/// An integer of the config as `i32`; the shared validation bounds it, and this
/// conversion is checked all the same (never `as i32`).
fn small(source: &str, key: &str, v: i64) -> Result<i32, WorkerError> {
    estimate::limits::to_i32(key, v).map_err(|e| load_failed(format!("{source}: {e}")))
}

impl ModelConfig {
    /// Reads `config.json` and, if present, `generation_config.json` from `dir`.
    pub fn load(dir: &Path) -> Result<ModelConfig, WorkerError> {
        let path = dir.join("config.json");
        let v = read_json(&path, "config.json")?;
        let mut cfg = Self::from_value(&v, &path.display().to_string())?;
        let gen_path = dir.join("generation_config.json");
        if estimate::fsread::present(&gen_path) {
            let g = read_json(&gen_path, "generation_config.json")?;
            for id in ids(g.get("eos_token_id")) {
                if !cfg.eos_token_ids.contains(&id) {
                    cfg.eos_token_ids.push(id);
                }
            }
        }
        Ok(cfg)
    }

    /// Parses a config object; `source` names it in errors.
    pub fn from_value(v: &Value, source: &str) -> Result<ModelConfig, WorkerError> {
        let root = v
            .as_object()
            .ok_or_else(|| load_failed(format!("{source}: top level is not an object")))?;
        // The one validation the estimator applies too: every number within its range.
        estimate::limits::check_config(root).map_err(|e| load_failed(format!("{source}: {e}")))?;
        let model_type = v
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| load_failed(format!("{source} has no model_type")))?
            .to_string();
        if model_type == "gemma3" {
            return family::gemma3(v, source);
        }
        if model_type == "qwen2_5_vl" || model_type == "qwen2_vl" {
            return super::vision::vl_model_config(v, source);
        }
        let family = match model_type.as_str() {
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "gemma" => Family::Gemma,
            "gemma2" => Family::Gemma2,
            "gemma3_text" => Family::Gemma3Text,
            "phi3" => Family::Phi3,
            "mixtral" => Family::Mixtral,
            "qwen3_moe" => Family::Qwen3Moe,
            other => {
                let missing = family::MISSING
                    .iter()
                    .find(|(t, _)| *t == other)
                    .map(|(_, what)| format!(" (this engine lacks {what})"))
                    .unwrap_or_default();
                return Err(load_failed(format!(
                    "unsupported model_type {other:?} in {source}{missing}; supported: {}",
                    SUPPORTED.join(", ")
                )));
            }
        };
        let need = |key: &str| -> Result<i64, WorkerError> {
            int(v, key).filter(|n| *n > 0).ok_or_else(|| {
                load_failed(format!(
                    "{source}: {key} is missing or not a positive integer"
                ))
            })
        };
        let hidden_size = need("hidden_size")?;
        let num_layers = need("num_hidden_layers")?;
        let intermediate_size = need("intermediate_size")?;
        let num_heads = need("num_attention_heads")?;
        let vocab_size = need("vocab_size")?;
        let num_kv_heads = int(v, "num_key_value_heads").unwrap_or(num_heads);
        // Phi-3 and Mixtral (in mlx-lm) derive the head size; Gemma 3 defaults it.
        let head_dim = match (family, int(v, "head_dim")) {
            (Family::Phi3 | Family::Mixtral, _) => hidden_size / num_heads,
            (_, Some(h)) if h > 0 => h,
            (Family::Gemma3Text, _) => 256,
            _ => hidden_size / num_heads,
        };
        if num_kv_heads <= 0 || num_heads % num_kv_heads != 0 {
            return Err(load_failed(format!(
                "{source}: num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
            )));
        }
        let rope_params = v.get("rope_parameters").filter(|p| p.is_object());
        let default_theta = match family {
            Family::Qwen2 | Family::Gemma3Text | Family::Mixtral => 1_000_000.0,
            _ => 10_000.0,
        };
        let rope_theta = num(v, "rope_theta")
            .or_else(|| rope_params.and_then(|p| num(p, "rope_theta")))
            .unwrap_or(default_theta) as f32;
        let scaling = v
            .get("rope_scaling")
            .filter(|s| s.is_object())
            .or(rope_params);
        let max_pos = num(v, "max_position_embeddings");
        let rope_dims = match family {
            Family::Phi3 => {
                let f = num(v, "partial_rotary_factor").unwrap_or(1.0);
                (head_dim as f64 * f) as i64
            }
            _ => head_dim,
        };
        let rope_dims = small(source, "partial_rotary_factor × head_dim", rope_dims)?;
        if rope_dims < 2 || rope_dims % 2 != 0 || i64::from(rope_dims) > head_dim {
            return Err(load_failed(format!(
                "{source}: {rope_dims} rotary features per head is not an even number within head_dim {head_dim}"
            )));
        }
        let rope = match family {
            // mlx-lm 0.32.2 builds a plain nn.RoPE for these, whatever rope_scaling says.
            Family::Gemma | Family::Gemma2 | Family::Mixtral | Family::Qwen3Moe => {
                RopeKind::Default { scale: 1.0 }
            }
            Family::Gemma3Text => {
                rope::parse(scaling, max_pos.or(Some(32768.0)), rope_dims, source)?
            }
            Family::Phi3 => family::phi3_rope(v, scaling, rope_dims, source)?,
            _ => rope::parse(scaling, max_pos, rope_dims, source)?,
        };
        let sliding_window = match family {
            Family::Gemma3Text => int(v, "sliding_window").or(Some(512)),
            _ => int(v, "sliding_window"),
        }
        .filter(|w| *w > 0)
        .and_then(|w| usize::try_from(w).ok());
        let num_layers = usize::try_from(num_layers).map_err(|_| {
            load_failed(format!(
                "{source}: num_hidden_layers {num_layers} is too large"
            ))
        })?;
        let sliding_layers = sliding_layers(v, family, num_layers, sliding_window, source)?;
        let (quantization, quantization_raw) = match v.get("quantization") {
            Some(Value::Object(q)) => {
                let mode = q.get("mode").and_then(Value::as_str).unwrap_or("affine");
                if mode != "affine" {
                    return Err(load_failed(format!(
                        "{source}: quantization mode {mode:?} is not supported (only MLX affine quantization)"
                    )));
                }
                let gs = small(
                    source,
                    "quantization.group_size",
                    q.get("group_size").and_then(Value::as_i64).unwrap_or(64),
                )?;
                let bits = small(
                    source,
                    "quantization.bits",
                    q.get("bits").and_then(Value::as_i64).unwrap_or(4),
                )?;
                if gs < 1 {
                    return Err(load_failed(format!(
                        "{source}: quantization.group_size {gs} (per-channel) is not supported by MLX affine quantization"
                    )));
                }
                (
                    Some(QuantParams {
                        group_size: gs,
                        bits,
                    }),
                    Some(q.clone()),
                )
            }
            _ => (None, None),
        };
        let flag = |key: &str| v.get(key).and_then(Value::as_bool).unwrap_or(false);
        let attn_scale = match family {
            Family::Gemma2 => 1.0 / num(v, "query_pre_attn_scalar").unwrap_or(144.0).sqrt(),
            Family::Gemma3Text => num(v, "query_pre_attn_scalar").unwrap_or(256.0).powf(-0.5),
            _ => (head_dim as f64).powf(-0.5),
        } as f32;
        // Gemma 2's caps default to 50 and 30 (mlx-lm's defaults); `null` turns one off.
        let softcap = |key: &str, default: f64| match v.get(key) {
            None => Some(default as f32),
            Some(x) => x.as_f64().filter(|c| *c > 0.0).map(|c| c as f32),
        };
        let (attn_softcap, final_softcap) = match family {
            Family::Gemma2 => (
                softcap("attn_logit_softcapping", 50.0),
                softcap("final_logit_softcapping", 30.0),
            ),
            _ => (None, None),
        };
        let moe = MoeConfig::parse(v, family, num_layers, source)?;
        Ok(ModelConfig {
            model_type,
            family,
            hidden_size: small(source, "hidden_size", hidden_size)?,
            num_layers,
            intermediate_size: small(source, "intermediate_size", intermediate_size)?,
            num_heads: small(source, "num_attention_heads", num_heads)?,
            num_kv_heads: small(source, "num_key_value_heads", num_kv_heads)?,
            head_dim: small(source, "head_dim", head_dim)?,
            rms_norm_eps: num(v, "rms_norm_eps").unwrap_or(1e-6) as f32,
            vocab_size: small(source, "vocab_size", vocab_size)?,
            rope_theta,
            rope_traditional: !matches!(
                family,
                Family::Qwen3 | Family::Qwen3Moe | Family::Gemma3Text
            ) && flag("rope_traditional"),
            rope,
            rope_dims,
            rope_local_base: (family == Family::Gemma3Text)
                .then(|| num(v, "rope_local_base_freq").unwrap_or(10_000.0) as f32),
            attn_scale,
            attn_softcap,
            final_softcap,
            moe,
            weight_prefix: None,
            vl: None,
            tie_word_embeddings: match family {
                // mlx-lm: Gemma 2 always ties; Gemma 3 ties when lm_head.weight is absent.
                Family::Gemma | Family::Gemma2 => Some(true),
                Family::Gemma3Text => None,
                _ => v.get("tie_word_embeddings").and_then(Value::as_bool),
            },
            attention_bias: match family {
                Family::Qwen2 => true,
                Family::Llama | Family::Mistral => flag("attention_bias"),
                _ => false,
            },
            mlp_bias: matches!(family, Family::Llama | Family::Mistral) && flag("mlp_bias"),
            sliding_window,
            sliding_layers,
            eos_token_ids: ids(v.get("eos_token_id")),
            quantization,
            quantization_raw,
        })
    }

    /// Quantization of the layer at `path` (e.g. `model.layers.0.self_attn.q_proj`):
    /// a per-layer override if there is one, else the default.
    pub fn quant_for(&self, path: &str) -> Option<QuantParams> {
        let raw = self.quantization_raw.as_ref()?;
        match raw.get(path) {
            Some(Value::Bool(false)) => None,
            Some(Value::Object(o)) => Some(QuantParams {
                group_size: o
                    .get("group_size")
                    .and_then(Value::as_i64)
                    .and_then(|g| i32::try_from(g).ok())
                    .or(self.quantization.map(|q| q.group_size))?,
                bits: o
                    .get("bits")
                    .and_then(Value::as_i64)
                    .and_then(|b| i32::try_from(b).ok())
                    .or(self.quantization.map(|q| q.bits))?,
            }),
            _ => self.quantization,
        }
    }
}

/// Which layers use the sliding window: `layer_types` if the config has it; otherwise
/// every layer of a Mistral with a `sliding_window` (Hugging Face's meaning), none else.
fn sliding_layers(
    v: &Value,
    family: Family,
    layers: usize,
    window: Option<usize>,
    source: &str,
) -> Result<Vec<bool>, WorkerError> {
    match family {
        // mlx-lm 0.32.2 runs every layer of these with full attention.
        Family::Gemma | Family::Gemma2 | Family::Phi3 | Family::Mixtral | Family::Qwen3Moe => {
            return Ok(vec![false; layers])
        }
        // Every `sliding_window_pattern`-th layer is global, the others slide.
        Family::Gemma3Text => {
            let p = int(v, "sliding_window_pattern").unwrap_or(6).max(1) as usize;
            return Ok((0..layers).map(|i| i % p != p - 1).collect());
        }
        _ => {}
    }
    if let Some(types) = v.get("layer_types").and_then(Value::as_array) {
        if types.len() != layers {
            return Err(load_failed(format!(
                "{source}: layer_types has {} entries for {layers} layers",
                types.len()
            )));
        }
        let sliding: Vec<bool> = types
            .iter()
            .map(|t| t.as_str() == Some("sliding_attention"))
            .collect();
        if sliding.iter().any(|s| *s) && window.is_none() {
            return Err(load_failed(format!(
                "{source}: sliding_attention layers but no sliding_window"
            )));
        }
        return Ok(sliding);
    }
    Ok(vec![family == Family::Mistral && window.is_some(); layers])
}

#[path = "config_family.rs"]
mod family;

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
