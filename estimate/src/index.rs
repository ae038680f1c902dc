//! `ShardIndex`: `model.safetensors.index.json` — the publisher's `total_size` and the
//! map from tensor names to shard files.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::as_u64;
use crate::error::EstimateError;

/// File name of the shard index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// A parsed shard index.
#[derive(Clone, Debug)]
pub struct ShardIndex {
    /// The index file.
    pub path: PathBuf,
    /// `metadata.total_size`, when present and non-zero.
    pub total_size: Option<u64>,
    /// `metadata.total_size` as stored (0 is kept here, for reports).
    pub total_size_raw: Option<u64>,
    /// Tensor name → shard file name.
    pub weight_map: BTreeMap<String, String>,
}

impl ShardIndex {
    /// Parses index text; `path` is used in errors.
    pub fn parse(path: &Path, text: &[u8]) -> Result<ShardIndex, EstimateError> {
        let json_err = |reason: String| EstimateError::Json {
            path: path.to_path_buf(),
            reason,
        };
        let value: Value = serde_json::from_slice(text).map_err(|e| json_err(e.to_string()))?;
        let Value::Object(root) = value else {
            return Err(json_err("top level is not an object".to_string()));
        };
        let total_size_raw = root
            .get("metadata")
            .and_then(|m| m.get("total_size"))
            .and_then(as_u64);
        let weight_map = match root.get("weight_map") {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    v.as_str()
                        .map(|s| (k.clone(), s.to_string()))
                        .ok_or_else(|| {
                            json_err(format!("weight_map entry `{k}` is not a file name"))
                        })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(json_err("`weight_map` is not an object".to_string())),
            None => BTreeMap::new(),
        };
        Ok(ShardIndex {
            path: path.to_path_buf(),
            total_size: total_size_raw.filter(|&n| n > 0),
            total_size_raw,
            weight_map,
        })
    }

    /// The distinct shard file names the index refers to.
    pub fn shard_files(&self) -> BTreeSet<&str> {
        self.weight_map.values().map(String::as_str).collect()
    }
}
