//! `Bytes`: a byte count with human formatting (`1.5 GiB`) and a parser for the sizes
//! the command line accepts (`512MiB`, `8GiB`, `1.5GB`, `4096`).
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A number of bytes. Serializes as a plain integer, displays as `1.5 GiB`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Bytes(pub u64);

impl Bytes {
    /// One kibibyte (1024 bytes).
    pub const KIB: u64 = 1 << 10;
    /// One mebibyte.
    pub const MIB: u64 = 1 << 20;
    /// One gibibyte.
    pub const GIB: u64 = 1 << 30;
    /// One tebibyte.
    pub const TIB: u64 = 1 << 40;

    /// The count as a `u64`.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for Bytes {
    fn from(n: u64) -> Bytes {
        Bytes(n)
    }
}

impl fmt::Display for Bytes {
    /// Binary units with at most one decimal: `512 B`, `1.5 KiB`, `7.2 GiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let n = self.0;
        if n < 1024 {
            return write!(f, "{n} B");
        }
        let mut value = n as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        // Avoid printing "1024.0 KiB" when rounding crosses a unit boundary.
        if value >= 1023.95 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        if value >= 100.0 || (value - value.round()).abs() < 0.05 {
            write!(f, "{:.0} {}", value.round(), UNITS[unit])
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

/// Why a size could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseBytesError {
    /// The text was empty.
    #[error("empty size")]
    Empty,
    /// The number part is not a non-negative decimal number.
    #[error("invalid number in size `{0}`")]
    Number(String),
    /// The unit is not one of B, KB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB (or K, M, G,
    /// T, P).
    #[error("unknown unit `{unit}` in size `{text}` (use B, KB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB)")]
    Unit {
        /// The whole input.
        text: String,
        /// The unit part.
        unit: String,
    },
    /// The value does not fit in 64 bits.
    #[error("size `{0}` is too large")]
    Overflow(String),
}

impl FromStr for Bytes {
    type Err = ParseBytesError;

