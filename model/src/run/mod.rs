//! `RunConfig`: what the worker builds a model from, for the families it runs — the
//! description's dimensions and layer plan, plus the family's switches (norms, biases,
//! softcaps, tied embeddings), RoPE, experts, the vision tower, quantization and the
//! end-of-sequence tokens. Stricter than the description: a value the worker cannot
//! honour is an error naming the field.

use serde_json::Value;

use crate::description::Description;
use crate::family::{unsupported, Family};
use crate::rope::{self, RopeKind};

mod extras;
mod family;
pub mod moe;
pub mod tower;
pub mod vision;

pub use extras::{qwen_weight_name, Multipliers};
pub use moe::{MoeConfig, Routing};
pub use tower::TowerConfig;
pub use vision::{VisionTokens, VlConfig};

/// Why the worker cannot build a model from a config (the message names the field).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    /// What is wrong, naming the file and the field.
    pub message: String,
}

/// A [`ConfigError`] with `message`.
pub(crate) fn load_failed(message: String) -> ConfigError {
    ConfigError { message }
}

/// The decoder variants the worker's one shared decoder switches between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoder {
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
    /// SmolLM3: a Llama whose `no_rope_layers` attend without RoPE.
    SmolLm3,
    /// MiMo: Qwen2-shaped (its multi-token-prediction layers are not read).
    Mimo,
    /// The first Qwen (`qwen`): fused `c_attn`, its own tensor names.
    Qwen,
    /// Granite MoE: embedding, attention, residual and logit multipliers; routed experts.
    GraniteMoe,
}

impl Decoder {
    /// Gemma's `(1 + weight)` RMSNorm, scaled embeddings, extra norms and gelu MLP.
    pub fn is_gemma(self) -> bool {
        matches!(self, Decoder::Gemma | Decoder::Gemma2 | Decoder::Gemma3Text)
    }

    /// Gemma 2/3: norms around the attention output and the MLP too.
    pub fn has_sandwich_norms(self) -> bool {
        matches!(self, Decoder::Gemma2 | Decoder::Gemma3Text)
    }
}

/// Quantization of one linear or embedding layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantParams {
    pub group_size: i32,
    pub bits: i32,
}

/// The model's configuration, as far as the worker's engine needs it.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub model_type: String,
    pub family: Decoder,
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
    /// Routed experts (Mixtral, Qwen3-MoE, Granite MoE).
    pub moe: Option<MoeConfig>,
    /// Per layer: whether its attention rotates queries and keys (SmolLM3's NoPE
    /// layers do not).
    pub rope_layers: Vec<bool>,
    /// Granite MoE's embedding, residual and logit multipliers.
    pub multipliers: Option<Multipliers>,
    /// Tensors under these prefixes are never read (MiMo's multi-token-prediction
    /// layers, which mlx-lm drops).
    pub skip_weights: Vec<String>,
    /// The weights' name prefix of the text model (`language_model.` for a multimodal
    /// Gemma 3, whose other tensors — the vision tower — are not loaded).
    pub weight_prefix: Option<String>,
    /// A vision-language model (Qwen2.5-VL): its vision tower, image tokens and
    /// multimodal RoPE.
    pub vl: Option<VlConfig>,
    /// `None`: decide from the presence of `lm_head.weight`.
    pub tie_word_embeddings: Option<bool>,
    /// Biases on the q/k/v projections (or the fused one).
    pub attention_bias: bool,
    /// A bias on the attention's output projection.
    pub o_proj_bias: bool,
    pub mlp_bias: bool,
    /// A bias on `lm_head` (Qwen with `no_bias: false`).
    pub lm_head_bias: bool,
    /// The window of the sliding layers (the description's plan).
    pub sliding_window: Option<usize>,
    /// Per layer: does it use the sliding window? (the description's plan)
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

/// Token ids; one that does not fit a `u32` is dropped, never truncated (the shared
/// range check has already refused it in config.json).
pub fn token_ids(v: Option<&Value>) -> Vec<u32> {
    let id = |x: &Value| x.as_u64().and_then(|n| u32::try_from(n).ok());
    match v {
        Some(n @ Value::Number(_)) => id(n).into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(id).collect(),
        _ => Vec::new(),
    }
}

/// A dimension as `i32`; the shared range check bounds it, and this conversion is
/// checked all the same (never `as i32`).
fn small(source: &str, key: &str, v: u64) -> Result<i32, ConfigError> {
    i32::try_from(v).map_err(|_| {
        load_failed(format!(
            "{source}: `{key}` = {v} is outside the accepted range"
        ))
    })
}

