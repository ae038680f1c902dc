//! `make-model`'s family parts: the config.json of Gemma 2/3, Phi-3, Mixtral, Qwen3-MoE,
//! SmolLM3, MiMo, Qwen (1) and Granite MoE folders, their expert tensors (per expert as
//! Hugging Face names them, or stacked as mlx-community's `switch_mlp`), the first
//! Qwen's tensor names, and the `--rope-scaling`, `--sliding-window` and
//! `--max-position` options.

use protocol::ModelSpec;
use serde_json::{json, Map, Value};

use super::{Tensor, TensorSpec};

/// The families whose rope_scaling mlx-lm 0.32.2 applies (it ignores it for the rest).
const ROPE_SCALED: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma3_text",
    "gemma3",
    "phi3",
    "smollm3",
    "mimo",
    "granitemoe",
];

fn moe(spec: &ModelSpec) -> bool {
    matches!(spec.arch.as_str(), "mixtral" | "qwen3_moe" | "granitemoe")
}

/// The KV heads a folder has: the first Qwen has none of its own (every head is one).
pub(super) fn kv_heads(spec: &ModelSpec) -> u32 {
    if spec.arch == "qwen" {
        spec.heads
    } else {
        spec.kv_heads
    }
}

/// A tensor of the shared layout under the first Qwen's name (`transformer.h.N.attn.
/// c_attn`, …): the inverse of the engine's `qwen_weight_name`.
pub(super) fn qwen_name(name: &str) -> String {
    if let Some(r) = name.strip_prefix("model.embed_tokens") {
        return format!("transformer.wte{r}");
    }
    if let Some(r) = name.strip_prefix("model.norm") {
        return format!("transformer.ln_f{r}");
    }
    let Some((layer, tail)) = name
        .strip_prefix("model.layers.")
        .and_then(|r| r.split_once('.'))
    else {
        return name.to_string();
    };
    const MAP: &[(&str, &str)] = &[
        ("input_layernorm", "ln_1"),
        ("post_attention_layernorm", "ln_2"),
        ("self_attn.qkv_proj", "attn.c_attn"),
        ("self_attn.o_proj", "attn.c_proj"),
        ("mlp.gate_proj", "mlp.w2"),
        ("mlp.up_proj", "mlp.w1"),
        ("mlp.down_proj", "mlp.c_proj"),
    ];
    MAP.iter()
        .find_map(|(from, to)| {
            let after = tail.strip_prefix(from)?;
            Some(format!("transformer.h.{layer}.{to}{after}"))
        })
        .unwrap_or_else(|| name.to_string())
}

/// Experts and experts per token, with the families' tiny defaults.
pub(super) fn experts(spec: &ModelSpec) -> (u32, u32) {
    let o = &spec.options;
    (
        if o.experts == 0 { 4 } else { o.experts },
        if o.experts_per_token == 0 {
            2
        } else {
            o.experts_per_token
        },
    )
}

/// `TYPE[:FACTOR]` → (type, factor).
fn rope_option(s: &str) -> Result<(&str, Option<f64>), String> {
    let (kind, factor) = match s.split_once(':') {
        Some((k, f)) => {
            let f: f64 = f
                .parse()
                .ok()
                .filter(|f: &f64| f.is_finite() && *f >= 1.0)
                .ok_or_else(|| format!("--rope-scaling {s}: the factor must be a number ≥ 1"))?;
            (k, Some(f))
        }
        None => (s, None),
    };
    if !["linear", "dynamic", "yarn", "longrope", "llama3", "none"].contains(&kind) {
        return Err(format!(
            "--rope-scaling {s}: the type must be linear, dynamic, yarn, longrope, llama3 or none"
        ));
    }
    Ok((kind, factor))
}

