//! What a Qwen2-VL / Qwen2.5-VL config adds to its text model's: the vision tower, the
//! image tokens and the multimodal RoPE's sections (mlx-vlm 0.7.6's defaults when
//! absent).
use serde_json::Value;

use super::tower::TowerConfig;
use super::{load_failed, ConfigError};

/// The token ids that place images in a prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VisionTokens {
    pub image: u32,
    pub vision_start: u32,
}

/// What a vision-language config adds to its text model's.
#[derive(Clone, Debug, PartialEq)]
pub struct VlConfig {
    pub tokens: VisionTokens,
    /// `rope_scaling.mrope_section`: the temporal, height and width shares of the
    /// head's `head_dim/2` frequencies.
    pub mrope_section: [i32; 3],
    pub tower: TowerConfig,
}

/// The text model's config of a Qwen2.5-VL or Qwen2-VL `config.json`: its fields at
/// the top level or, in newer exports, under `text_config`, read as a Qwen2 decoder.
pub(super) fn text_value(v: &Value) -> Value {
    let mut text = v.as_object().cloned().unwrap_or_default();
    text.remove("vision_config");
    if let Some(Value::Object(t)) = v.get("text_config") {
        for (k, x) in t {
            text.insert(k.clone(), x.clone());
        }
    }
    text.remove("text_config");
    text.insert("model_type".into(), "qwen2".into());
    Value::Object(text)
}

/// The vision part of a Qwen2.5-VL or Qwen2-VL config `v` whose text model (`text`,
/// from [`text_value`]) has head size `head_dim`, width `hidden` and `vocab` tokens.
pub(super) fn vl_config(
    v: &Value,
    text: &Value,
    head_dim: i32,
    hidden: i32,
    vocab: i32,
    source: &str,
) -> Result<VlConfig, ConfigError> {
    let section = text
        .get("rope_scaling")
        .or_else(|| text.get("rope_parameters"))
        .and_then(|s| s.get("mrope_section"))
        .and_then(Value::as_array)
        .ok_or_else(|| load_failed(format!("{source}: rope_scaling.mrope_section is missing")))?;
    let section: Vec<i32> = section
        .iter()
        .filter_map(|x| x.as_i64().and_then(|n| i32::try_from(n).ok()))
        .filter(|n| *n >= 0)
        .collect();
    let mrope_section: [i32; 3] = section.as_slice().try_into().map_err(|_| {
        load_failed(format!(
            "{source}: rope_scaling.mrope_section must be three non-negative integers"
        ))
    })?;
    if mrope_section.iter().sum::<i32>() != head_dim / 2 {
        return Err(load_failed(format!(
            "{source}: rope_scaling.mrope_section {mrope_section:?} does not add up to head_dim/2 = {}",
            head_dim / 2
        )));
    }
    let id = |key: &str, default: u32| -> Result<u32, ConfigError> {
        match v.get(key) {
            None => Ok(default),
            Some(x) => x
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (*n as i64) < i64::from(vocab))
                .ok_or_else(|| {
                    load_failed(format!(
                        "{source}: {key} is not a token id below vocab_size {vocab}"
                    ))
                }),
        }
    };
    let tokens = VisionTokens {
        image: id("image_token_id", 151_655)?,
        vision_start: id("vision_start_token_id", 151_652)?,
    };
    let tower = TowerConfig::from_config(v).map_err(|e| load_failed(format!("{source}: {e}")))?;
    if tower.out_hidden != hidden {
        return Err(load_failed(format!(
            "{source}: vision_config.out_hidden_size {} differs from hidden_size {hidden}",
            tower.out_hidden
        )));
    }
    Ok(VlConfig {
        tokens,
        mrope_section,
        tower,
    })
}