impl Description {
    /// What the worker builds its model from; an error when the worker cannot run this
    /// family ([`crate::unsupported`]'s message) or a value of the config. `source`
    /// names the file in errors.
    pub fn run_config(&self, source: &str) -> Result<RunConfig, ConfigError> {
        if let Some(why) = unsupported(&self.model_type) {
            return Err(load_failed(format!("{source}: {why}")));
        }
        let root = Value::Object(self.view().root_map().clone());
        match self.family {
            Family::Gemma3 => {
                let text = family::gemma3_text(&root, source)?;
                let source = format!("{source} (text_config)");
                let mut cfg = self.build(&text, Decoder::Gemma3Text, &source)?;
                cfg.weight_prefix = Some("language_model.".into());
                Ok(cfg)
            }
            Family::Qwen2Vl | Family::Qwen25Vl => {
                let text = vision::text_value(&root);
                let mut cfg = self.build(&text, Decoder::Qwen2, source)?;
                cfg.vl = Some(vision::vl_config(
                    &root,
                    &text,
                    cfg.head_dim,
                    cfg.hidden_size,
                    cfg.vocab_size,
                    source,
                )?);
                cfg.weight_prefix = Some("language_model.".into());
                Ok(cfg)
            }
            f => {
                let decoder = match f {
                    Family::Llama => Decoder::Llama,
                    Family::Mistral => Decoder::Mistral,
                    Family::Qwen2 => Decoder::Qwen2,
                    Family::Qwen3 => Decoder::Qwen3,
                    Family::Gemma => Decoder::Gemma,
                    Family::Gemma2 => Decoder::Gemma2,
                    Family::Gemma3Text => Decoder::Gemma3Text,
                    Family::Phi3 => Decoder::Phi3,
                    Family::Mixtral => Decoder::Mixtral,
                    Family::Qwen3Moe => Decoder::Qwen3Moe,
                    Family::SmolLm3 => Decoder::SmolLm3,
                    Family::Mimo => Decoder::Mimo,
                    Family::Qwen => Decoder::Qwen,
                    Family::GraniteMoe => Decoder::GraniteMoe,
                    _ => {
                        return Err(load_failed(format!(
                            "{source}: model_type {:?} has no decoder",
                            self.model_type
                        )))
                    }
                };
                self.build(&root, decoder, source)
            }
        }
    }

