//! `ShardIndex`: `model.safetensors.index.json` — the publisher's `total_size` and the
//! map from tensor names to shard files.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::as_u64;
use crate::error::EstimateError;
use crate::limits::{Implausible, MAX_TOTAL_SIZE};

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
        let total_size_raw = match root.get("metadata").and_then(|m| m.get("total_size")) {
            None | Some(Value::Null) => None,
            Some(v) => Some(as_u64(v).filter(|&n| n <= MAX_TOTAL_SIZE).ok_or_else(|| {
                EstimateError::Implausible {
                    path: path.to_path_buf(),
                    source: Implausible::new("metadata.total_size", v, 0, MAX_TOTAL_SIZE),
                }
            })?),
        };
        let weight_map = match root.get("weight_map") {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v.as_str() {
                    Some(s) if is_plain_file_name(s) => Ok((k.clone(), s.to_string())),
                    Some(s) => Err(json_err(format!(
                        "weight_map entry `{k}` names {s:?}, which is not a plain file name inside the model folder"
                    ))),
                    None => Err(json_err(format!("weight_map entry `{k}` is not a file name"))),
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

    /// The shard files the index names, as paths inside `dir`.
    pub fn shard_paths(&self, dir: &Path) -> Vec<PathBuf> {
        self.shard_files()
            .into_iter()
            .map(|f| dir.join(f))
            .collect()
    }

    /// The distinct shard file names the index refers to.
    pub fn shard_files(&self) -> BTreeSet<&str> {
        self.weight_map.values().map(String::as_str).collect()
    }
}

/// Whether `name` is a plain file name: no directory part, not `.` or `..`, no NUL.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<ShardIndex, EstimateError> {
        ShardIndex::parse(Path::new("model.safetensors.index.json"), text.as_bytes())
    }

    #[test]
    fn entries_must_be_plain_file_names() {
        for bad in [
            "../../../../etc/passwd",
            "/etc/passwd",
            "a/b.safetensors",
            "..",
            ".",
            "",
        ] {
            let text = format!(r#"{{"weight_map": {{"w": {}}}}}"#, serde_json::json!(bad));
            let e = parse(&text).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains("not a plain file name"), "{bad}: {e}");
        }
        assert!(parse(r#"{"weight_map": {"w": "model-00001.safetensors"}}"#).is_ok());
    }

    #[test]
    fn a_negative_or_huge_total_size_is_an_error_naming_it() {
        for v in ["-5", "1e300", "\"12\"", "1125899906842625"] {
            let text = format!(r#"{{"metadata": {{"total_size": {v}}}}}"#);
            let e = parse(&text).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains("`metadata.total_size`"), "{v}: {e}");
            assert!(e.contains("0..=1125899906842624"), "{v}: {e}");
        }
        let i = parse(r#"{"metadata": {"total_size": 0}}"#).map_err(|e| e.to_string());
        assert_eq!(i.map(|i| i.total_size), Ok(None));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ShardIndex::parse(Path::new("i"), &bytes);
        }

        #[test]
        fn random_total_sizes_never_panic(v in any::<i64>(), f in any::<f64>()) {
            let _ = parse(&format!(r#"{{"metadata": {{"total_size": {v}}}}}"#));
            let _ = parse(&format!(r#"{{"metadata": {{"total_size": {f:e}}}}}"#));
        }
    }
}