pub(super) fn check(spec: &ModelSpec) -> Result<(), String> {
    let o = &spec.options;
    if !moe(spec) && (o.experts != 0 || o.experts_per_token != 0 || o.stacked_experts) {
        return Err(format!(
            "--experts, --experts-per-token and --stacked-experts are for mixtral and qwen3_moe (and granitemoe), not {}",
            spec.arch
        ));
    }
    if spec.arch == "granitemoe" && spec.quant_bits.is_some() && !o.stacked_experts {
        return Err(
            "--quant-bits for granitemoe needs --stacked-experts (mlx-lm quantizes its experts only in the switch_mlp layout)"
                .into(),
        );
    }
    if moe(spec) {
        let (e, k) = experts(spec);
        if k > e {
            return Err(format!(
                "--experts-per-token {k} is more than --experts {e}"
            ));
        }
    }
    if let Some(r) = &o.rope_scaling {
        let (kind, _) = rope_option(r)?;
        if kind != "none" && !ROPE_SCALED.contains(&spec.arch.as_str()) {
            return Err(format!(
                "--rope-scaling: mlx-lm 0.32.2 ignores rope_scaling for {} (a plain RoPE), so the folder would not test it",
                spec.arch
            ));
        }
        if spec.arch == "phi3" && !["linear", "longrope", "none"].contains(&kind) {
            return Err(format!(
                "--rope-scaling {kind}: phi3 takes linear or longrope (as mlx-lm's phi3)"
            ));
        }
    }
    if o.sliding_window == Some(0) || o.max_position == Some(0) {
        return Err("--sliding-window and --max-position must be positive".into());
    }
    Ok(())
}

/// The router and experts of one MoE layer at `p` (`model.layers.N`).
pub(super) fn expert_specs(
    spec: &ModelSpec,
    p: &str,
    lin: &dyn Fn(String, i32, i32) -> TensorSpec,
) -> Vec<TensorSpec> {
    let (e, _) = experts(spec);
    let (d, i) = (spec.hidden as i32, spec.intermediate as i32);
    if spec.arch == "granitemoe" {
        return granite_expert_specs(spec, p, lin);
    }
    let (at, names): (String, [(&str, &str, bool); 3]) = if spec.arch == "mixtral" {
        (
            format!("{p}.block_sparse_moe"),
            [
                ("w1", "gate_proj", false),
                ("w3", "up_proj", false),
                ("w2", "down_proj", true),
            ],
        )
    } else {
        (
            format!("{p}.mlp"),
            [
                ("gate_proj", "gate_proj", false),
                ("up_proj", "up_proj", false),
                ("down_proj", "down_proj", true),
            ],
        )
    };
    let mut gate = lin(format!("{at}.gate.weight"), e as i32, d);
    if spec.arch == "qwen3_moe" {
        // mlx-lm's qwen3_moe quant_predicate: the router at 8 bits.
        gate.bits = Some(8);
    }
    let mut t = vec![gate];
    for (hf, mlx, down) in names {
        let (out, inp) = if down { (d, i) } else { (i, d) };
        if spec.options.stacked_experts {
            let mut s = lin(format!("{at}.switch_mlp.{mlx}.weight"), out, inp);
            s.shape.insert(0, e as i32);
            t.push(s);
        } else {
            for x in 0..e {
                t.push(lin(format!("{at}.experts.{x}.{hf}.weight"), out, inp));
            }
        }
    }
    t
}

/// Granite MoE's router and experts: mlx-community's `switch_mlp`, or Hugging Face's
/// `input_linear` (gate and up, stacked along the rows) and `output_linear`.
fn granite_expert_specs(
    spec: &ModelSpec,
    p: &str,
    lin: &dyn Fn(String, i32, i32) -> TensorSpec,
) -> Vec<TensorSpec> {
    let (e, _) = experts(spec);
    let (d, i) = (spec.hidden as i32, spec.intermediate as i32);
    let at = format!("{p}.block_sparse_moe");
    let mut router = lin(format!("{at}.router.layer.weight"), e as i32, d);
    // mlx-lm's granitemoe quant_predicate: the router at 8 bits.
    router.bits = Some(8);
    let stacked = |name: String, out: i32, inp: i32| {
        let mut s = lin(name, out, inp);
        s.shape.insert(0, e as i32);
        s
    };
    let mut t = vec![router];
    if spec.options.stacked_experts {
        t.push(stacked(format!("{at}.switch_mlp.gate_proj.weight"), i, d));
        t.push(stacked(format!("{at}.switch_mlp.up_proj.weight"), i, d));
        t.push(stacked(format!("{at}.switch_mlp.down_proj.weight"), d, i));
    } else {
        t.push(stacked(format!("{at}.input_linear.weight"), 2 * i, d));
        t.push(stacked(format!("{at}.output_linear.weight"), d, i));
    }
    t
}