    /// The run config of a text model whose own config object is `v`.
    fn build(&self, v: &Value, family: Decoder, source: &str) -> Result<RunConfig, ConfigError> {
        let d = &self.dims;
        if d.intermediate == 0 {
            return Err(load_failed(format!(
                "{source}: intermediate_size is missing or not a positive integer"
            )));
        }
        let (hidden_size, num_heads, num_kv_heads, head_dim) = (
            small(source, "hidden_size", d.hidden)?,
            small(source, "num_attention_heads", d.heads)?,
            small(source, "num_key_value_heads", d.kv_heads)?,
            small(source, "head_dim", d.head_dim)?,
        );
        let num_layers = usize::try_from(d.layers).map_err(|_| {
            load_failed(format!(
                "{source}: num_hidden_layers {} is too large",
                d.layers
            ))
        })?;
        if num_heads % num_kv_heads != 0 {
            return Err(load_failed(format!(
                "{source}: num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
            )));
        }
        let rope_params = v.get("rope_parameters").filter(|p| p.is_object());
        let default_theta = match family {
            Decoder::Qwen2 | Decoder::Gemma3Text | Decoder::Mixtral => 1_000_000.0,
            _ => 10_000.0,
        };
        let rope_theta = match family {
            // qwen.py builds `nn.RoPE(head_dim)`: base 10000, whatever the config says.
            Decoder::Qwen => 10_000.0,
            _ => num(v, "rope_theta")
                .or_else(|| rope_params.and_then(|p| num(p, "rope_theta")))
                .unwrap_or(default_theta) as f32,
        };
        let scaling = v
            .get("rope_scaling")
            .filter(|s| s.is_object())
            .or(rope_params);
        let max_pos = num(v, "max_position_embeddings");
        let rope_dims = match family {
            Decoder::Phi3 => {
                let f = num(v, "partial_rotary_factor").unwrap_or(1.0);
                (f64::from(head_dim) * f) as i64
            }
            _ => i64::from(head_dim),
        };
        let rope_dims = i32::try_from(rope_dims).map_err(|_| {
            load_failed(format!(
                "{source}: `partial_rotary_factor × head_dim` = {rope_dims} is outside the accepted range"
            ))
        })?;
        if rope_dims < 2 || rope_dims % 2 != 0 || rope_dims > head_dim {
            return Err(load_failed(format!(
                "{source}: {rope_dims} rotary features per head is not an even number within head_dim {head_dim}"
            )));
        }
        let rope = match family {
            // mlx-lm 0.32.2 builds a plain nn.RoPE for these, whatever rope_scaling says.
            Decoder::Gemma
            | Decoder::Gemma2
            | Decoder::Mixtral
            | Decoder::Qwen3Moe
            | Decoder::Qwen => RopeKind::Default { scale: 1.0 },
            Decoder::Gemma3Text => {
                rope::parse(scaling, max_pos.or(Some(32768.0)), rope_dims, source)?
            }
            Decoder::Phi3 => family::phi3_rope(v, scaling, rope_dims, source)?,
            // mimo.py: max_position_embeddings defaults to 32768.
            Decoder::Mimo => rope::parse(scaling, max_pos.or(Some(32768.0)), rope_dims, source)?,
            _ => rope::parse(scaling, max_pos, rope_dims, source)?,
        };
        let (sliding_window, sliding_layers) = self.sliding(v, family, source)?;
        let (quantization, quantization_raw) = match v.get("quantization") {
            Some(Value::Object(q)) => {
                let mode = q.get("mode").and_then(Value::as_str).unwrap_or("affine");
                if mode != "affine" {
                    return Err(load_failed(format!(
                        "{source}: quantization mode {mode:?} is not supported (only MLX affine quantization)"
                    )));
                }
                let param = |key: &str, default: i64| {
                    let n = q.get(key).and_then(Value::as_i64).unwrap_or(default);
                    i32::try_from(n).map_err(|_| {
                        load_failed(format!(
                            "{source}: `quantization.{key}` = {n} is outside the accepted range"
                        ))
                    })
                };
                let gs = param("group_size", 64)?;
                let bits = param("bits", 4)?;
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
            Decoder::Gemma2 => 1.0 / num(v, "query_pre_attn_scalar").unwrap_or(144.0).sqrt(),
            Decoder::Gemma3Text => num(v, "query_pre_attn_scalar").unwrap_or(256.0).powf(-0.5),
            Decoder::GraniteMoe => extras::required(v, "attention_multiplier", source)?,
            _ => f64::from(head_dim).powf(-0.5),
        } as f32;
        // Gemma 2's caps default to 50 and 30 (mlx-lm's defaults); `null` turns one off.
        let softcap = |key: &str, default: f64| match v.get(key) {
            None => Some(default as f32),
            Some(x) => x.as_f64().filter(|c| *c > 0.0).map(|c| c as f32),
        };
        let (attn_softcap, final_softcap) = match family {
            Decoder::Gemma2 => (
                softcap("attn_logit_softcapping", 50.0),
                softcap("final_logit_softcapping", 30.0),
            ),
            _ => (None, None),
        };
        let moe = MoeConfig::parse(v, family, num_layers, source)?;
        let rope_layers = extras::rope_layers(v, family, num_layers, source)?;
        let multipliers = match family {
            Decoder::GraniteMoe => Some(Multipliers::read(v, source)?),
            _ => None,
        };
        let intermediate = small(source, "intermediate_size", d.intermediate)?;
        let intermediate_size = match family {
            // qwen.py: w1 and w2 are each `intermediate_size // 2` wide.
            Decoder::Qwen => extras::qwen_checks(v, hidden_size, num_heads, intermediate, source)?,
            _ => intermediate,
        };
        let no_bias = v.get("no_bias").and_then(Value::as_bool).unwrap_or(true);
        let attention_bias = match family {
            Decoder::Qwen2 | Decoder::Mimo | Decoder::Qwen => true,
            Decoder::Llama | Decoder::Mistral | Decoder::SmolLm3 | Decoder::GraniteMoe => {
                flag("attention_bias")
            }
            _ => false,
        };
        let quantization_raw = match family {
            Decoder::Qwen => quantization_raw.map(extras::qwen_quant_paths),
            _ => quantization_raw,
        };
        Ok(RunConfig {
            model_type: self.model_type.clone(),
            family,
            hidden_size,
            num_layers,
            intermediate_size,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: match family {
                Decoder::Qwen => num(v, "layer_norm_epsilon"),
                _ => num(v, "rms_norm_eps"),
            }
            .unwrap_or(1e-6) as f32,
            vocab_size: small(source, "vocab_size", d.vocab)?,
            rope_theta,
            rope_traditional: !matches!(
                family,
                Decoder::Qwen3
                    | Decoder::Qwen3Moe
                    | Decoder::Gemma3Text
                    | Decoder::Qwen
                    | Decoder::GraniteMoe
            ) && flag("rope_traditional"),
            rope,
            rope_dims,
            rope_local_base: (family == Decoder::Gemma3Text)
                .then(|| num(v, "rope_local_base_freq").unwrap_or(10_000.0) as f32),
            attn_scale,
            attn_softcap,
            final_softcap,
            moe,
            rope_layers,
            multipliers,
            skip_weights: match family {
                Decoder::Mimo => vec!["model.mtp_layers.".into()],
                _ => Vec::new(),
            },
            weight_prefix: None,
            vl: None,
            tie_word_embeddings: match family {
                // mlx-lm: Gemma 2 always ties; Gemma 3 ties when lm_head.weight is absent.
                Decoder::Gemma | Decoder::Gemma2 => Some(true),
                Decoder::Gemma3Text => None,
                // qwen.py always has an lm_head; mimo.py does unless tied; granitemoe.py
                // and smollm3.py (llama's arguments) tie unless told not to.
                Decoder::Qwen => Some(false),
                Decoder::Mimo => Some(flag("tie_word_embeddings")),
                Decoder::GraniteMoe | Decoder::SmolLm3 => Some(
                    v.get("tie_word_embeddings")
                        .and_then(Value::as_bool)
                        .unwrap_or(true),
                ),
                _ => v.get("tie_word_embeddings").and_then(Value::as_bool),
            },
            attention_bias,
            o_proj_bias: match family {
                Decoder::Qwen => !no_bias,
                Decoder::Qwen2 | Decoder::Mimo => false,
                _ => attention_bias,
            },
            mlp_bias: match family {
                Decoder::Llama | Decoder::Mistral | Decoder::SmolLm3 => flag("mlp_bias"),
                Decoder::Qwen => !no_bias,
                _ => false,
            },
            lm_head_bias: family == Decoder::Qwen && !no_bias,
            sliding_window,
            sliding_layers,
            eos_token_ids: token_ids(v.get("eos_token_id")),
            quantization,
            quantization_raw,
        })
    }

    /// The window and which layers slide, from the description's plan; a Llama or
    /// Mistral `layer_types` the worker cannot follow is an error naming it.
    fn sliding(
        &self,
        v: &Value,
        family: Decoder,
        source: &str,
    ) -> Result<(Option<usize>, Vec<bool>), ConfigError> {
        if matches!(family, Decoder::Llama | Decoder::Mistral | Decoder::SmolLm3) {
            if let Some(types) = v.get("layer_types").and_then(Value::as_array) {
                if types.len() != self.layers.len() {
                    return Err(load_failed(format!(
                        "{source}: layer_types has {} entries for {} layers",
                        types.len(),
                        self.layers.len()
                    )));
                }
                let sliding = types
                    .iter()
                    .any(|t| t.as_str() == Some("sliding_attention"));
                if sliding && crate::layers::window_of(self.view(), self.family).is_none() {
                    return Err(load_failed(format!(
                        "{source}: sliding_attention layers but no sliding_window"
                    )));
                }
            }
        }
        let window = self.layers.iter().find_map(|l| l.window());
        let window =
            match window {
                Some(w) => Some(usize::try_from(w).map_err(|_| {
                    load_failed(format!("{source}: sliding_window {w} is too large"))
                })?),
                None => None,
            };
        Ok((
            window,
            self.layers.iter().map(|l| l.window().is_some()).collect(),
        ))
    }
}

impl RunConfig {
    /// Adds the end-of-sequence ids of `generation_config.json` (parsed) to the
    /// config's.
    pub fn add_generation_eos(&mut self, generation: &Value) {
        for id in token_ids(generation.get("eos_token_id")) {
            if !self.eos_token_ids.contains(&id) {
                self.eos_token_ids.push(id);
            }
        }
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

#[cfg(test)]
mod tests;
