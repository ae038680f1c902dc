//! `make-model --arch qwen2_5_vl | qwen2_vl`: a tiny deterministic Qwen2.5-VL (or
//! Qwen2-VL: LayerNorm blocks with a GELU `fc1`/`fc2` MLP and no windows, `mlp_ratio` =
//! `--intermediate` / `--hidden`, an integer) folder in the layout
//! mlx-vlm loads (and mlx-community ships): the Qwen2 language model under
//! `language_model.`, the vision tower under `vision_tower.` (patch embedding over 2-frame
//! temporal patches in MLX's channels-last layout, RMS-normed blocks with a SwiGLU MLP,
//! the 2×2 patch merger), the vision special tokens, a chat template with image parts and
//! Qwen's `preprocessor_config.json`.
//!
//! The vision tower is sized from the language model's flags: width `--hidden`, heads
//! `--heads`, MLP `--intermediate`, `--layers` blocks (the last one full attention, the
//! others windowed). With `--quant-bits`, only the language model is quantized, as
//! mlx-community's 4-bit Qwen2.5-VL folders are.

use std::path::Path;

use serde_json::{json, Value};

use super::{
    bad, build_bpe, dtype_of, io, tensor_specs, tokenizer_config, tokenizer_json, write_json,
    write_safetensors, Init, Tensor, TensorSpec, ENDOFTEXT, IM_END,
};
use protocol::{ModelSpec, WorkerError};

/// Qwen2-VL's vision special tokens, in Qwen's id order, after the three text specials.
const VISION_SPECIALS: [&str; 5] = [
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
];
const PATCH: i32 = 14;
const TEMPORAL: i32 = 2;
const MERGE: i32 = 2;

/// ChatML with Qwen2-VL's image parts: a message's content is a string or a list of
/// `{"type": "text", "text": …}` and `{"type": "image"}` parts.
pub const VL_CHAT_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

pub(super) fn check_vl(spec: &ModelSpec) -> Result<(), WorkerError> {
    let hd = spec.hidden / spec.heads.max(1);
    // mrope splits head_dim/2 into 1:1.5:1.5 sections; the vision rope uses head_dim/2.
    if !hd.is_multiple_of(16) {
        return Err(bad(format!(
            "{} needs hidden / heads to be a multiple of 16, got {hd}",
            spec.arch
        )));
    }
    if spec.arch == "qwen2_vl" && !spec.intermediate.is_multiple_of(spec.hidden) {
        return Err(bad(format!(
            "qwen2_vl needs --intermediate to be a multiple of --hidden (its mlp_ratio is an integer), got {} and {}",
            spec.intermediate, spec.hidden
        )));
    }
    if spec.vocab < 300 + VISION_SPECIALS.len() as u32 {
        return Err(bad(format!(
            "vocab {} is too small for {}",
            spec.vocab, spec.arch
        )));
    }
    Ok(())
}

fn vision_specs(spec: &ModelSpec) -> Vec<TensorSpec> {
    let (vd, vi, out) = (
        spec.hidden as i32,
        spec.intermediate as i32,
        spec.hidden as i32,
    );
    let merged = vd * MERGE * MERGE;
    let lin = |name: String, o: i32, i: i32| TensorSpec {
        name,
        shape: vec![o, i],
        init: Init::Normal(1.0 / (i as f64).sqrt()),
        quantize: false,
        bits: None,
    };
    let vec_of = |name: String, n: i32, init| TensorSpec {
        name,
        shape: vec![n],
        init,
        quantize: false,
        bits: None,
    };
    let fan_in = TEMPORAL * PATCH * PATCH * 3;
    let mut t = vec![TensorSpec {
        name: "vision_tower.patch_embed.proj.weight".into(),
        shape: vec![vd, TEMPORAL, PATCH, PATCH, 3],
        init: Init::Normal(1.0 / (fan_in as f64).sqrt()),
        quantize: false,
        bits: None,
    }];
    let qwen2 = spec.arch == "qwen2_vl";
    let norm = |t: &mut Vec<TensorSpec>, name: String| {
        t.push(vec_of(format!("{name}.weight"), vd, Init::Ones));
        if qwen2 {
            t.push(vec_of(format!("{name}.bias"), vd, Init::Normal(0.02)));
        }
    };
    for b in 0..spec.layers {
        let p = format!("vision_tower.blocks.{b}");
        norm(&mut t, format!("{p}.norm1"));
        norm(&mut t, format!("{p}.norm2"));
        t.push(lin(format!("{p}.attn.qkv.weight"), 3 * vd, vd));
        t.push(vec_of(
            format!("{p}.attn.qkv.bias"),
            3 * vd,
            Init::Normal(0.02),
        ));
        t.push(lin(format!("{p}.attn.proj.weight"), vd, vd));
        t.push(vec_of(
            format!("{p}.attn.proj.bias"),
            vd,
            Init::Normal(0.02),
        ));
        let mlp: &[(&str, i32, i32)] = if qwen2 {
            &[("fc1", vi, vd), ("fc2", vd, vi)]
        } else {
            &[
                ("gate_proj", vi, vd),
                ("up_proj", vi, vd),
                ("down_proj", vd, vi),
            ]
        };
        for &(name, o, i) in mlp {
            t.push(lin(format!("{p}.mlp.{name}.weight"), o, i));
            t.push(vec_of(
                format!("{p}.mlp.{name}.bias"),
                o,
                Init::Normal(0.02),
            ));
        }
    }
    norm(&mut t, "vision_tower.merger.ln_q".into());
    t.push(lin(
        "vision_tower.merger.mlp.0.weight".into(),
        merged,
        merged,
    ));
    t.push(vec_of(
        "vision_tower.merger.mlp.0.bias".into(),
        merged,
        Init::Normal(0.02),
    ));
    t.push(lin("vision_tower.merger.mlp.2.weight".into(), out, merged));
    t.push(vec_of(
        "vision_tower.merger.mlp.2.bias".into(),
        out,
        Init::Normal(0.02),
    ));
    t
}

