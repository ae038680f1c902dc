//! What a GGUF file means as a Hugging Face / MLX model: the `model_type`, the
//! `config.json` its metadata implies, the MLX name of each tensor, and how each tensor
//! type is carried into an MLX folder (kept as MLX affine quantization, or dequantized).
use serde_json::{json, Map, Value};

use super::header::{GgufHeader, MetaValue};
use super::types::GgmlType;
use crate::dtype::Dtype;
use crate::error::EstimateError;

/// GGUF architectures that can be read, with their `model_type` and whether llama.cpp
/// permuted their Q/K projection rows for its RoPE.
const ARCHS: [(&str, &str, bool); 4] = [
    ("llama", "llama", true),
    ("mistral", "mistral", true),
    ("qwen2", "qwen2", false),
    ("qwen3", "qwen3", false),
];

/// A supported architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arch {
    /// `general.architecture` (the metadata prefix).
    pub gguf: String,
    /// The Hugging Face `model_type`.
    pub model_type: &'static str,
    /// Whether `attn_q` / `attn_k` rows are stored permuted (llama.cpp's convert does it
    /// for the Llama family so its interleaved RoPE applies).
    pub permuted_qk: bool,
}

/// The architecture of `h`, or an error saying it is not supported yet.
pub fn architecture(h: &GgufHeader) -> Result<Arch, EstimateError> {
    let name = h
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| gguf_error(h, "general.architecture is missing".into()))?;
    ARCHS
        .iter()
        .find(|(g, _, _)| *g == name)
        .map(|&(g, model_type, permuted_qk)| Arch {
            gguf: g.to_string(),
            model_type,
            permuted_qk,
        })
        .ok_or_else(|| {
            gguf_error(
                h,
                format!(
                    "architecture {name} is not supported yet (supported: {})",
                    ARCHS.map(|a| a.0).join(", ")
                ),
            )
        })
}

pub(crate) fn gguf_error(h: &GgufHeader, reason: String) -> EstimateError {
    EstimateError::Gguf {
        path: h.path.clone(),
        reason,
    }
}

/// How a tensor type is written into an MLX folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// As MLX affine quantization (`w = scale·q + bias` per group of `group` weights);
    /// `exact` when no rounding is involved.
    Quant {
        /// Bits per weight.
        bits: u8,
        /// Weights per group.
        group: u32,
        /// Lossless (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) or with the combined scales rounded
        /// when they are f16 (Q4_K, Q5_K).
        exact: bool,
    },
    /// Dequantized (or converted) to the folder's dtype.
    Dense,
    /// Not readable yet.
    Unsupported,
}

/// How a 2-D weight of type `ty` is carried. (1-D tensors are always dense.)
pub fn target(ty: GgmlType) -> Target {
    use GgmlType::*;
    match ty {
        Q4_0 | Q4_1 => Target::Quant {
            bits: 4,
            group: 32,
            exact: true,
        },
        Q5_0 | Q5_1 => Target::Quant {
            bits: 5,
            group: 32,
            exact: true,
        },
        Q8_0 => Target::Quant {
            bits: 8,
            group: 32,
            exact: true,
        },
        // Eight sub-blocks of 32 with 6-bit scales and mins: scale·d and min·dmin are
        // rounded to f16 (exact in f32), nothing else.
        Q4K => Target::Quant {
            bits: 4,
            group: 32,
            exact: false,
        },
        Q5K => Target::Quant {
            bits: 5,
            group: 32,
            exact: false,
        },
        // Sub-blocks of 16 weights: MLX groups are 32, 64 or 128.
        F32 | F16 | Bf16 | Q2K | Q3K | Q6K => Target::Dense,
        _ => Target::Unsupported,
    }
}

