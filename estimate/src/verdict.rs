//! `Verdict`: does the total fit the budget, and the one-line advice for a person.
use serde::Serialize;

/// Above this fraction of the budget a model is `tight`: it fits, but expect swapping or
/// slowness, and little room for anything else.
pub const TIGHT_FRACTION: f64 = 0.70;

/// Whether a model fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// At most [`TIGHT_FRACTION`] of the budget.
    Fits,
    /// Within the budget but over [`TIGHT_FRACTION`] of it.
    Tight,
    /// Over the budget.
    DoesNotFit,
}

impl Verdict {
    /// The verdict for `total` bytes against `budget` bytes.
    pub fn of(total: u64, budget: u64) -> Verdict {
        if total > budget {
            Verdict::DoesNotFit
        } else if total as f64 > TIGHT_FRACTION * budget as f64 {
            Verdict::Tight
        } else {
            Verdict::Fits
        }
    }

    /// The name used in JSON (`does_not_fit`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Fits => "fits",
            Verdict::Tight => "tight",
            Verdict::DoesNotFit => "does_not_fit",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        assert_eq!(Verdict::of(70, 100), Verdict::Fits);
        assert_eq!(Verdict::of(71, 100), Verdict::Tight);
        assert_eq!(Verdict::of(100, 100), Verdict::Tight);
        assert_eq!(Verdict::of(101, 100), Verdict::DoesNotFit);
        assert_eq!(Verdict::of(1, 0), Verdict::DoesNotFit);
    }
}