fn all_specs(spec: &ModelSpec) -> Vec<TensorSpec> {
    let text = ModelSpec {
        arch: "qwen2".into(),
        ..spec.clone()
    };
    let mut t: Vec<TensorSpec> = tensor_specs(&text)
        .into_iter()
        .map(|mut s| {
            s.name = format!("language_model.{}", s.name);
            s
        })
        .collect();
    t.extend(vision_specs(spec));
    t.sort_by(|a, b| a.name.cmp(&b.name));
    t
}

fn build(spec: &ModelSpec) -> Result<Vec<(String, Tensor)>, WorkerError> {
    super::tensors_of(spec, all_specs(spec))
}

fn config(spec: &ModelSpec, ids: &[usize; 8]) -> Value {
    let (_, _, torch_dtype) = dtype_of(spec);
    let hd = spec.hidden / spec.heads;
    let side = hd * 3 / 16;
    let [endoftext, _, _, vstart, vend, vpad, image, video] = *ids;
    let mut c = json!({
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "vocab_size": spec.vocab,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": true,
        "torch_dtype": torch_dtype,
        "use_sliding_window": false,
        "sliding_window": null,
        "rope_scaling": {"type": "mrope", "rope_type": "default", "mrope_section": [hd / 2 - 2 * side, side, side]},
        "bos_token_id": null,
        "eos_token_id": endoftext,
        "vision_start_token_id": vstart,
        "vision_end_token_id": vend,
        "vision_token_id": vpad,
        "image_token_id": image,
        "video_token_id": video,
        "vision_config": {
            "model_type": "qwen2_5_vl",
            "depth": spec.layers,
            "hidden_act": "silu",
            "hidden_size": spec.hidden,
            "intermediate_size": spec.intermediate,
            "num_heads": spec.heads,
            "in_chans": 3,
            "out_hidden_size": spec.hidden,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "spatial_patch_size": PATCH,
            "temporal_patch_size": TEMPORAL,
            "window_size": 112,
            "fullatt_block_indexes": [spec.layers - 1],
            "tokens_per_second": 2
        }
    });
    if spec.arch == "qwen2_vl" {
        c["architectures"] = json!(["Qwen2VLForConditionalGeneration"]);
        c["model_type"] = json!("qwen2_vl");
        c["vision_config"] = json!({
            "model_type": "qwen2_vl",
            "depth": spec.layers,
            "embed_dim": spec.hidden,
            "mlp_ratio": spec.intermediate / spec.hidden,
            "num_heads": spec.heads,
            "in_chans": 3,
            "hidden_size": spec.hidden,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "spatial_patch_size": PATCH,
            "temporal_patch_size": TEMPORAL
        });
    }
    if let (Some(c), Some(bits)) = (c.as_object_mut(), spec.quant_bits) {
        let q = json!({"group_size": spec.group_size, "bits": bits, "mode": "affine"});
        c.insert("quantization".into(), q.clone());
        c.insert("quantization_config".into(), q);
    }
    c
}