/// The MLX (Hugging Face) name of a GGUF tensor, `None` for tensors the model does not
/// use (`rope_freqs`).
pub fn hf_name(name: &str) -> Option<String> {
    let (base, suffix) = name.rsplit_once('.')?;
    if !matches!(suffix, "weight" | "bias") {
        return None;
    }
    let mapped = match base {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = base.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: u64 = layer.parse().ok()?;
            let part = match part {
                "attn_norm" => "input_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "attn_q_norm" => "self_attn.q_norm",
                "attn_k_norm" => "self_attn.k_norm",
                "ffn_norm" => "post_attention_layernorm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{part}")
        }
    };
    Some(format!("{mapped}.{suffix}"))
}

/// Tensors dropped on import because the MLX model recomputes them.
pub fn is_dropped(name: &str) -> bool {
    name == "rope_freqs.weight"
}

/// A float stored as f32 in the file, printed as its shortest f32 form (1e-5, not
/// 9.99999974737875e-6).
fn f32_value(v: f64) -> Value {
    let short: f64 = (v as f32).to_string().parse().unwrap_or(v);
    json!(short)
}

/// The dtype an import writes dense tensors in by default: f16 when quantized tensors
/// are carried (their f16 scales stay exact, and MLX would promote a bf16/f16 mix to
/// f32), else bf16.
pub fn default_dtype(h: &GgufHeader) -> Dtype {
    let carried = h
        .tensors
        .iter()
        .any(|t| t.dims.len() == 2 && matches!(target(t.ty), Target::Quant { .. }));
    if carried {
        Dtype::F16
    } else {
        Dtype::Bf16
    }
}

/// The `config.json` an import of `h` writes, with `dtype` for dense tensors; `carry`:
/// whether quantized blocks are carried as MLX quantized weights (else all dense).
pub fn hf_config(
    h: &GgufHeader,
    dtype: Dtype,
    carry: bool,
) -> Result<Map<String, Value>, EstimateError> {
    let arch = architecture(h)?;
    let a = &arch.gguf;
    let key = |k: &str| format!("{a}.{k}");
    let uint = |k: &str| h.get(&key(k)).and_then(MetaValue::as_u64);
    let need = |k: &str| {
        uint(k).filter(|&n| n > 0).ok_or_else(|| {
            gguf_error(
                h,
                format!("{} is missing or not a positive integer", key(k)),
            )
        })
    };
    let hidden = need("embedding_length")?;
    let layers = need("block_count")?;
    let heads = need("attention.head_count")?;
    let intermediate = need("feed_forward_length")?;
    let kv_heads = uint("attention.head_count_kv").unwrap_or(heads);
    if kv_heads == 0 || kv_heads > heads || heads % kv_heads != 0 {
        return Err(gguf_error(
            h,
            format!("{kv_heads} KV heads do not divide {heads} attention heads"),
        ));
    }
    let embed = h.tensors.iter().find(|t| t.name == "token_embd.weight");
    let vocab = uint("vocab_size")
        .or_else(|| {
            h.get("tokenizer.ggml.tokens")
                .and_then(MetaValue::array_len)
        })
        .or_else(|| embed.and_then(|t| t.dims.get(1).copied()))
        .filter(|&v| v > 0)
        .ok_or_else(|| {
            gguf_error(
                h,
                format!(
                    "{} is missing and there is no vocabulary",
                    key("vocab_size")
                ),
            )
        })?;
    let mut c = Map::new();
    c.insert(
        "architectures".into(),
        json!([architectures(arch.model_type)]),
    );
    c.insert("model_type".into(), json!(arch.model_type));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert("num_hidden_layers".into(), json!(layers));
    c.insert("intermediate_size".into(), json!(intermediate));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert("num_key_value_heads".into(), json!(kv_heads));
    let head_dim = uint("attention.key_length").unwrap_or(hidden / heads);
    c.insert("head_dim".into(), json!(head_dim));
    c.insert("vocab_size".into(), json!(vocab));
    if let Some(eps) = h
        .get(&key("attention.layer_norm_rms_epsilon"))
        .and_then(MetaValue::as_f64)
    {
        c.insert("rms_norm_eps".into(), f32_value(eps));
    }
    let theta = h
        .get(&key("rope.freq_base"))
        .and_then(MetaValue::as_f64)
        .unwrap_or(if arch.model_type.starts_with("qwen") {
            1_000_000.0
        } else {
            10_000.0
        });
    c.insert("rope_theta".into(), f32_value(theta));
    if let Some(ctx) = uint("context_length") {
        c.insert("max_position_embeddings".into(), json!(ctx));
    }
    match h.get(&key("rope.scaling.type")).and_then(MetaValue::as_str) {
        None | Some("none") => {}
        Some("linear") => {
            let factor = h
                .get(&key("rope.scaling.factor"))
                .and_then(MetaValue::as_f64)
                .unwrap_or(1.0);
            c.insert(
                "rope_scaling".into(),
                json!({"type": "linear", "rope_type": "linear", "factor": f32_value(factor)}),
            );
        }
        Some(other) => {
            return Err(gguf_error(
                h,
                format!("RoPE scaling {other:?} is not supported yet"),
            ))
        }
    }
    if let Some(w) = uint("attention.sliding_window").filter(|&w| w > 0) {
        c.insert("sliding_window".into(), json!(w));
    }
    let tied = !h.tensors.iter().any(|t| t.name == "output.weight");
    c.insert("tie_word_embeddings".into(), json!(tied));
    let has_bias = h.tensors.iter().any(|t| t.name.ends_with("attn_q.bias"));
    if arch.model_type == "llama" || arch.model_type == "mistral" {
        c.insert("attention_bias".into(), json!(has_bias));
        c.insert("mlp_bias".into(), json!(false));
    }
    for (k, field) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ] {
        if let Some(id) = h.get(k).and_then(MetaValue::as_u64) {
            c.insert(field.into(), json!(id));
        }
    }
    c.insert("torch_dtype".into(), json!(torch_name(dtype)));
    if let Some(q) = quantization(h).filter(|_| carry) {
        c.insert("quantization".into(), Value::Object(q.clone()));
        c.insert("quantization_config".into(), Value::Object(q));
    }
    Ok(c)
}

