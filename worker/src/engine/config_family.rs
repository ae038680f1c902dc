//! The family-specific parts of config.json parsing: a multimodal Gemma 3 read as its
//! text model, Phi-3's RoPE, and what the engine lacks for the families it refuses.

use protocol::WorkerError;
use serde_json::Value;

use super::super::error::load_failed;
use super::super::rope;
use super::{num, ModelConfig, RopeKind};

/// `model_type`s people run that this engine does not, and what it lacks for each.
pub(super) const MISSING: &[(&str, &str)] = &[
    (
        "gemma3",
        "the Gemma 3 vision tower (its text model, gemma3_text, runs)",
    ),
    ("gemma3n", "Gemma 3n's per-layer embeddings and AltUp"),
    ("gemma4", "Gemma 4's decoder"),
    ("gemma4_text", "Gemma 4's decoder"),
    (
        "phi",
        "Phi-1/2's parallel attention and partial LayerNorm decoder",
    ),
    ("phimoe", "Phi-3.5-MoE's sparse-mixer routing"),
    ("qwen2_moe", "Qwen2-MoE's shared expert"),
    ("qwen3_next", "Qwen3-Next's linear (gated delta) attention"),
    ("qwen3_5", "Qwen3.5's linear attention layers"),
    ("qwen3_5_moe_text", "Qwen3.5's linear attention layers"),
    ("qwen3_vl", "the vision tower and multimodal RoPE"),
    ("deepseek_v2", "multi-head latent attention"),
    ("deepseek_v3", "multi-head latent attention"),
    ("gpt_oss", "attention sinks and the OpenAI SwiGLU variant"),
    (
        "granitemoe",
        "Granite's embedding, residual and logit multipliers",
    ),
    ("lfm2", "LFM2's short convolution layers"),
    ("falcon", "Falcon's parallel attention block"),
];

/// A multimodal Gemma 3 (`gemma3`) run as its text model, as mlx-lm's `gemma3.py`:
/// `text_config` with the top level's vocab_size (default 262208), 8 heads and 4 KV
/// heads when unsaid; weights under `language_model.`, the vision tower left unread.
pub(super) fn gemma3(v: &Value, source: &str) -> Result<ModelConfig, WorkerError> {
    let mut t = v
        .get("text_config")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            load_failed(format!(
                "{source}: model_type gemma3 without a text_config object"
            ))
        })?
        .clone();
    t.insert("model_type".into(), "gemma3_text".into());
    t.insert(
        "vocab_size".into(),
        v.get("vocab_size")
            .cloned()
            .unwrap_or_else(|| 262_208.into()),
    );
    t.entry("num_attention_heads").or_insert_with(|| 8.into());
    t.entry("num_key_value_heads").or_insert_with(|| 4.into());
    if let (None, Some(eos)) = (t.get("eos_token_id"), v.get("eos_token_id")) {
        t.insert("eos_token_id".into(), eos.clone());
    }
    if let Some(Value::Object(q)) = v.get("quantization") {
        // Per-layer entries name full paths; the text model's are read without the prefix.
        let q: serde_json::Map<String, Value> = q
            .iter()
            .map(|(k, x)| {
                (
                    k.strip_prefix("language_model.").unwrap_or(k).to_string(),
                    x.clone(),
                )
            })
            .collect();
        t.insert("quantization".into(), Value::Object(q));
    }
    let mut cfg = ModelConfig::from_value(&Value::Object(t), &format!("{source} (text_config)"))?;
    cfg.model_type = "gemma3".into();
    cfg.weight_prefix = Some("language_model.".into());
    Ok(cfg)
}

/// Phi-3's RoPE as mlx-lm's `phi3.py` builds it: `su`/`longrope` with the top-level
/// `original_max_position_embeddings`, `linear`, or (any other type) plain.
pub(super) fn phi3_rope(
    v: &Value,
    scaling: Option<&Value>,
    dims: i32,
    source: &str,
) -> Result<RopeKind, WorkerError> {
    let Some(s) = scaling else {
        return Ok(RopeKind::Default { scale: 1.0 });
    };
    match rope::scaling_type(s) {
        "su" | "longrope" => {
            let mut s = s.clone();
            if let Some(o) = s.as_object_mut() {
                let orig = num(v, "original_max_position_embeddings").unwrap_or(4096.0);
                o.insert("original_max_position_embeddings".into(), orig.into());
            }
            let max_pos = num(v, "max_position_embeddings").unwrap_or(131072.0);
            rope::parse(Some(&s), Some(max_pos), dims, source)
        }
        "linear" => rope::parse(Some(s), None, dims, source),
        _ => Ok(RopeKind::Default { scale: 1.0 }),
    }
}
