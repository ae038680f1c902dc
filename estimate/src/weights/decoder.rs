//! The generic decoder's weights (Llama, Mistral, Qwen, Phi, Gemma, gpt-oss, DeepSeek
//! MLA, MoE and more), with Gated DeltaNet layers and MTP heads.

use super::counter::{Counter, Part};
use super::{layer_names, LayerKind, Names, TextDims};
use crate::config::Config;
use crate::error::EstimateError;

fn layers_prefix(names: Names<'_>, default: &str) -> String {
    names
        .0
        .and_then(|n| {
            n.iter()
                .find(|s| {
                    s.contains(".layers.0.")
                        && !s.contains("vision")
                        && !s.contains("visual")
                        && !s.contains("mtp")
                })
                .and_then(|s| s.find(".layers.0.").map(|p| s[..p + 7].to_string()))
        })
        .unwrap_or_else(|| default.to_string())
}

fn family_in(mt: &str, list: &[&str]) -> bool {
    list.iter().any(|f| mt.starts_with(f))
}

/// The generic decoder: Llama, Mistral, Mixtral, Qwen 2/2.5/3 (dense, MoE, VL, 3.5
/// hybrids), Phi-3/4, Gemma 1–4, gpt-oss, DeepSeek V2/V3 (MLA), Granite MoE, SmolLM,
/// MiMo and relatives.
pub(super) fn decoder(
    cfg: &Config,
    t: &TextDims,
    c: &mut Counter<'_>,
    names: Names<'_>,
) -> Result<(), EstimateError> {
    let mt = cfg.text_model_type().to_string();
    let h = t.hidden;
    let prefix = layers_prefix(names, "model.layers");
    let desc = cfg.description();
    let per_layer = names.per_layer();

    // Embeddings (Gemma 3n/4 may add per-layer input embeddings).
    c.dense(Part::Embedding, 0);
    let emb = c
        .quant
        .embedding_bytes("model.embed_tokens", t.vocab, h, c.dt);
    c.parts.embedding += emb;
    let per_layer_input = cfg.u64(&["hidden_size_per_layer_input"]).unwrap_or(0);
    if per_layer_input > 0 {
        let v = cfg.u64(&["vocab_size_per_layer_input"]).unwrap_or(t.vocab);
        c.dense(Part::Embedding, v * t.layers * per_layer_input);
    }

    let qkv_bias = names
        .has_suffix(".self_attn.q_proj.bias")
        .unwrap_or_else(|| {
            cfg.bool("attention_bias")
                .or_else(|| cfg.bool("qkv_bias"))
                .unwrap_or(family_in(&mt, &["qwen2", "mimo", "gpt_oss"]))
        });
    let o_bias = names.has_suffix(".self_attn.o_proj.bias").unwrap_or(
        mt == "gpt_oss" || (cfg.bool("attention_bias") == Some(true) && !family_in(&mt, &["qwen"])),
    );
    let qk_norm = names
        .has_suffix(".self_attn.q_norm.weight")
        .unwrap_or(family_in(
            &mt,
            &["qwen3", "gemma3", "gemma4", "olmo2", "olmo3"],
        ));
    let mlp_bias = cfg.bool("mlp_bias").unwrap_or(false);
    let gated_q = cfg
        .bool("attn_output_gate")
        .unwrap_or(family_in(&mt, &["qwen3_next", "qwen3_5"]));
    let k_eq_v = cfg.bool("attention_k_eq_v").unwrap_or(false);
    let mla = desc.mla;

    // MoE shape.
    let moe = desc.moe.as_ref().filter(|m| m.block_enabled);
    let experts = moe.map(|m| m.experts);
    let moe_inter = moe.map_or(t.intermediate, |m| m.intermediate);
    let first_dense = moe.map_or(0, |m| m.first_dense);
    let shared_inter = moe.map_or(0, |m| m.shared_intermediate);
    let gemma4_moe = mt.starts_with("gemma4") && experts.is_some();

    for i in 0..t.layers {
        let p = format!("{prefix}.{i}");
        let layer = desc.layers.get(i as usize).copied();
        let mixer = layer.map_or(LayerKind::Full, |l| l.kind);
        // Norms: count them from the names of this layer when known.
        let norms = layer_names(&per_layer, i, |s| {
            (s.contains("norm") || s.starts_with("ln"))
                && !s.contains("q_norm")
                && !s.contains("k_norm")
                && !s.contains("q_a_")
                && !s.contains("kv_a_")
                && !s.contains("linear_attn")
                && !s.contains("layernorm.bias")
                && !s.contains("q_layernorm")
                && !s.contains("k_layernorm")
        })
        .map(|s| s.len() as u64)
        .filter(|&n| n > 0)
        .unwrap_or(if family_in(&mt, &["gemma2", "gemma3", "gemma4"]) {
            if gemma4_moe {
                7
            } else {
                4
            }
        } else {
            2
        });
        c.dense(Part::Layers, norms * h);
        if mt.starts_with("gemma4") {
            c.dense(Part::Layers, 1); // layer_scalar
        }

        // Mixer.
        match (mixer, mla) {
            (LayerKind::Linear, _) => gated_delta_net(cfg, h, &p, c),
            (LayerKind::Conv, _) => {}
            (_, Some(m)) => {
                let (kv_lora, nope, rope, v_dim) = (
                    m.kv_lora_rank,
                    m.nope_head_dim,
                    m.rope_head_dim,
                    m.v_head_dim,
                );
                let a = format!("{p}.self_attn");
                match m.q_lora_rank {
                    Some(q_lora) => {
                        c.linear(Part::Layers, &format!("{a}.q_a_proj"), q_lora, h, false);
                        c.dense(Part::Layers, q_lora);
                        c.linear(
                            Part::Layers,
                            &format!("{a}.q_b_proj"),
                            t.heads * (nope + rope),
                            q_lora,
                            false,
                        );
                    }
                    None => c.linear(
                        Part::Layers,
                        &format!("{a}.q_proj"),
                        t.heads * (nope + rope),
                        h,
                        false,
                    ),
                }
                c.linear(
                    Part::Layers,
                    &format!("{a}.kv_a_proj_with_mqa"),
                    kv_lora + rope,
                    h,
                    false,
                );
                c.dense(Part::Layers, kv_lora);
                c.linear(
                    Part::Layers,
                    &format!("{a}.kv_b_proj"),
                    t.heads * (nope + v_dim),
                    kv_lora,
                    false,
                );
                c.linear(
                    Part::Layers,
                    &format!("{a}.o_proj"),
                    h,
                    t.heads * v_dim,
                    false,
                );
            }
            (_, None) => {
                let a = format!("{p}.self_attn");
                let global = mixer == LayerKind::Full && mt.starts_with("gemma4");
                let (hd, kv) = layer.map_or((t.head_dim, t.kv_heads), |l| (l.head_dim, l.kv_heads));
                let q_out = t.heads * hd * if gated_q { 2 } else { 1 };
                c.linear(Part::Layers, &format!("{a}.q_proj"), q_out, h, qkv_bias);
                c.linear(Part::Layers, &format!("{a}.k_proj"), kv * hd, h, qkv_bias);
                // Fused checkpoints (Phi-3 `qkv_proj`) name no `k_proj`: assume a V.
                let has_v = match layer_names(&per_layer, i, |s| s.starts_with("self_attn.")) {
                    Some(attn) if attn.iter().any(|s| s.starts_with("self_attn.k_proj")) => {
                        attn.iter().any(|s| s.starts_with("self_attn.v_proj"))
                    }
                    _ => !(global && k_eq_v),
                };
                if has_v {
                    c.linear(Part::Layers, &format!("{a}.v_proj"), kv * hd, h, qkv_bias);
                }
                c.linear(
                    Part::Layers,
                    &format!("{a}.o_proj"),
                    h,
                    t.heads * hd,
                    o_bias,
                );
                if qk_norm {
                    c.dense(Part::Layers, 2 * hd);
                }
                if mt == "gpt_oss" {
                    c.dense(Part::Layers, t.heads); // attention sinks
                }
            }
        }

        // Feed-forward.
        let is_moe = moe.is_some_and(|m| m.is_sparse(i));
        if mt == "lfm2" {
            continue;
        }
        if !is_moe || gemma4_moe {
            let m = format!("{p}.mlp");
            let inter = if i < first_dense || !is_moe || gemma4_moe {
                t.intermediate
            } else {
                moe_inter
            };
            c.linear(Part::Layers, &format!("{m}.gate_proj"), inter, h, mlp_bias);
            c.linear(Part::Layers, &format!("{m}.up_proj"), inter, h, mlp_bias);
            c.linear(Part::Layers, &format!("{m}.down_proj"), h, inter, mlp_bias);
        }
        if let (true, Some(e)) = (is_moe, experts) {
            let m = format!("{p}.mlp");
            match mt.as_str() {
                "gpt_oss" => {
                    c.linear(Part::Layers, &format!("{m}.router"), e, h, true);
                    c.experts(
                        Part::Layers,
                        &format!("{m}.experts.gate_up_proj"),
                        e,
                        2 * moe_inter,
                        h,
                    );
                    c.experts(
                        Part::Layers,
                        &format!("{m}.experts.down_proj"),
                        e,
                        h,
                        moe_inter,
                    );
                    c.dense(Part::Layers, e * (2 * moe_inter + h));
                }
                "granitemoe" | "granitemoeshared" => {
                    c.linear(
                        Part::Layers,
                        &format!("{p}.block_sparse_moe.router.layer"),
                        e,
                        h,
                        false,
                    );
                    c.experts(
                        Part::Layers,
                        &format!("{p}.block_sparse_moe.input_linear"),
                        e,
                        2 * moe_inter,
                        h,
                    );
                    c.experts(
                        Part::Layers,
                        &format!("{p}.block_sparse_moe.output_linear"),
                        e,
                        h,
                        moe_inter,
                    );
                }
                _ => {
                    c.linear(Part::Layers, &format!("{m}.gate"), e, h, false);
                    if mt.starts_with("gemma4") {
                        c.dense(Part::Layers, h + e); // router scale and per-expert scale
                    }
                    if cfg.str("topk_method") == Some("noaux_tc") {
                        c.dense(Part::Layers, e); // e_score_correction_bias
                    }
                    c.experts(
                        Part::Layers,
                        &format!("{m}.experts.gate_proj"),
                        e,
                        moe_inter,
                        h,
                    );
                    c.experts(
                        Part::Layers,
                        &format!("{m}.experts.up_proj"),
                        e,
                        moe_inter,
                        h,
                    );
                    c.experts(
                        Part::Layers,
                        &format!("{m}.experts.down_proj"),
                        e,
                        h,
                        moe_inter,
                    );
                    if shared_inter > 0 {
                        c.linear(
                            Part::Layers,
                            &format!("{m}.shared_expert.gate_proj"),
                            shared_inter,
                            h,
                            false,
                        );
                        c.linear(
                            Part::Layers,
                            &format!("{m}.shared_expert.up_proj"),
                            shared_inter,
                            h,
                            false,
                        );
                        c.linear(
                            Part::Layers,
                            &format!("{m}.shared_expert.down_proj"),
                            h,
                            shared_inter,
                            false,
                        );
                        if moe.is_some_and(|m| m.shared_gate) {
                            c.linear(
                                Part::Layers,
                                &format!("{m}.shared_expert_gate"),
                                1,
                                h,
                                false,
                            );
                        }
                    }
                }
            }
        }
    }
    c.dense(Part::Layers, h); // final norm

    // Output head: the names decide when known (a checkpoint may store lm_head although
    // the config says tied); otherwise the config, with the families' defaults.
    let tied_default = family_in(&mt, &["gemma", "granite", "smollm3", "lfm2"]);
    let head_stored = match names.0 {
        Some(_) => names.contains("lm_head.").unwrap_or(false),
        None => !cfg.bool("tie_word_embeddings").unwrap_or(tied_default),
    };
    if head_stored {
        c.linear(Part::Head, "lm_head", t.vocab, h, false);
    }

    // Multi-token-prediction layers, counted only when the checkpoint stores them.
    if names.contains("mtp_layers.").unwrap_or(false) {
        let n = cfg.u64(&["num_nextn_predict_layers"]).unwrap_or(1);
        for j in 0..n {
            let p = format!("model.mtp_layers.{j}");
            c.dense(Part::Extra, 5 * h);
            c.linear(Part::Extra, &format!("{p}.input_proj"), h, 2 * h, false);
            c.linear(
                Part::Extra,
                &format!("{p}.q_proj"),
                t.heads * t.head_dim,
                h,
                qkv_bias,
            );
            c.linear(
                Part::Extra,
                &format!("{p}.k_proj"),
                t.kv_heads * t.head_dim,
                h,
                qkv_bias,
            );
            c.linear(
                Part::Extra,
                &format!("{p}.v_proj"),
                t.kv_heads * t.head_dim,
                h,
                qkv_bias,
            );
            c.linear(
                Part::Extra,
                &format!("{p}.o_proj"),
                h,
                t.heads * t.head_dim,
                false,
            );
            c.linear(
                Part::Extra,
                &format!("{p}.gate_proj"),
                t.intermediate,
                h,
                false,
            );
            c.linear(
                Part::Extra,
                &format!("{p}.up_proj"),
                t.intermediate,
                h,
                false,
            );
            c.linear(
                Part::Extra,
                &format!("{p}.down_proj"),
                h,
                t.intermediate,
                false,
            );
        }
    }
    Ok(())
}

