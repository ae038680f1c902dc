//! Raw bindings to mlx-c 0.7.0, linked against a prebuilt MLX 0.32.2 (see `build.rs`).
#![allow(non_upper_case_globals)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// mlx-rs 0.33 seeds its default random state with Darwin's `mach_approximate_time`
/// (declared by `mach-sys` on every target). Elsewhere this stands in for it: a
/// monotonic-enough nanosecond count, used only as a seed.
#[cfg(not(target_vendor = "apple"))]
#[no_mangle]
pub extern "C" fn mach_approximate_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
