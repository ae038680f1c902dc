//! The text model's tensor list: names, shapes and initialisation of every tensor, per
//! family (Phi-3's fused projections, Qwen2's biases, q/k norms, Gemma's extra norms,
//! experts), and whether the head is tied.

use protocol::{ModelSpec, WorkerError};

use super::family;
use super::tensors::{tensors_of, Init, Tensor, TensorSpec};

pub(super) fn tensor_specs(spec: &ModelSpec) -> Vec<TensorSpec> {
    let (d, i, v) = (
        spec.hidden as i32,
        spec.intermediate as i32,
        spec.vocab as i32,
    );
    let hd = d / spec.heads as i32;
    let (qd, kvd) = (spec.heads as i32 * hd, family::kv_heads(spec) as i32 * hd);
    let q = spec.quant_bits.is_some();
    let gs = spec.group_size as i32;
    // std 1/sqrt(fan_in): every projection keeps the activations' scale, so each token's
    // path through the layers differs and greedy decoding does not collapse.
    let lin = |name: String, out: i32, inp: i32| TensorSpec {
        name,
        shape: vec![out, inp],
        init: Init::Normal(1.0 / (inp as f64).sqrt()),
        quantize: q && inp % gs == 0,
        bits: None,
    };
    let vec_of = |name: String, n: i32, init| TensorSpec {
        name,
        shape: vec![n],
        init,
        quantize: false,
        bits: None,
    };
    // Gemma scales the (tied) embeddings by √hidden: smaller ones keep the random blocks,
    // not the input token, in charge of the next token.
    let embed_std = if spec.arch.starts_with("gemma") {
        0.1
    } else {
        1.0
    } / (d as f64).sqrt();
    let mut t = vec![TensorSpec {
        name: "model.embed_tokens.weight".into(),
        shape: vec![v, d],
        init: Init::Normal(embed_std),
        quantize: q && d % gs == 0,
        bits: None,
    }];
    let arch = spec.arch.as_str();
    let gemma = arch.starts_with("gemma");
    // Gemma norms are `(1 + weight)`: small random weights around 0, not ones.
    let norm_init = if gemma { Init::Normal(0.1) } else { Init::Ones };
    for l in 0..spec.layers {
        let p = format!("model.layers.{l}");
        if arch == "phi3" || arch == "qwen" {
            t.push(lin(
                format!("{p}.self_attn.qkv_proj.weight"),
                qd + 2 * kvd,
                d,
            ));
        } else {
            t.push(lin(format!("{p}.self_attn.q_proj.weight"), qd, d));
            t.push(lin(format!("{p}.self_attn.k_proj.weight"), kvd, d));
            t.push(lin(format!("{p}.self_attn.v_proj.weight"), kvd, d));
        }
        t.push(lin(format!("{p}.self_attn.o_proj.weight"), d, qd));
        if arch == "qwen" {
            t.push(vec_of(
                format!("{p}.self_attn.qkv_proj.bias"),
                qd + 2 * kvd,
                Init::Normal(0.02),
            ));
        }
        if arch == "qwen2" || arch == "mimo" {
            t.push(vec_of(
                format!("{p}.self_attn.q_proj.bias"),
                qd,
                Init::Normal(0.02),
            ));
            t.push(vec_of(
                format!("{p}.self_attn.k_proj.bias"),
                kvd,
                Init::Normal(0.02),
            ));
            t.push(vec_of(
                format!("{p}.self_attn.v_proj.bias"),
                kvd,
                Init::Normal(0.02),
            ));
        }
        if ["qwen3", "qwen3_moe", "gemma3_text"].contains(&arch) {
            t.push(vec_of(
                format!("{p}.self_attn.q_norm.weight"),
                hd,
                norm_init,
            ));
            t.push(vec_of(
                format!("{p}.self_attn.k_norm.weight"),
                hd,
                norm_init,
            ));
        }
        match arch {
            "phi3" => {
                t.push(lin(format!("{p}.mlp.gate_up_proj.weight"), 2 * i, d));
                t.push(lin(format!("{p}.mlp.down_proj.weight"), d, i));
            }
            "mixtral" | "qwen3_moe" | "granitemoe" => {
                t.extend(family::expert_specs(spec, &p, &lin))
            }
            _ => {
                t.push(lin(format!("{p}.mlp.gate_proj.weight"), i, d));
                t.push(lin(format!("{p}.mlp.up_proj.weight"), i, d));
                t.push(lin(format!("{p}.mlp.down_proj.weight"), d, i));
            }
        }
        t.push(vec_of(format!("{p}.input_layernorm.weight"), d, norm_init));
        t.push(vec_of(
            format!("{p}.post_attention_layernorm.weight"),
            d,
            norm_init,
        ));
        if gemma && arch != "gemma" {
            t.push(vec_of(
                format!("{p}.pre_feedforward_layernorm.weight"),
                d,
                norm_init,
            ));
            t.push(vec_of(
                format!("{p}.post_feedforward_layernorm.weight"),
                d,
                norm_init,
            ));
        }
    }
    t.push(vec_of("model.norm.weight".into(), d, norm_init));
    if !tied(spec) {
        let mut head = lin("lm_head.weight".into(), v, d);
        head.init = Init::Normal(embed_std);
        if arch == "granitemoe" {
            // mlx-lm's granitemoe quant_predicate: lm_head at 8 bits.
            head.bits = Some(8);
        }
        t.push(head);
    }
    if arch == "granitemoe" {
        for s in t
            .iter_mut()
            .filter(|s| s.name.ends_with("self_attn.o_proj.weight"))
        {
            s.bits = Some(8);
        }
    }
    if arch == "qwen" {
        for s in &mut t {
            s.name = family::qwen_name(&s.name);
        }
    }
    t.sort_by(|a, b| a.name.cmp(&b.name));
    t
}

/// Qwen 2/3, Gemma, SmolLM3 and Granite MoE folders tie the output projection to the
/// embeddings (as small Qwens, every Gemma, SmolLM3 and Granite MoE do); Llama, Mistral,
/// Phi-3, Mixtral, MiMo and the first Qwen have their own `lm_head`.
pub(super) fn tied(spec: &ModelSpec) -> bool {
    let arch = spec.arch.as_str();
    (arch.starts_with("qwen") && arch != "qwen")
        || arch.starts_with("gemma")
        || ["smollm3", "granitemoe"].contains(&arch)
}

pub(super) fn build_tensors(spec: &ModelSpec) -> Result<Vec<(String, Tensor)>, WorkerError> {
    tensors_of(spec, tensor_specs(spec))
}
