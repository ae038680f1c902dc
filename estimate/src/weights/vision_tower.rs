//! Vision towers and projectors: Qwen2/2.5/3-VL, SigLIP-style (Gemma 3, PaliGemma,
//! Idefics2, MiniCPM-V), Gemma 4's and DeepSeek-OCR 2's DeepEncoder.

use serde_json::{Map, Value};

use super::counter::{Counter, Part};
use super::{Names, TextDims};
use crate::config::{map_u64, Config};
use crate::error::EstimateError;

/// Adds the vision tower and projector; `false` when the family is not modelled.
pub(super) fn vision_tower(
    cfg: &Config,
    v: &Map<String, Value>,
    t: &TextDims,
    c: &mut Counter<'_>,
    names: Names<'_>,
) -> Result<bool, EstimateError> {
    let mt = cfg.model_type();
    let vt = v.get("model_type").and_then(Value::as_str).unwrap_or("");
    let need = |keys: &[&str]| {
        map_u64(v, keys).ok_or_else(|| {
            cfg.error(format!(
                "vision_config: missing or non-integer `{}`",
                keys.join("` / `")
            ))
        })
    };
    let lin = |c: &mut Counter<'_>, out: u64, inp: u64, bias: bool| {
        c.linear(Part::Vision, "vision", out, inp, bias)
    };
    if mt.starts_with("qwen2_vl") || mt.starts_with("qwen2_5_vl") || mt.starts_with("qwen3_vl") {
        let qwen25 = mt.starts_with("qwen2_5_vl");
        let qwen3 = mt.starts_with("qwen3_vl");
        let d = need(&["embed_dim", "hidden_size"])?;
        let d = if qwen25 || qwen3 {
            need(&["hidden_size"])?
        } else {
            d
        };
        let depth = need(&["depth", "num_hidden_layers"])?;
        let patch = map_u64(v, &["patch_size", "spatial_patch_size"]).unwrap_or(14);
        let temporal = map_u64(v, &["temporal_patch_size"]).unwrap_or(2);
        let chans = map_u64(v, &["in_chans", "in_channels"]).unwrap_or(3);
        let merge = map_u64(v, &["spatial_merge_size"]).unwrap_or(2);
        let out = map_u64(v, &["out_hidden_size"]).unwrap_or(if qwen25 || qwen3 {
            t.hidden
        } else {
            need(&["hidden_size"])?
        });
        c.dense(Part::Vision, d * chans * temporal * patch * patch);
        let (norm, inter) = if qwen25 {
            (d, need(&["intermediate_size"])?)
        } else if qwen3 {
            (2 * d, need(&["intermediate_size"])?)
        } else {
            (2 * d, d * map_u64(v, &["mlp_ratio"]).unwrap_or(4))
        };
        if qwen3 {
            c.dense(
                Part::Vision,
                d + map_u64(v, &["num_position_embeddings"]).unwrap_or(0) * d,
            );
        }
        for _ in 0..depth {
            c.dense(Part::Vision, 2 * norm);
            lin(c, 3 * d, d, true);
            lin(c, d, d, true);
            if qwen25 {
                lin(c, inter, d, true);
                lin(c, inter, d, true);
                lin(c, d, inter, true);
            } else {
                lin(c, inter, d, true);
                lin(c, d, inter, true);
            }
        }
        let m = d * merge * merge;
        let merger = |c: &mut Counter<'_>, norm: u64| {
            c.dense(Part::Vision, norm);
            c.linear(Part::Vision, "vision", m, m, true);
            c.linear(Part::Vision, "vision", out, m, true);
        };
        merger(c, if qwen25 { d } else { 2 * d });
        if qwen3 {
            let deep = v
                .get("deepstack_visual_indexes")
                .and_then(Value::as_array)
                .map_or(0, Vec::len) as u64;
            for _ in 0..deep {
                merger(c, 2 * m);
            }
        }
        return Ok(true);
    }
    if vt.starts_with("siglip")
        || vt == "idefics2"
        || mt == "minicpmv"
        || mt.starts_with("gemma3")
        || mt == "paligemma"
    {
        let d = need(&["hidden_size"])?;
        let inter = need(&["intermediate_size"])?;
        let depth = need(&["num_hidden_layers"])?;
        let patch = map_u64(v, &["patch_size"]).unwrap_or(14);
        let image = map_u64(v, &["image_size"]).unwrap_or(224);
        let chans = map_u64(v, &["num_channels"]).unwrap_or(3);
        let positions = (image / patch.max(1)).pow(2);
        c.dense(Part::Vision, d * chans * patch * patch + d + positions * d);
        for _ in 0..depth {
            c.dense(Part::Vision, 4 * d);
            for _ in 0..4 {
                lin(c, d, d, true);
            }
            lin(c, inter, d, true);
            lin(c, d, inter, true);
        }
        c.dense(Part::Vision, 2 * d);
        if mt.starts_with("gemma3") {
            c.dense(Part::Vision, d * t.hidden + d);
        } else if mt == "minicpmv" {
            // Perceiver resampler: queries, kv projection, one attention, three norms, proj.
            let q = cfg.u64(&["query_num"]).unwrap_or(96);
            let th = t.hidden;
            c.dense(Part::Vision, q * th + 6 * th + th * th);
            lin(c, th, d, false);
            lin(c, 3 * th, th, true);
            lin(c, th, th, true);
        }
        return Ok(true);
    }
    if vt == "gemma4_vision" {
        let d = need(&["hidden_size"])?;
        let inter = need(&["intermediate_size"])?;
        let depth = need(&["num_hidden_layers"])?;
        let heads = need(&["num_attention_heads"])?;
        let hd = map_u64(v, &["head_dim"]).unwrap_or(d / heads);
        let kv = map_u64(v, &["num_key_value_heads"]).unwrap_or(heads);
        let patch = map_u64(v, &["patch_size"]).unwrap_or(16);
        let positions = map_u64(v, &["position_embedding_size"]).unwrap_or(0);
        c.dense(
            Part::Vision,
            d * 3 * patch * patch + 2 * positions * d + 2 * d,
        );
        for _ in 0..depth {
            c.dense(Part::Vision, 4 * d + 2 * hd);
            lin(c, heads * hd, d, false);
            lin(c, kv * hd, d, false);
            lin(c, kv * hd, d, false);
            lin(c, d, heads * hd, false);
            lin(c, inter, d, false);
            lin(c, inter, d, false);
            lin(c, d, inter, false);
        }
        lin(c, t.hidden, d, false);
        return Ok(true);
    }
    if v.get("model_name").and_then(Value::as_str) == Some("deepencoderv2")
        || names.contains("sam_model.").unwrap_or(false)
    {
        deepencoder_v2(cfg, v, t, c);
        return Ok(true);
    }
    Ok(false)
}

