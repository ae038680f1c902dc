//! Counting the values of a JSON document without building it, so a file whose parse
//! would inflate far beyond its size (millions of tiny entries) is refused first.
use std::cell::Cell;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Counts every value (objects, arrays, their members, keys included) of `json`, and
/// stops with an error once there are more than `limit`.
pub fn count_values(json: &[u8], limit: u64) -> Result<u64, String> {
    let n = Cell::new(0);
    let mut de = serde_json::Deserializer::from_slice(json);
    let seed = Counter { n: &n, limit };
    match seed.deserialize(&mut de).and_then(|()| de.end()) {
        Ok(()) => Ok(n.get()),
        Err(_) if n.get() > limit => Err(format!("it has more than {limit} JSON values")),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
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
        assert_eq!(
            count_values(b"[0,0,0,0]", 3),
            Err("it has more than 3 JSON values".to_string())
        );
        assert!(count_values(b"[0,", 10).is_err_and(|e| e.starts_with("invalid JSON")));
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
