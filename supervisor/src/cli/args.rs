//! Checked parsers for numeric command-line arguments: sampling parameters must be
//! finite and in range (the rule the worker applies to requests, from `protocol`), or
//! clap refuses them with exit 2 before anything runs.

/// A sampling temperature: finite and >= 0 (0 is greedy).
pub fn parse_temperature(s: &str) -> Result<f32, String> {
    let t: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    protocol::check_temperature(t).map(|()| t)
}

/// A nucleus-sampling threshold: in (0, 1].
pub fn parse_top_p(s: &str) -> Result<f32, String> {
    let p: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    protocol::check_top_p(p).map(|()| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperatures() {
        assert_eq!(parse_temperature("0"), Ok(0.0));
        assert_eq!(parse_temperature("0.7"), Ok(0.7));
        for bad in ["-1", "NaN", "nan", "inf", "-0.001", "x", ""] {
            assert!(parse_temperature(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn top_ps() {
        assert_eq!(parse_top_p("1"), Ok(1.0));
        assert_eq!(parse_top_p("0.9"), Ok(0.9));
        for bad in ["0", "2", "1.0001", "NaN", "-0.5", "inf"] {
            assert!(parse_top_p(bad).is_err(), "{bad}");
        }
    }
}
