//! The text models with a layout of their own, not the generic decoder's: Falcon,
//! Qwen (1) and LFM2.

use super::counter::{Counter, Part};
use super::{LayerKind, Names, TextDims};
use crate::config::Config;
use crate::error::EstimateError;

/// Falcon (7B/40B/180B): fused QKV, parallel attention and MLP, LayerNorms with biases.
pub(super) fn falcon(cfg: &Config, t: &TextDims, c: &mut Counter<'_>, names: Names<'_>) {
    let h = t.hidden;
    let new_arch = cfg.bool("new_decoder_architecture") == Some(true);
    let ffn = cfg.u64(&["ffn_hidden_size"]).unwrap_or(4 * h);
    let bias = cfg.bool("bias").unwrap_or(false);
    c.parts.embedding += t.vocab * h * c.dt;
    for i in 0..t.layers {
        let p = format!("transformer.h.{i}");
        let ln = if new_arch && cfg.u64(&["num_ln_in_parallel_attn"]).unwrap_or(2) == 2 {
            2
        } else {
            1
        };
        c.dense(Part::Layers, ln * 2 * h);
        let qkv = (t.heads + 2 * t.kv_heads) * t.head_dim;
        c.linear(
            Part::Layers,
            &format!("{p}.self_attention.query_key_value"),
            qkv,
            h,
            bias,
        );
        c.linear(
            Part::Layers,
            &format!("{p}.self_attention.dense"),
            h,
            h,
            bias,
        );
        c.linear(
            Part::Layers,
            &format!("{p}.mlp.dense_h_to_4h"),
            ffn,
            h,
            bias,
        );
        c.linear(
            Part::Layers,
            &format!("{p}.mlp.dense_4h_to_h"),
            h,
            ffn,
            bias,
        );
    }
    c.dense(Part::Layers, 2 * h);
    if names
        .has_suffix("lm_head.weight")
        .unwrap_or(!cfg.bool("tie_word_embeddings").unwrap_or(true))
    {
        c.linear(Part::Head, "lm_head", t.vocab, h, false);
    }
}

/// Qwen (1): `c_attn` with bias, `w1`/`w2` halves of `intermediate_size`.
pub(super) fn qwen1(cfg: &Config, t: &TextDims, c: &mut Counter<'_>) {
    let h = t.hidden;
    let ff = t.intermediate / 2;
    c.parts.embedding += t.vocab * h * c.dt;
    for i in 0..t.layers {
        let p = format!("transformer.h.{i}");
        c.dense(Part::Layers, 2 * h);
        c.linear(Part::Layers, &format!("{p}.attn.c_attn"), 3 * h, h, true);
        c.linear(Part::Layers, &format!("{p}.attn.c_proj"), h, h, false);
        c.linear(Part::Layers, &format!("{p}.mlp.w1"), ff, h, false);
        c.linear(Part::Layers, &format!("{p}.mlp.w2"), ff, h, false);
        c.linear(Part::Layers, &format!("{p}.mlp.c_proj"), h, ff, false);
    }
    c.dense(Part::Layers, h);
    if !cfg.bool("tie_word_embeddings").unwrap_or(false) {
        c.linear(Part::Head, "lm_head", t.vocab, h, false);
    }
}

/// LFM2: short-convolution layers and a few attention layers, SwiGLU feed-forward.
pub(super) fn lfm2(cfg: &Config, t: &TextDims, c: &mut Counter<'_>) -> Result<(), EstimateError> {
    let h = t.hidden;
    let mut ff = cfg
        .u64(&["block_ff_dim", "intermediate_size"])
        .unwrap_or(4 * h);
    if cfg.bool("block_auto_adjust_ff_dim").unwrap_or(false) {
        ff = 2 * ff / 3;
        let mult = cfg.f64(&["block_ffn_dim_multiplier"]).unwrap_or(1.0);
        ff = (mult * ff as f64) as u64;
        let multiple = cfg.u64(&["block_multiple_of"]).unwrap_or(256).max(1);
        ff = ff.div_ceil(multiple) * multiple;
    }
    let kernel = cfg.u64(&["conv_L_cache"]).unwrap_or(3);
    c.parts.embedding += c
        .quant
        .embedding_bytes("model.embed_tokens", t.vocab, h, c.dt);
    for (i, kind) in cfg.description().kinds().enumerate() {
        let p = format!("model.layers.{i}");
        c.dense(Part::Layers, 2 * h);
        if kind == LayerKind::Conv {
            c.linear(
                Part::Layers,
                &format!("{p}.conv.in_proj"),
                3 * h,
                h,
                cfg.bool("conv_bias").unwrap_or(false),
            );
            c.dense(Part::Layers, h * kernel);
            c.linear(
                Part::Layers,
                &format!("{p}.conv.out_proj"),
                h,
                h,
                cfg.bool("conv_bias").unwrap_or(false),
            );
        } else {
            let a = format!("{p}.self_attn");
            c.linear(
                Part::Layers,
                &format!("{a}.q_proj"),
                t.heads * t.head_dim,
                h,
                false,
            );
            c.linear(
                Part::Layers,
                &format!("{a}.k_proj"),
                t.kv_heads * t.head_dim,
                h,
                false,
            );
            c.linear(
                Part::Layers,
                &format!("{a}.v_proj"),
                t.kv_heads * t.head_dim,
                h,
                false,
            );
            c.linear(
                Part::Layers,
                &format!("{a}.out_proj"),
                h,
                t.heads * t.head_dim,
                false,
            );
            c.dense(Part::Layers, 2 * t.head_dim);
        }
        c.linear(Part::Layers, &format!("{p}.feed_forward.w1"), ff, h, false);
        c.linear(Part::Layers, &format!("{p}.feed_forward.w3"), ff, h, false);
        c.linear(Part::Layers, &format!("{p}.feed_forward.w2"), h, ff, false);
    }
    c.dense(Part::Layers, h);
    if !cfg.bool("tie_word_embeddings").unwrap_or(true) {
        c.linear(Part::Head, "lm_head", t.vocab, h, false);
    }
    Ok(())
}