    /// Parses `4096`, `512MiB`, `8 GiB`, `1.5GB`, `2k` (case-insensitive units; decimal
    /// units KB/MB/GB/TB/PB are powers of 1000, binary units KiB/MiB/GiB/TiB/PiB and the
    /// single letters K/M/G/T/P are powers of 1024: what `Display` writes parses back). Fractional values round down to
    /// whole bytes.
    fn from_str(s: &str) -> Result<Bytes, ParseBytesError> {
        let text = s.trim();
        if text.is_empty() {
            return Err(ParseBytesError::Empty);
        }
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let unit = unit.trim();
        if number.is_empty() || number.starts_with('.') && number.len() == 1 {
            return Err(ParseBytesError::Number(text.to_string()));
        }
        let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            "pb" => 1_000_000_000_000_000,
            "k" | "kib" => Bytes::KIB,
            "m" | "mib" => Bytes::MIB,
            "g" | "gib" => Bytes::GIB,
            "t" | "tib" => Bytes::TIB,
            "p" | "pib" => Bytes::TIB * 1024,
            _ => {
                return Err(ParseBytesError::Unit {
                    text: text.to_string(),
                    unit: unit.to_string(),
                })
            }
        };
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) => (i, f),
            None => (number, ""),
        };
        if frac_part.contains('.') {
            return Err(ParseBytesError::Number(text.to_string()));
        }
        let overflow = || ParseBytesError::Overflow(text.to_string());
        let int: u64 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut total = int.checked_mul(multiplier).ok_or_else(overflow)?;
        // Exact fraction: digits / 10^len × multiplier, in 128-bit to stay exact.
        let frac_digits = &frac_part[..frac_part.len().min(30)];
        if !frac_digits.is_empty() {
            let mut num: u128 = 0;
            let mut den: u128 = 1;
            for d in frac_digits.bytes().take(18) {
                num = num * 10 + u128::from(d - b'0');
                den *= 10;
            }
            let frac = (num * u128::from(multiplier)) / den;
            total = total
                .checked_add(u64::try_from(frac).map_err(|_| overflow())?)
                .ok_or_else(overflow)?;
        }
        Ok(Bytes(total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!("512MiB".parse(), Ok(Bytes(512 * Bytes::MIB)));
        assert_eq!("8GiB".parse(), Ok(Bytes(8 * Bytes::GIB)));
        assert_eq!("1 PiB".parse(), Ok(Bytes(1024 * Bytes::TIB)));
        assert_eq!("1.5GB".parse(), Ok(Bytes(1_500_000_000)));
        assert_eq!("4096".parse(), Ok(Bytes(4096)));
        assert_eq!("8 gib".parse(), Ok(Bytes(8 * Bytes::GIB)));
        assert_eq!("2k".parse(), Ok(Bytes(2048)));
        assert_eq!("0.5KiB".parse(), Ok(Bytes(512)));
        assert_eq!("1.5".parse(), Ok(Bytes(1)));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!("".parse::<Bytes>(), Err(ParseBytesError::Empty));
        assert!("GiB".parse::<Bytes>().is_err());
        assert!("1.2.3GB".parse::<Bytes>().is_err());
        assert!("-1GB".parse::<Bytes>().is_err());
        assert!("12 parsecs".parse::<Bytes>().is_err());
        assert!(".".parse::<Bytes>().is_err());
        assert!("99999999999999999999".parse::<Bytes>().is_err());
        assert!("17179869184GiB".parse::<Bytes>().is_err());
    }

    #[test]
    fn formats_humanly() {
        assert_eq!(Bytes(0).to_string(), "0 B");
        assert_eq!(Bytes(1023).to_string(), "1023 B");
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
        assert_eq!(Bytes(3 * Bytes::GIB / 2).to_string(), "1.5 GiB");
        assert_eq!(Bytes(8 * Bytes::GIB).to_string(), "8 GiB");
        assert_eq!(Bytes(Bytes::MIB - 1).to_string(), "1 MiB");
        assert_eq!(Bytes(u64::MAX).to_string(), "16384 PiB");
        // Just under 1 PiB displays as `1 PiB` (found by display_parses_back_close).
        let shown = Bytes(1_125_844_931_261_236).to_string();
        assert_eq!(shown, "1 PiB");
        assert_eq!(shown.parse(), Ok(Bytes(1024 * Bytes::TIB)));
    }

    proptest! {
        #[test]
        fn plain_integers_round_trip(n in any::<u64>()) {
            prop_assert_eq!(n.to_string().parse::<Bytes>(), Ok(Bytes(n)));
        }

        #[test]
        fn binary_units_multiply(n in 0u64..1_000_000, unit in 0usize..4) {
            let (suffix, mult) = [("KiB", Bytes::KIB), ("MiB", Bytes::MIB), ("GiB", Bytes::GIB), ("TiB", Bytes::TIB)][unit];
            prop_assert_eq!(format!("{n}{suffix}").parse::<Bytes>(), Ok(Bytes(n * mult)));
        }

        #[test]
        fn decimal_fractions_are_exact(int in 0u64..10_000, tenths in 0u64..10) {
            prop_assert_eq!(format!("{int}.{tenths}GB").parse::<Bytes>(), Ok(Bytes(int * 1_000_000_000 + tenths * 100_000_000)));
        }

        #[test]
        fn never_panics(s in ".{0,40}") {
            let _ = s.parse::<Bytes>();
        }

        #[test]
        fn display_parses_back_close(n in 1u64..(1u64 << 50)) {
            let shown = Bytes(n).to_string();
            let back = shown.replace(' ', "").parse::<Bytes>();
            prop_assert!(back.is_ok(), "{} did not parse", shown);
            let back = back.unwrap_or_default().0 as f64;
            prop_assert!((back - n as f64).abs() / n as f64 <= 0.05, "{} -> {}", n, shown);
        }
    }
}
