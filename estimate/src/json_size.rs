//! Counting the values of a JSON document without building it, so a file whose parse
//! would inflate far beyond its size (millions of tiny entries) is refused first.
use std::cell::Cell;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Most JSON values a `config.json` or `generation_config.json` may have (real ones have
/// hundreds; a few VLM configs some thousands).
pub const MAX_CONFIG_VALUES: u64 = 200_000;

/// Why a document was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JsonSizeError {
    /// More values than the limit.
    #[error("it has more than {0} JSON values")]
    TooMany(u64),
    /// Not JSON at all (the parser's message).
    #[error("invalid JSON: {0}")]
    Invalid(String),
}

/// Counts every value (objects, arrays, their members, keys included) of `json`, and
/// stops with an error once there are more than `limit`.
pub fn count_values(json: &[u8], limit: u64) -> Result<u64, JsonSizeError> {
    let n = Cell::new(0);
    let mut de = serde_json::Deserializer::from_slice(json);
    let seed = Counter { n: &n, limit };
    match seed.deserialize(&mut de).and_then(|()| de.end()) {
        Ok(()) => Ok(n.get()),
        Err(_) if n.get() > limit => Err(JsonSizeError::TooMany(limit)),
        Err(e) => Err(JsonSizeError::Invalid(e.to_string())),
    }
}

/// [`count_values`] as an [`EstimateError`] naming `path`.
pub fn check_values(
    path: &std::path::Path,
    json: &[u8],
    limit: u64,
) -> Result<u64, crate::EstimateError> {
    count_values(json, limit).map_err(|e| match e {
        JsonSizeError::TooMany(_) => crate::EstimateError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
        JsonSizeError::Invalid(reason) => crate::EstimateError::Json {
            path: path.to_path_buf(),
            reason,
        },
    })
}

#[derive(Clone, Copy)]
struct Counter<'a> {
    n: &'a Cell<u64>,
    limit: u64,
}

impl Counter<'_> {
    fn bump<E: serde::de::Error>(&self) -> Result<(), E> {
        self.n.set(self.n.get() + 1);
        if self.n.get() > self.limit {
            Err(E::custom("too many JSON values"))
        } else {
            Ok(())
        }
    }
}

impl<'de> DeserializeSeed<'de> for Counter<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.bump()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.bump()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.bump()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.bump()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.bump()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.bump()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.bump()?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.bump()?;
        while map.next_key::<IgnoredAny>()?.is_some() {
            self.bump()?;
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_every_value_and_key() {
        assert_eq!(count_values(b"7", 10), Ok(1));
        assert_eq!(count_values(br#"{"a": [1, 2, {"b": null}]}"#, 10), Ok(8));
        let e = count_values(b"[0,0,0,0]", 3);
        assert_eq!(e, Err(JsonSizeError::TooMany(3)));
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("it has more than 3 JSON values".to_string())
        );
        assert!(matches!(
            count_values(b"[0,", 10),
            Err(JsonSizeError::Invalid(_))
        ));
        assert!(count_values(b"{} x", 10).is_err());
    }

    proptest! {
        #[test]
        fn agrees_with_serde_json_on_validity(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let ours = count_values(&bytes, u64::MAX).is_ok();
            let theirs = serde_json::from_slice::<serde_json::Value>(&bytes).is_ok();
            prop_assert_eq!(ours, theirs);
        }
    }
}