/// Writes the folder; returns the bytes of weights written.
pub(super) fn make(spec: &ModelSpec) -> Result<u64, WorkerError> {
    check_vl(spec)?;
    let dir = Path::new(&spec.dir);
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let (vocab, merges) = build_bpe(spec.vocab as usize - VISION_SPECIALS.len());
    let first_special = vocab.len() - 3;
    let mut tok = tokenizer_json(&vocab, &merges);
    let mut tok_cfg = tokenizer_config(first_special);
    for (k, s) in VISION_SPECIALS.iter().enumerate() {
        let id = vocab.len() + k;
        let entry = json!({"content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
        if let Some(list) = tok.get_mut("added_tokens").and_then(Value::as_array_mut) {
            let mut e = entry.clone();
            e["id"] = json!(id);
            list.push(e);
        }
        if let Some(m) = tok_cfg
            .get_mut("added_tokens_decoder")
            .and_then(Value::as_object_mut)
        {
            m.insert(id.to_string(), entry);
        }
    }
    tok_cfg["chat_template"] = json!(VL_CHAT_TEMPLATE);
    let ids: [usize; 8] = std::array::from_fn(|k| first_special + k);
    write_json(dir, "tokenizer.json", &tok)?;
    write_json(dir, "tokenizer_config.json", &tok_cfg)?;
    write_json(
        dir,
        "special_tokens_map.json",
        &json!({"eos_token": IM_END, "pad_token": ENDOFTEXT}),
    )?;
    write_json(dir, "config.json", &config(spec, &ids))?;
    write_json(
        dir,
        "generation_config.json",
        &json!({"bos_token_id": null, "eos_token_id": [ids[2], ids[0]], "do_sample": false}),
    )?;
    write_json(
        dir,
        "preprocessor_config.json",
        &json!({
            "min_pixels": 3136, "max_pixels": 12845056, "patch_size": PATCH,
            "temporal_patch_size": TEMPORAL, "merge_size": MERGE,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": if spec.arch == "qwen2_vl" { "Qwen2VLProcessor" } else { "Qwen2_5_VLProcessor" }
        }),
    )?;
    let mut tensors = build(spec)?;
    if spec.options.hf_layout {
        tensors = hf_layout(tensors);
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors)
}

/// The tensors as a Hugging Face checkpoint names and lays them out (the same values):
/// `visual.*`, `model.*`, `lm_head.*`, and the patch embedding channels-first
/// (O, C, T, P, P) where MLX keeps it channels-last (O, T, P, P, C).
fn hf_layout(tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let name = if let Some(rest) = name.strip_prefix("vision_tower.") {
                format!("visual.{rest}")
            } else if let Some(rest) = name.strip_prefix("language_model.") {
                rest.to_string()
            } else {
                name
            };
            if name == "visual.patch_embed.proj.weight" {
                (name, channels_first(t))
            } else {
                (name, t)
            }
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// (O, T, P, P, C) → (O, C, T, P, P), on the raw element bytes.
fn channels_first(t: Tensor) -> Tensor {
    let [o, tt, p1, p2, c] = match t.shape[..] {
        [o, tt, p1, p2, c] => [o, tt, p1, p2, c].map(|d| d.max(0) as usize),
        _ => return t,
    };
    let n = o * tt * p1 * p2 * c;
    let elem = t.data.len().checked_div(n).unwrap_or(0);
    let mut data = vec![0u8; t.data.len()];
    let inner = tt * p1 * p2;
    for oi in 0..o {
        for k in 0..inner {
            for ci in 0..c {
                let src = ((oi * inner + k) * c + ci) * elem;
                let dst = ((oi * c + ci) * inner + k) * elem;
                data[dst..dst + elem].copy_from_slice(&t.data[src..src + elem]);
            }
        }
    }
    Tensor {
        dtype: t.dtype,
        shape: vec![o as i32, c as i32, tt as i32, p1 as i32, p2 as i32],
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Hugging Face layout renames and moves the patch embedding's channels first,
    /// element for element; nothing else changes.
    #[test]
    fn hf_layout_names_and_transposes_the_patch_embedding() {
        let (o, t, p, c) = (2usize, 2, 3, 3);
        let n = o * t * p * p * c;
        let data: Vec<u8> = (0..n as u16).flat_map(|v| v.to_le_bytes()).collect();
        let emb = Tensor {
            dtype: "BF16",
            shape: vec![o as i32, t as i32, p as i32, p as i32, c as i32],
            data: data.clone(),
        };
        let other = Tensor {
            dtype: "BF16",
            shape: vec![2],
            data: vec![1, 2, 3, 4],
        };
        let out = hf_layout(vec![
            ("vision_tower.patch_embed.proj.weight".into(), emb),
            ("language_model.model.norm.weight".into(), other),
        ]);
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["model.norm.weight", "visual.patch_embed.proj.weight"]
        );
        let hf = &out[1].1;
        assert_eq!(hf.shape, [o, c, t, p, p].map(|d| d as i32));
        let at = |bytes: &[u8], i: usize| u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]);
        for oi in 0..o {
            for ti in 0..t {
                for y in 0..p {
                    for x in 0..p {
                        for ci in 0..c {
                            let mlx = (((oi * t + ti) * p + y) * p + x) * c + ci;
                            let torch = (((oi * c + ci) * t + ti) * p + y) * p + x;
                            assert_eq!(at(&hf.data, torch), at(&data, mlx));
                        }
                    }
                }
            }
        }
        assert_eq!(out[0].1.data, [1, 2, 3, 4]);
    }
}
