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
        Self::parse_with_limit(path, text, MAX_INDEX_ENTRIES)
    }

    /// [`ShardIndex::parse`] with at most `limit` `weight_map` entries.
    fn parse_with_limit(
        path: &Path,
        text: &[u8],
        limit: usize,
    ) -> Result<ShardIndex, EstimateError> {
        let json_err = |reason: String| EstimateError::Json {
            path: path.to_path_buf(),
            reason,
        };
        // Streamed into (name, file) pairs, never a `Value` tree of the whole map, and
        // stopped past MAX_INDEX_ENTRIES: memory stays proportional to what is kept.
        let too_many = std::cell::Cell::new(false);
        let raw = RawIndexSeed {
            too_many: &too_many,
            limit,
        };
        let mut de = serde_json::Deserializer::from_slice(text);
        let parsed = serde::de::DeserializeSeed::deserialize(raw, &mut de).and_then(|r| {
            de.end()?;
            Ok(r)
        });
        let raw = match parsed {
            Ok(r) => r,
            Err(_) if too_many.get() => {
                return Err(EstimateError::Implausible {
                    path: path.to_path_buf(),
                    source: Implausible {
                        field: "weight_map".to_string(),
                        value: format!("more than {limit} entries"),
                        accepted: format!("0..={limit} entries"),
                    },
                })
            }
            Err(e) => return Err(json_err(e.to_string())),
        };
        let RawIndex::Object {
            metadata,
            weight_map: entries,
        } = raw
        else {
            return Err(json_err("top level is not an object".to_string()));
        };
        let total_size_raw = match metadata.as_ref().and_then(|m| m.get("total_size")) {
            None | Some(Value::Null) => None,
            Some(v) => Some(as_u64(v).filter(|&n| n <= MAX_TOTAL_SIZE).ok_or_else(|| {
                EstimateError::Implausible {
                    path: path.to_path_buf(),
                    source: Implausible::new("metadata.total_size", v, 0, MAX_TOTAL_SIZE),
                }
            })?),
        };
        let weight_map = match entries {
            Some(Entries::Map(list)) => list
                .into_iter()
                .map(|(k, v)| match v {
                    Some(s) if is_plain_file_name(&s) => Ok((k, s)),
                    Some(s) => Err(json_err(format!(
                        "weight_map entry `{k}` names {s:?}, which is not a plain file name inside the model folder"
                    ))),
                    None => Err(json_err(format!("weight_map entry `{k}` is not a file name"))),
                })
                .collect::<Result<_, _>>()?,
            Some(Entries::NotAnObject) => {
                return Err(json_err("`weight_map` is not an object".to_string()))
            }
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

/// Most `weight_map` entries accepted. The largest real indexes (4-bit MLX conversions of
/// 384-expert MoE models: weight, scales and biases per expert linear) have about
/// 210 000; each entry costs a few hundred bytes once read, so this also bounds memory.
pub const MAX_INDEX_ENTRIES: usize = 500_000;

/// The index as read: the top level may turn out not to be an object.
enum RawIndex {
    Object {
        metadata: Option<Value>,
        weight_map: Option<Entries>,
    },
    NotAnObject,
}

/// `weight_map` as read: (tensor, file name or `None` when not a string) pairs.
enum Entries {
    Map(Vec<(String, Option<String>)>),
    NotAnObject,
}

struct RawIndexSeed<'a> {
    too_many: &'a std::cell::Cell<bool>,
    limit: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for RawIndexSeed<'_> {
    type Value = RawIndex;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<RawIndex, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RawIndexSeed<'_> {
    type Value = RawIndex;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the index object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawIndex, A::Error> {
        let (mut metadata, mut weight_map) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "metadata" => metadata = Some(map.next_value::<Value>()?),
                "weight_map" => {
                    weight_map = Some(map.next_value_seed(EntriesSeed {
                        too_many: self.too_many,
                        limit: self.limit,
                    })?)
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(RawIndex::Object {
            metadata,
            weight_map,
        })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawIndex, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(RawIndex::NotAnObject)
    }

    fn visit_bool<E>(self, _: bool) -> Result<RawIndex, E> {
        Ok(RawIndex::NotAnObject)
    }
    fn visit_i64<E>(self, _: i64) -> Result<RawIndex, E> {
        Ok(RawIndex::NotAnObject)
    }
    fn visit_u64<E>(self, _: u64) -> Result<RawIndex, E> {
        Ok(RawIndex::NotAnObject)
    }
    fn visit_f64<E>(self, _: f64) -> Result<RawIndex, E> {
        Ok(RawIndex::NotAnObject)
    }
    fn visit_str<E>(self, _: &str) -> Result<RawIndex, E> {
        Ok(RawIndex::NotAnObject)
    }
    fn visit_unit<E>(self) -> Result<RawIndex, E> {
        Ok(RawIndex::NotAnObject)
    }
}

struct EntriesSeed<'a> {
    too_many: &'a std::cell::Cell<bool>,
    limit: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = Entries;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Entries, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for EntriesSeed<'_> {
    type Value = Entries;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the weight_map object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
        let mut list = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if list.len() >= self.limit {
                self.too_many.set(true);
                return Err(serde::de::Error::custom("too many weight_map entries"));
            }
            let file = match map.next_value::<Value>()? {
                Value::String(s) => Some(s),
                _ => None,
            };
            list.push((key, file));
        }
        Ok(Entries::Map(list))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Entries, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Entries::NotAnObject)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Entries, E> {
        Ok(Entries::NotAnObject)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Entries, E> {
        Ok(Entries::NotAnObject)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Entries, E> {
        Ok(Entries::NotAnObject)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Entries, E> {
        Ok(Entries::NotAnObject)
    }
    fn visit_str<E>(self, _: &str) -> Result<Entries, E> {
        Ok(Entries::NotAnObject)
    }
    fn visit_unit<E>(self) -> Result<Entries, E> {
        Ok(Entries::NotAnObject)
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
    fn too_many_entries_stop_the_parse() {
        let text = br#"{"weight_map": {"a": "x", "b": "x", "c": "x", "d": "x"}}"#;
        let p = Path::new("i.json");
        assert!(ShardIndex::parse_with_limit(p, text, 4).is_ok());
        let e = ShardIndex::parse_with_limit(p, text, 3)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "i.json: `weight_map` = more than 3 entries is outside the accepted range 0..=3 entries"
        );
    }

    #[test]
    fn shapes_that_are_not_objects_are_named() {
        for (text, what) in [
            ("[1]", "top level is not an object"),
            ("7", "top level is not an object"),
            (r#"{"weight_map": [1]}"#, "`weight_map` is not an object"),
            (r#"{"weight_map": null}"#, "`weight_map` is not an object"),
            (
                r#"{"weight_map": {"a": 1}}"#,
                "weight_map entry `a` is not a file name",
            ),
            (r#"{"weight_map": {}} x"#, "invalid JSON"),
        ] {
            let e = parse(text).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(what), "{text}: {e}");
        }
        let i = parse(r#"{"metadata": {"total_size": 8}, "x": [1, {"y": 2}], "weight_map": {"a": "f", "a": "g"}}"#).unwrap();
        assert_eq!(i.total_size, Some(8));
        assert_eq!(i.weight_map.get("a").map(String::as_str), Some("g"));
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
