//! The family-specific parts of the worker's reading: a multimodal Gemma 3 read as its
//! text model, and Phi-3's RoPE.

use serde_json::Value;

use super::{load_failed, num, ConfigError};
use crate::rope::{self, RopeKind};

/// A multimodal Gemma 3 (`gemma3`)'s text model, as mlx-lm's `gemma3.py` reads it:
/// `text_config` (its heads and vocabulary come from the description) with the top
/// level's end-of-sequence ids when it names none, and the quantization's per-layer
/// entries without the `language_model.` prefix (weights are read under it).
pub(super) fn gemma3_text(v: &Value, source: &str) -> Result<Value, ConfigError> {
    let mut t = v
        .get("text_config")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            load_failed(format!(
                "{source}: model_type gemma3 without a text_config object"
            ))
        })?
        .clone();
    if let (None, Some(eos)) = (t.get("eos_token_id"), v.get("eos_token_id")) {
        t.insert("eos_token_id".into(), eos.clone());
    }
    if let Some(Value::Object(q)) = v.get("quantization") {
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
    Ok(Value::Object(t))
}

/// Phi-3's RoPE as mlx-lm's `phi3.py` builds it: `su`/`longrope` with the top-level
/// `original_max_position_embeddings`, `linear`, or (any other type) plain.
pub(super) fn phi3_rope(
    v: &Value,
    scaling: Option<&Value>,
    dims: i32,
    source: &str,
) -> Result<RopeKind, ConfigError> {
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
