//! The model's configuration as the engine builds from it: the `model` crate's one
//! description of `config.json` (read through the estimate crate's capped reader, as
//! the preflight reads it), plus the end-of-sequence ids of `generation_config.json`.
//! The engine keeps no config reader of its own.

use std::path::Path;

use protocol::WorkerError;
use serde_json::Value;

use super::error::load_failed;

pub use ::model::run::{
    Decoder as Family, MoeConfig, QuantParams, Routing, RunConfig as ModelConfig,
};
pub use ::model::{RopeKind, SUPPORTED};

/// Reads `config.json` (described by the `model` crate) and, if present,
/// `generation_config.json` from `dir`.
pub fn load(dir: &Path) -> Result<ModelConfig, WorkerError> {
    let config =
        estimate::config::Config::read_runnable(dir).map_err(|e| load_failed(e.to_string()))?;
    let mut cfg = config
        .description()
        .run_config(&config.path().display().to_string())
        .map_err(|e| load_failed(e.message))?;
    let gen_path = dir.join("generation_config.json");
    if estimate::fsread::present(&gen_path) {
        let bytes = estimate::fsread::read_capped(
            &gen_path,
            estimate::fsread::MAX_CONFIG_BYTES,
            "generation_config.json",
        )
        .map_err(|e| load_failed(e.to_string()))?;
        estimate::json_size::check_values(
            &gen_path,
            &bytes,
            estimate::json_size::MAX_CONFIG_VALUES,
        )
        .map_err(|e| load_failed(e.to_string()))?;
        let g: Value = serde_json::from_slice(&bytes)
            .map_err(|e| load_failed(format!("{} is not valid JSON: {e}", gen_path.display())))?;
        cfg.add_generation_eos(&g);
    }
    Ok(cfg)
}