/// The `torch_dtype` name of a float dtype.
pub fn torch_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F16 => "float16",
        Dtype::F32 => "float32",
        _ => "bfloat16",
    }
}

fn architectures(model_type: &str) -> &'static str {
    match model_type {
        "mistral" => "MistralForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        "qwen3" => "Qwen3ForCausalLM",
        _ => "LlamaForCausalLM",
    }
}

/// The MLX `quantization` object: the most common carried bits as the default, every
/// other carried module as an override, dense 2-D modules as `false`.
fn quantization(h: &GgufHeader) -> Option<Map<String, Value>> {
    let mut modules: Vec<(String, Option<(u8, u32)>)> = Vec::new();
    for t in &h.tensors {
        let Some(name) = hf_name(&t.name) else {
            continue;
        };
        let Some(module) = name.strip_suffix(".weight") else {
            continue;
        };
        if t.dims.len() != 2 {
            continue;
        }
        let q = match target(t.ty) {
            Target::Quant { bits, group, .. } => Some((bits, group)),
            _ => None,
        };
        modules.push((module.to_string(), q));
    }
    let mut counts: Vec<((u8, u32), usize)> = Vec::new();
    for q in modules.iter().filter_map(|(_, q)| *q) {
        match counts.iter_mut().find(|(k, _)| *k == q) {
            Some((_, n)) => *n += 1,
            None => counts.push((q, 1)),
        }
    }
    let (default, _) = counts.iter().max_by_key(|(_, n)| *n).copied()?;
    let mut q = Map::new();
    q.insert("group_size".into(), json!(default.1));
    q.insert("bits".into(), json!(default.0));
    for (module, t) in modules {
        match t {
            Some(t) if t == default => {}
            Some((bits, group)) => {
                q.insert(module, json!({"group_size": group, "bits": bits}));
            }
            None => {
                q.insert(module, json!(false));
            }
        }
    }
    Some(q)
}
