//! mlxsup-worker: loads one model with mlx-rs and serves it over the worker protocol.
//!
//! `engine` is the model and generation (no sockets); `serve` is the protocol loop that
//! drives it; `telemetry` samples memory; `fault` carries out injected test faults.

pub mod engine;
pub mod fatal_signal;
pub mod fault;
pub mod make_model;
pub mod mlx_info;
pub mod peak;
pub mod serve;
pub mod telemetry;
