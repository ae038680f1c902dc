//! [`ByteCount`]: a number of bytes on the wire, distinct from other integers (people
//! read it through the `estimate` crate's `Bytes` formatting).

use serde::{Deserialize, Serialize};

/// A number of bytes. `#[serde(transparent)]`: on the wire it is the bare `u64` it
/// replaces (postcard's varint, a JSON number), so no layout changes with it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct ByteCount(pub u64);

impl ByteCount {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for ByteCount {
    fn from(n: u64) -> Self {
        ByteCount(n)
    }
}

impl From<ByteCount> for u64 {
    fn from(b: ByteCount) -> Self {
        b.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::ByteCount;

    #[test]
    fn same_bytes_as_the_bare_u64() {
        for n in [0u64, 1, 127, 128, 1 << 40, u64::MAX] {
            assert_eq!(
                postcard::to_allocvec(&ByteCount(n)).unwrap(),
                postcard::to_allocvec(&n).unwrap()
            );
            assert_eq!(serde_json::to_string(&ByteCount(n)).unwrap(), n.to_string());
        }
    }
}