/// The family part of config.json.
pub(super) fn config(spec: &ModelSpec) -> Value {
    let hd = spec.hidden / spec.heads;
    let (e, k) = experts(spec);
    match spec.arch.as_str() {
        // Caps far smaller than Gemma 2's 50/30, so that random weights' scores and
        // logits (of order 1) are bent by them.
        "gemma2" => json!({
            "rope_theta": 10000.0, "query_pre_attn_scalar": hd, "attn_logit_softcapping": 2.0,
            "final_logit_softcapping": 0.25, "sliding_window": 4096,
            "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 8192
        }),
        "gemma" => json!({
            "rope_theta": 10000.0, "hidden_act": "gelu", "max_position_embeddings": 8192,
            "attention_bias": false
        }),
        "gemma3_text" => json!({
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "query_pre_attn_scalar": hd,
            "sliding_window": 512, "sliding_window_pattern": spec.layers.clamp(1, 6),
            "hidden_activation": "gelu_pytorch_tanh", "rope_scaling": null
        }),
        "phi3" => json!({
            "rope_theta": 10000.0, "max_position_embeddings": 4096,
            "original_max_position_embeddings": 4096, "partial_rotary_factor": 1.0,
            "sliding_window": 2047, "rope_scaling": null, "rms_norm_eps": 1e-5
        }),
        "mixtral" => json!({
            "rope_theta": 1000000.0, "num_local_experts": e, "num_experts_per_tok": k,
            "sliding_window": null, "rms_norm_eps": 1e-5, "router_aux_loss_coef": 0.02
        }),
        "smollm3" => json!({
            "rope_theta": 5000000.0, "attention_bias": false, "mlp_bias": false,
            "no_rope_layer_interval": 4, "no_rope_layers": smollm3_rope_layers(spec),
            "use_sliding_window": false, "sliding_window": null, "rope_scaling": null
        }),
        "mimo" => json!({
            "rope_theta": 640000.0, "attention_bias": true, "num_nextn_predict_layers": 1,
            "use_sliding_window": false, "sliding_window": 32768, "rms_norm_eps": 1e-5
        }),
        // Every head is a KV head, `intermediate_size` is w1 and w2 together; the RoPE
        // base Qwen-72B names, which mlx-lm does not read (it rotates with 10000).
        "qwen" => json!({
            "kv_channels": hd, "layer_norm_epsilon": 1e-6, "no_bias": true,
            "intermediate_size": 2 * spec.intermediate, "seq_length": 8192,
            "rope_theta": 1000000, "rotary_emb_base": 1000000, "rotary_pct": 1.0,
            "max_position_embeddings": 8192,
            "padded_vocab_size": spec.vocab
        }),
        // Granite's multipliers, none of them 1. Not granite-3.1's (12, 0.22): on random
        // weights with tied embeddings those make each token its own successor.
        "granitemoe" => json!({
            "rope_theta": 1500000.0, "num_local_experts": e, "num_experts_per_tok": k,
            "attention_multiplier": 0.25, "embedding_multiplier": 0.5,
            "residual_multiplier": 0.8, "logits_scaling": 3.0, "attention_bias": false,
            "max_position_embeddings": 131072, "rope_scaling": null
        }),
        _ => json!({
            "rope_theta": 1000000.0, "num_experts": e, "num_experts_per_tok": k,
            "moe_intermediate_size": spec.intermediate, "decoder_sparse_step": 1,
            "mlp_only_layers": [], "norm_topk_prob": true, "attention_bias": false,
            "use_sliding_window": false, "sliding_window": null
        }),
    }
}

/// SmolLM3's `no_rope_layers` (1 = RoPE): every 4th layer without, as its checkpoints
/// have; the first layer too, so that a 2-layer folder has a NoPE layer.
fn smollm3_rope_layers(spec: &ModelSpec) -> Vec<u32> {
    (0..spec.layers)
        .map(|i| u32::from(i != 0 && (i + 1) % 4 != 0))
        .collect()
}

