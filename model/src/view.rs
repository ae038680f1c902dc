//! `ConfigView`: typed access to a parsed `config.json`, looking into the language
//! model's sub-config (`text_config`, `language_config`, `llm_config`) first for VLMs.
use serde_json::{Map, Value};

/// Names under which VLM configs keep the language model's settings.
pub const TEXT_KEYS: [&str; 3] = ["text_config", "language_config", "llm_config"];

/// A parsed `config.json` object (already range-checked by the caller).
#[derive(Clone, Debug, Default)]
pub struct ConfigView {
    root: Map<String, Value>,
    text: Option<Map<String, Value>>,
}

impl ConfigView {
    /// A view of `root`, with its text sub-config when it has one.
    pub fn new(root: Map<String, Value>) -> ConfigView {
        let text = TEXT_KEYS
            .iter()
            .find_map(|k| root.get(*k).and_then(Value::as_object))
            .cloned();
        ConfigView { root, text }
    }

    /// The top-level object, back.
    pub fn into_root(self) -> Map<String, Value> {
        self.root
    }

    /// The whole top-level object.
    pub fn root_map(&self) -> &Map<String, Value> {
        &self.root
    }

    /// A value, from the text sub-config first, then the top level.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.text
            .as_ref()
            .and_then(|t| t.get(key))
            .filter(|v| !v.is_null())
            .or_else(|| self.root.get(key).filter(|v| !v.is_null()))
    }

    /// A top-level value only.
    pub fn root(&self, key: &str) -> Option<&Value> {
        self.root.get(key).filter(|v| !v.is_null())
    }

    /// The first of `keys` that is a non-negative integer.
    pub fn u64(&self, keys: &[&str]) -> Option<u64> {
        keys.iter().find_map(|k| self.get(k).and_then(as_u64))
    }

    /// The first of `keys` that is a number.
    pub fn f64(&self, keys: &[&str]) -> Option<f64> {
        keys.iter()
            .find_map(|k| self.get(k).and_then(Value::as_f64))
    }

    /// A boolean field.
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }

    /// A string field.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// The top-level `model_type` (`"llama"`, `"qwen2_5_vl"`), or `"unknown"`.
    pub fn model_type(&self) -> &str {
        self.root("model_type")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
    }

    /// The language model's `model_type` (same as [`ConfigView::model_type`] for text
    /// models).
    pub fn text_model_type(&self) -> &str {
        self.text
            .as_ref()
            .and_then(|t| t.get("model_type"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| self.model_type())
    }

    /// The vision tower's config, when the model has one.
    pub fn vision(&self) -> Option<&Map<String, Value>> {
        self.root("vision_config").and_then(Value::as_object)
    }

    /// `layer_types` as strings, when present.
    pub fn layer_types(&self) -> Option<Vec<String>> {
        let list = self.get("layer_types")?.as_array()?;
        list.iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    /// A list of integers (`full_attn_idxs`).
    pub fn u64_list(&self, key: &str) -> Option<Vec<u64>> {
        self.get(key)?.as_array()?.iter().map(as_u64).collect()
    }
}

/// A JSON number as a non-negative integer (accepting `4096.0`).
pub fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1e18)
            .map(|f| f as u64)
    })
}

/// A field of a sub-object (the vision config), as an integer.
pub fn map_u64(map: &Map<String, Value>, keys: &[&str]) -> Option<u64> {
    keys.iter().find_map(|k| map.get(*k).and_then(as_u64))
}