/// DeepSeek-OCR 2's encoder: a SAM ViT-B, a Qwen2-0.5B-shaped encoder with learned
/// queries, and a linear projector.
fn deepencoder_v2(cfg: &Config, v: &Map<String, Value>, t: &TextDims, c: &mut Counter<'_>) {
    let sam = v.get("width").and_then(|w| w.get("sam_vit_b"));
    let get = |k: &str, d: u64| {
        sam.and_then(|s| s.get(k))
            .and_then(crate::config::as_u64)
            .unwrap_or(d)
    };
    let (d, layers, heads) = (get("width", 768), get("layers", 12), get("heads", 12));
    let image = map_u64(v, &["image_size"]).unwrap_or(1024);
    let patch = 16;
    let grid = image / patch;
    let window = 14;
    let global: Vec<u64> = sam
        .and_then(|s| s.get("global_attn_indexes"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(crate::config::as_u64).collect())
        .unwrap_or_default();
    let lin = |c: &mut Counter<'_>, out: u64, inp: u64, bias: bool| {
        c.linear(Part::Vision, "vision", out, inp, bias)
    };
    c.dense(Part::Vision, d * 3 * patch * patch + d + grid * grid * d);
    for i in 0..layers {
        let size = if global.contains(&i) { grid } else { window };
        c.dense(Part::Vision, 4 * d + 2 * (2 * size - 1) * (d / heads));
        lin(c, 3 * d, d, true);
        lin(c, d, d, true);
        lin(c, 4 * d, d, true);
        lin(c, d, 4 * d, true);
    }
    // Neck (1×1 conv, LayerNorm, 3×3 conv, LayerNorm) and two downsampling convs.
    let down: Vec<u64> = sam
        .and_then(|s| s.get("downsample_channels"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(crate::config::as_u64).collect())
        .unwrap_or_else(|| vec![512, 1024]);
    c.dense(Part::Vision, 256 * d + 2 * 256 + 256 * 256 * 9 + 2 * 256);
    let mut ch = 256;
    for &next in &down {
        c.dense(Part::Vision, next * ch * 9);
        ch = next;
    }
    // Qwen2-0.5B-shaped encoder.
    let qd = v
        .get("width")
        .and_then(|w| w.get("qwen2-0-5b"))
        .and_then(|q| q.get("dim"))
        .and_then(crate::config::as_u64)
        .unwrap_or(896);
    let (q_layers, q_inter, q_heads, q_kv) = (24, 4864, 14, 2);
    let hd = qd / q_heads;
    for _ in 0..q_layers {
        c.dense(Part::Vision, 2 * qd);
        lin(c, q_heads * hd, qd, true);
        lin(c, q_kv * hd, qd, true);
        lin(c, q_kv * hd, qd, true);
        lin(c, qd, q_heads * hd, false);
        lin(c, q_inter, qd, false);
        lin(c, q_inter, qd, false);
        lin(c, qd, q_inter, false);
    }
    c.dense(Part::Vision, qd + (256 + 144) * qd);
    let n_embed = cfg
        .root("projector_config")
        .and_then(|p| p.get("n_embed"))
        .and_then(crate::config::as_u64)
        .unwrap_or(t.hidden);
    lin(c, n_embed, ch.min(qd), true);
    c.dense(Part::Vision, n_embed);
}
