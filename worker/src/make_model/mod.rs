//! `make-model`: deterministic random-weight model folders (Llama, Mistral, Qwen2, Qwen3,
//! Gemma 2, Gemma 3, Phi-3, Mixtral, Qwen3-MoE, SmolLM3, MiMo, Qwen, Granite MoE) with a small real byte-level BPE
//! tokenizer and a ChatML chat template. Family options (experts, RoPE scaling, sliding
//! window) are in `family.rs`.
//!
//! Weights come from our own seeded generator (the same spec gives the same bytes on
//! every platform); quantized folders are quantized by MLX itself (`mx.quantize`), so
//! their layout is exactly what mlx-lm's `convert` writes. The safetensors file is
//! written here, tensors in name order, so its bytes do not depend on hash order.

use std::collections::HashMap;
use std::path::Path;

mod config_json;
mod family;
mod tensors;
mod text_tensors;
mod tokenizer;
mod write;

use protocol::{ModelSpec, WorkerError, WorkerErrorKind};
use serde_json::json;
use tokenizer::{build_bpe, tokenizer_config, tokenizer_json, ENDOFTEXT, IM_END, IM_START};
pub use tokenizer::{bytes_to_unicode, tokenizer_json_for, CHAT_TEMPLATE};

use config_json::config_json;
// vl.rs and family.rs take these through `super::`.
use tensors::{dtype_of, tensors_of, Init, Tensor, TensorSpec};
use text_tensors::{build_tensors, tensor_specs};
use write::{write_json, write_safetensors};

mod vl;

fn err(kind: WorkerErrorKind, message: impl Into<String>) -> WorkerError {
    WorkerError {
        kind,
        message: message.into(),
    }
}

fn bad(message: impl Into<String>) -> WorkerError {
    err(WorkerErrorKind::BadRequest, message)
}

fn io(path: &Path, e: impl std::fmt::Display) -> WorkerError {
    err(
        WorkerErrorKind::Internal,
        format!("cannot write {}: {e}", path.display()),
    )
}

/// The architectures `make-model` writes: every one the engine runs.
pub const ARCHS: &[&str] = crate::engine::SUPPORTED;

fn check(spec: &ModelSpec) -> Result<(), WorkerError> {
    if !ARCHS.contains(&spec.arch.as_str()) {
        return Err(bad(format!(
            "unsupported arch {:?}; supported: {}",
            spec.arch,
            ARCHS.join(", ")
        )));
    }
    family::check(spec).map_err(bad)?;
    if spec.options.hf_layout && !matches!(spec.arch.as_str(), "qwen2_5_vl" | "qwen2_vl") {
        return Err(bad(format!(
            "--hf-layout is for qwen2_5_vl and qwen2_vl, not {}",
            spec.arch
        )));
    }
    if spec.options.hf_layout && spec.quant_bits.is_some() {
        return Err(bad(
            "--hf-layout writes an unquantized Hugging Face checkpoint: drop --quant-bits",
        ));
    }
    if !["bf16", "f16", "f32"].contains(&spec.dtype.as_str()) {
        return Err(bad(format!(
            "unsupported dtype {:?}; supported: bf16, f16, f32",
            spec.dtype
        )));
    }
    let positive = [
        ("hidden", spec.hidden),
        ("layers", spec.layers),
        ("heads", spec.heads),
        ("kv-heads", spec.kv_heads),
        ("intermediate", spec.intermediate),
    ];
    if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(bad(format!("--{name} must be positive")));
    }
    if !spec.hidden.is_multiple_of(spec.heads) || !(spec.hidden / spec.heads).is_multiple_of(2) {
        return Err(bad(format!(
            "hidden {} must be a multiple of heads {} with an even head size",
            spec.hidden, spec.heads
        )));
    }
    if !spec.heads.is_multiple_of(spec.kv_heads) {
        return Err(bad(format!(
            "heads {} must be a multiple of kv-heads {}",
            spec.heads, spec.kv_heads
        )));
    }
    if spec.vocab < 300 {
        return Err(bad(format!(
            "vocab {} is too small: the tokenizer needs at least 300 ids",
            spec.vocab
        )));
    }
    if let Some(bits) = spec.quant_bits {
        if ![2, 3, 4, 5, 6, 8].contains(&bits) {
            return Err(bad(format!(
                "quant bits {bits} not supported (2, 3, 4, 5, 6, 8)"
            )));
        }
        if ![32, 64, 128].contains(&spec.group_size) {
            return Err(bad(format!(
                "group size {} not supported (32, 64, 128)",
                spec.group_size
            )));
        }
    }
    Ok(())
}

/// Writes the model folder described by `spec`; returns the bytes of weights written.
pub fn make_model(spec: &ModelSpec) -> Result<u64, WorkerError> {
    check(spec)?;
    if spec.arch == "qwen2_5_vl" || spec.arch == "qwen2_vl" {
        return vl::make(spec);
    }
    let dir = Path::new(&spec.dir);
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let (vocab, merges) = build_bpe(spec.vocab as usize);
    let first_special = vocab.len() - 3;
    let ids: HashMap<&str, usize> = [ENDOFTEXT, IM_START, IM_END]
        .iter()
        .enumerate()
        .map(|(k, s)| (*s, first_special + k))
        .collect();
    let endoftext = ids.get(ENDOFTEXT).copied().unwrap_or(first_special);
    let im_end = ids.get(IM_END).copied().unwrap_or(first_special + 2);
    write_json(dir, "tokenizer.json", &tokenizer_json(&vocab, &merges))?;
    write_json(
        dir,
        "tokenizer_config.json",
        &tokenizer_config(first_special),
    )?;
    write_json(
        dir,
        "special_tokens_map.json",
        &json!({"eos_token": IM_END, "pad_token": ENDOFTEXT}),
    )?;
    // A multimodal Gemma 3 is its text model (gemma3_text) wrapped, plus a vision tower.
    let wrapped = spec.arch == "gemma3";
    let text_spec = if wrapped {
        ModelSpec {
            arch: "gemma3_text".into(),
            ..spec.clone()
        }
    } else {
        spec.clone()
    };
    let mut config = config_json(&text_spec, endoftext);
    if wrapped {
        config = family::wrap_gemma3(config);
    }
    write_json(dir, "config.json", &config)?;
    write_json(
        dir,
        "generation_config.json",
        &json!({"bos_token_id": null, "eos_token_id": [im_end, endoftext], "do_sample": false}),
    )?;
    let mut tensors = build_tensors(&text_spec)?;
    if wrapped {
        tensors = family::wrap_gemma3_tensors(tensors, spec);
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors)
}