/// Gated DeltaNet (Qwen3-Next, Qwen3.5) linear-attention layer.
fn gated_delta_net(cfg: &Config, h: u64, p: &str, c: &mut Counter<'_>) {
    let nk = cfg.u64(&["linear_num_key_heads"]).unwrap_or(16);
    let nv = cfg.u64(&["linear_num_value_heads"]).unwrap_or(32);
    let dk = cfg.u64(&["linear_key_head_dim"]).unwrap_or(128);
    let dv = cfg.u64(&["linear_value_head_dim"]).unwrap_or(128);
    let kernel = cfg.u64(&["linear_conv_kernel_dim"]).unwrap_or(4);
    let (key_dim, value_dim) = (nk * dk, nv * dv);
    let conv_dim = 2 * key_dim + value_dim;
    let a = format!("{p}.linear_attn");
    c.linear(
        Part::Layers,
        &format!("{a}.in_proj_qkv"),
        conv_dim,
        h,
        false,
    );
    c.linear(Part::Layers, &format!("{a}.in_proj_z"), value_dim, h, false);
    c.linear(Part::Layers, &format!("{a}.in_proj_b"), nv, h, false);
    c.linear(Part::Layers, &format!("{a}.in_proj_a"), nv, h, false);
    c.dense(Part::Layers, conv_dim * kernel + 2 * nv + dv);
    c.linear(Part::Layers, &format!("{a}.out_proj"), h, value_dim, false);
}
