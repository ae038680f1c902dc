//! The Qwen2-VL / Qwen2.5-VL vision tower's settings from `config.json`'s `vision_config`: Qwen2.5-VL's
//! (`hidden_size`, `intermediate_size`, `out_hidden_size`, windows) or Qwen2-VL's
//! (`embed_dim`, `mlp_ratio`, the merger's output `hidden_size`, no windows).

use serde_json::Value;

/// `vision_config` of a Qwen2-VL or Qwen2.5-VL `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct TowerConfig {
    pub depth: usize,
    /// The tower's width.
    pub hidden: i32,
    pub heads: i32,
    pub intermediate: i32,
    /// The merger's output: the language model's width.
    pub out_hidden: i32,
    pub patch: i32,
    pub temporal: i32,
    pub merge: i32,
    pub window: i32,
    pub in_channels: i32,
    pub fullatt: Vec<usize>,
    /// Qwen2-VL: LayerNorm blocks, a GELU MLP, full attention everywhere.
    pub qwen2: bool,
}

impl TowerConfig {
    /// Reads `vision_config` of a parsed `config.json` (Qwen2-VL's layout when the
    /// top-level `model_type` is `qwen2_vl`); errors name the field.
    pub fn from_config(config: &Value) -> Result<TowerConfig, String> {
        let v = config
            .get("vision_config")
            .ok_or("config.json has no vision_config")?;
        let qwen2 = config.get("model_type").and_then(Value::as_str) == Some("qwen2_vl");
        let int = |key: &str, default: Option<i64>| -> Result<i32, String> {
            match v.get(key).and_then(Value::as_i64).or(default) {
                Some(n) if (1..=1 << 20).contains(&n) => Ok(n as i32),
                _ => Err(format!(
                    "vision_config.{key}: missing or not a positive integer"
                )),
            }
        };
        let depth = int("depth", None)? as usize;
        let (hidden, intermediate, out_hidden) = if qwen2 {
            let embed = int("embed_dim", Some(1280))?;
            let ratio = v.get("mlp_ratio").and_then(Value::as_f64).unwrap_or(4.0);
            let inter = embed as f64 * ratio;
            if !(1.0..=f64::from(1 << 24)).contains(&inter) {
                return Err(format!("vision_config.mlp_ratio {ratio} is out of range"));
            }
            (embed, inter as i32, int("hidden_size", Some(1536))?)
        } else {
            (
                int("hidden_size", None)?,
                int("intermediate_size", None)?,
                int("out_hidden_size", None)?,
            )
        };
        let heads = int("num_heads", None)?;
        if hidden % heads != 0 || (hidden / heads) % 4 != 0 {
            return Err(format!(
                "vision_config: width {hidden} / num_heads {heads} must be a multiple of 4"
            ));
        }
        let fullatt = v
            .get("fullatt_block_indexes")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|i| i as usize)
                    .collect()
            })
            .unwrap_or_default();
        Ok(TowerConfig {
            depth,
            hidden,
            heads,
            intermediate,
            out_hidden,
            patch: int("patch_size", Some(14))?,
            temporal: int("temporal_patch_size", Some(2))?,
            merge: int("spatial_merge_size", Some(2))?,
            window: int("window_size", Some(112))?,
            in_channels: int("in_chans", Some(3))?,
            fullatt,
            qwen2,
        })
    }
}