/// `--rope-scaling`, `--sliding-window` and `--max-position` applied to config.json.
pub(super) fn apply_options(spec: &ModelSpec, c: &mut Map<String, Value>) {
    let o = &spec.options;
    if let Some(m) = o.max_position {
        c.insert("max_position_embeddings".into(), m.into());
    }
    if let Some(w) = o.sliding_window {
        c.insert("sliding_window".into(), w.into());
    }
    let Some(Ok((kind, factor))) = o.rope_scaling.as_deref().map(rope_option) else {
        return;
    };
    let f = factor.unwrap_or(4.0);
    let half = (spec.hidden / spec.heads / 2) as usize;
    let max_pos = c
        .get("max_position_embeddings")
        .and_then(Value::as_f64)
        .unwrap_or(4096.0);
    let scaling = match kind {
        "none" => Value::Null,
        "linear" | "dynamic" => json!({"type": kind, "factor": f}),
        "llama3" => json!({"rope_type": "llama3", "factor": f, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        "yarn" => json!({"rope_type": "yarn", "factor": f, "beta_fast": 32.0, "beta_slow": 1.0,
            "original_max_position_embeddings": (max_pos / f).round().max(1.0) as u64}),
        _ => {
            // Factors rising from 1 to `f` over the frequencies, as LongRoPE's do.
            let ramp = |top: f64| -> Vec<f64> {
                (0..half)
                    .map(|j| 1.0 + (top - 1.0) * j as f64 / (half.max(2) - 1) as f64)
                    .collect()
            };
            let orig = (max_pos / 32.0).round().max(1.0) as u64;
            c.insert("original_max_position_embeddings".into(), orig.into());
            json!({"type": "longrope", "long_factor": ramp(f), "short_factor": ramp(1.5),
                "original_max_position_embeddings": orig})
        }
    };
    c.insert("rope_scaling".into(), scaling);
}

/// Per-layer quantization entries of config.json (Qwen3-MoE's 8-bit router).
pub(super) fn quant_overrides(spec: &ModelSpec) -> Map<String, Value> {
    let mut m = Map::new();
    let eight = json!({"group_size": spec.group_size, "bits": 8});
    if spec.arch == "qwen3_moe" {
        for l in 0..spec.layers {
            m.insert(format!("model.layers.{l}.mlp.gate"), eight.clone());
        }
    }
    if spec.arch == "granitemoe" {
        for l in 0..spec.layers {
            for at in ["block_sparse_moe.router.layer", "self_attn.o_proj"] {
                m.insert(format!("model.layers.{l}.{at}"), eight.clone());
            }
        }
        if !super::text_tensors::tied(spec) {
            m.insert("lm_head".into(), eight);
        }
    }
    m
}

/// A gemma3_text config.json as a multimodal Gemma 3's: the text model under
/// `text_config`, vocab, eos and quantization at the top (mlx-lm's `gemma3.py` reads it so).
pub(super) fn wrap_gemma3(text: Value) -> Value {
    let mut text = match text {
        Value::Object(m) => m,
        other => return other,
    };
    let mut top = Map::new();
    top.insert(
        "architectures".into(),
        json!(["Gemma3ForConditionalGeneration"]),
    );
    top.insert("model_type".into(), "gemma3".into());
    for key in ["vocab_size", "eos_token_id", "torch_dtype"] {
        if let Some(v) = text.get(key) {
            top.insert(key.into(), v.clone());
        }
    }
    for key in ["quantization", "quantization_config", "architectures"] {
        if let Some(q) = text.remove(key) {
            if key != "architectures" {
                top.insert(key.into(), q);
            }
        }
    }
    top.insert("mm_tokens_per_image".into(), 256.into());
    top.insert(
        "vision_config".into(),
        json!({"model_type": "siglip_vision_model", "hidden_size": 8}),
    );
    top.insert("text_config".into(), Value::Object(text));
    Value::Object(top)
}

/// The text model's tensors under `language_model.`, and a (tiny) vision tower that a
/// text-only run must leave unread.
pub(super) fn wrap_gemma3_tensors(
    tensors: Vec<(String, Tensor)>,
    spec: &ModelSpec,
) -> Vec<(String, Tensor)> {
    let tag = tensors
        .iter()
        .find(|(n, _)| n.ends_with("input_layernorm.weight"))
        .map_or("BF16", |(_, t)| t.dtype);
    let width = if tag == "F32" { 4 } else { 2 };
    let mut out: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| (format!("language_model.{n}"), t))
        .collect();
    let n = 8 * spec.hidden as usize;
    out.push((
        "vision_tower.vision_model.post_layernorm.weight".into(),
        Tensor {
            dtype: tag,
            shape: vec![8, spec.hidden as i32],
            data: vec![0; n * width],
        },
    ));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
