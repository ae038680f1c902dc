//! Vision-language models on MLX: Qwen2.5-VL's and Qwen2-VL's vision tower (`qwen25`), the language
//! side's multimodal RoPE (`mrope`), and the image features spliced into the prompt's
//! embeddings at the image placeholder tokens (`splice`), as mlx-vlm 0.7.6 does it.
pub mod mrope;
pub mod qwen25;
pub mod run;
pub mod splice;
pub mod tower_config;

use protocol::WorkerError;
use serde_json::Value;

use super::config::ModelConfig;
use super::error::load_failed;
use mrope::VisionTokens;
use qwen25::TowerConfig;

/// What a vision-language config adds to its text model's.
#[derive(Clone, Debug, PartialEq)]
pub struct VlConfig {
    pub tokens: VisionTokens,
    /// `rope_scaling.mrope_section`: the temporal, height and width shares of the
    /// head's `head_dim/2` frequencies.
    pub mrope_section: [i32; 3],
    pub tower: TowerConfig,
}

/// A Qwen2.5-VL or Qwen2-VL `config.json`: the text model's fields at the top level (or, in newer
/// exports, under `text_config`), read as a Qwen2 decoder under `language_model.`, plus
/// the vision tower's `vision_config` and the vision token ids (mlx-vlm's defaults when
/// absent).
pub fn vl_model_config(v: &Value, source: &str) -> Result<ModelConfig, WorkerError> {
    let root = v
        .as_object()
        .ok_or_else(|| load_failed(format!("{source}: top level is not an object")))?;
    let mut text = root.clone();
    text.remove("vision_config");
    if let Some(Value::Object(t)) = root.get("text_config") {
        for (k, x) in t {
            text.insert(k.clone(), x.clone());
        }
    }
    text.remove("text_config");
    text.insert("model_type".into(), "qwen2".into());
    let text = Value::Object(text);
    let mut cfg = ModelConfig::from_value(&text, source)?;
    let hd = cfg.head_dim;
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
    if mrope_section.iter().sum::<i32>() != hd / 2 {
        return Err(load_failed(format!(
            "{source}: rope_scaling.mrope_section {mrope_section:?} does not add up to head_dim/2 = {}",
            hd / 2
        )));
    }
    let id = |key: &str, default: u32| -> Result<u32, WorkerError> {
        match root.get(key) {
            None => Ok(default),
            Some(x) => x
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (*n as i64) < i64::from(cfg.vocab_size))
                .ok_or_else(|| {
                    load_failed(format!(
                        "{source}: {key} is not a token id below vocab_size {}",
                        cfg.vocab_size
                    ))
                }),
        }
    };
    let tokens = VisionTokens {
        image: id("image_token_id", 151_655)?,
        vision_start: id("vision_start_token_id", 151_652)?,
    };
    let tower = TowerConfig::from_config(v).map_err(|e| load_failed(format!("{source}: {e}")))?;
    if tower.out_hidden != cfg.hidden_size {
        return Err(load_failed(format!(
            "{source}: vision_config.out_hidden_size {} differs from hidden_size {}",
            tower.out_hidden, cfg.hidden_size
        )));
    }
    cfg.model_type = v
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("qwen2_5_vl")
        .into();
    cfg.weight_prefix = Some("language_model.".into());
    cfg.vl = Some(VlConfig {
        tokens,
        mrope_section,
        tower,
    });
    Ok(cfg)
}

/// A Hugging Face Qwen2-VL / Qwen2.5-VL tensor name as mlx-community's conversion names
/// it (what the engine loads), or `None` when it already is: `visual.*` and
/// `model.visual.*` → `vision_tower.*`; `model.language_model.*` and `model.*` →
/// `language_model.model.*`; `lm_head.*` → `language_model.lm_head.*` (mlx-vlm's
/// `sanitize`, for both of transformers' layouts).
pub fn mlx_name(name: &str) -> Option<String> {
    if let Some(rest) = name
        .strip_prefix("model.visual.")
        .or_else(|| name.strip_prefix("visual."))
    {
        return Some(format!("vision_tower.{rest}"));
    }
    if let Some(rest) = name
        .strip_prefix("model.language_model.")
        .or_else(|| name.strip_prefix("model."))
    {
        return Some(format!("language_model.model.{rest}"));
    }
    name.strip_prefix("lm_head.")
        .map(|rest| format!("language_model.lm_head.{rest}"))
}

#[cfg(test)]
mod generate_tests;
#[cfg(test)]
mod tests;
