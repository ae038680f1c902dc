//! [`ByteCount`]: a number of bytes on the wire, distinct from other integers.

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

impl std::fmt::Display for ByteCount {
    /// Binary units with one decimal (`1.5 GiB`), bytes below 1 KiB.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut v = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while v >= 1024.0 && unit + 1 < UNITS.len() {
            v /= 1024.0;
            unit += 1;
        }
        write!(f, "{v:.1} {}", UNITS[unit])
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
        assert_eq!(ByteCount(1536).to_string(), "1.5 KiB");
        assert_eq!(ByteCount(100).to_string(), "100 B");
    }
}
