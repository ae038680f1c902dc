//! The daemon's restart policy: backoff between respawns of a failing model, and the
//! quarantine that stops a model failing over and over (as Chromium does with its GPU
//! process).

use std::time::Duration;

/// This many failures within [`QUARANTINE_WINDOW`] put a model in quarantine.
pub const QUARANTINE_AFTER: usize = 3;
pub const QUARANTINE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// The first respawn waits this long; each failure in a row doubles it, up to the cap.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// How long to wait before respawning after the `n`-th failure in a row (1-based).
pub fn backoff(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    BACKOFF_FIRST
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(0), BACKOFF_FIRST);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }
}
