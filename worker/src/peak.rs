//! MLX's peak memory across phases: a phase's own peak is measured by resetting MLX's
//! counter around it, and what was reached before the reset is kept here, so the peak a
//! run reports (telemetry, load and done replies) stays the whole run's.

use std::sync::atomic::{AtomicU64, Ordering};

/// The highest peak MLX had counted before its last reset.
static BEFORE_RESET: AtomicU64 = AtomicU64::new(0);

fn mlx_peak() -> u64 {
    mlx_rs::memory::peak_memory().map_or(0, |v| v as u64)
}

/// The process's MLX peak since it started, resets included.
pub fn peak() -> u64 {
    BEFORE_RESET.load(Ordering::Relaxed).max(mlx_peak())
}

/// MLX's active memory now (0 when it cannot say).
pub fn active() -> u64 {
    mlx_rs::memory::active_memory().map_or(0, |v| v as u64)
}

/// Runs `f` and returns its result with the peak MLX memory reached while it ran (the
/// arrays it allocated and those held when it started).
pub fn during<T>(f: impl FnOnce() -> T) -> (T, u64) {
    BEFORE_RESET.fetch_max(mlx_peak(), Ordering::Relaxed);
    let _ = mlx_rs::memory::reset_peak_memory();
    let out = f();
    let p = mlx_peak();
    (out, p)
}
