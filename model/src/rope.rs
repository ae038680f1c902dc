//! RoPE and its scalings as a config names them, read as mlx-lm 0.32.2's
//! `initialize_rope` reads `rope_scaling`: default, linear, dynamic NTK, Llama 3, YaRN
//! and Su/LongRoPE (the worker computes them).

use serde_json::Value;

use crate::run::{load_failed, ConfigError};

/// The scaling types the engine computes.
pub const ROPE_TYPES: &str = "default, linear, dynamic, llama3, yarn, longrope (su)";

/// How rotary position embeddings are computed.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeKind {
    /// `nn.RoPE` with a position scale (1.0, or 1/factor for `linear`).
    Default { scale: f32 },
    /// Llama 3.x frequency smoothing.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
    /// Dynamic NTK: the base grows once the sequence passes `max_position_embeddings`.
    Dynamic {
        factor: f64,
        max_position_embeddings: f64,
    },
    /// YaRN: blended frequencies and an input (attention) scale `mscale`.
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        mscale: f64,
        mscale_all_dim: f64,
    },
    /// Su / LongRoPE: per-frequency factors and an input scale. mlx-lm 0.32.2 applies
    /// the long factors at every length (its `SuScaledRoPE`); so does this engine.
    Su {
        long_factor: Vec<f32>,
        max_position_embeddings: f64,
        original_max_position_embeddings: f64,
    },
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// One factor or a list of them (as `SuScaledRoPE` accepts).
fn factors(v: &Value, key: &str, dims: i32, source: &str) -> Result<Vec<f32>, ConfigError> {
    let half = usize::try_from(dims / 2).unwrap_or(0);
    match v.get(key) {
        Some(Value::Number(n)) => Ok(vec![n.as_f64().unwrap_or(1.0) as f32; half]),
        Some(Value::Array(a)) => {
            let out: Option<Vec<f32>> = a.iter().map(|x| x.as_f64().map(|f| f as f32)).collect();
            match out {
                Some(f) if f.len() == half => Ok(f),
                Some(f) => Err(load_failed(format!(
                    "{source}: rope_scaling.{key} has {} entries, the rotary size {dims} needs {half}",
                    f.len()
                ))),
                None => Err(load_failed(format!(
                    "{source}: rope_scaling.{key} is not a list of numbers"
                ))),
            }
        }
        _ => Err(load_failed(format!(
            "{source}: longrope rope_scaling needs {key}"
        ))),
    }
}

/// The scaling type named by a `rope_scaling` object (`type`, else `rope_type`).
pub fn scaling_type(s: &Value) -> &str {
    s.get("type")
        .or_else(|| s.get("rope_type"))
        .and_then(Value::as_str)
        .unwrap_or("default")
}

/// Parses `rope_scaling` as mlx-lm's `initialize_rope` reads it. `max_pos` is the
/// config's `max_position_embeddings`; `dims` the rotary size (for factor lists).
pub fn parse(
    scaling: Option<&Value>,
    max_pos: Option<f64>,
    dims: i32,
    source: &str,
) -> Result<RopeKind, ConfigError> {
    let Some(s) = scaling else {
        return Ok(RopeKind::Default { scale: 1.0 });
    };
    let kind = scaling_type(s);
    let factor = |what: &str| {
        num(s, "factor")
            .filter(|f| f.is_finite() && *f > 0.0)
            .ok_or_else(|| {
                load_failed(format!(
                    "{source}: {what} rope_scaling needs a positive factor"
                ))
            })
    };
    let need_max = |what: &str| {
        max_pos.ok_or_else(|| {
            load_failed(format!(
                "{source}: {what} rope_scaling needs max_position_embeddings"
            ))
        })
    };
    match kind {
        "default" | "mrope" => Ok(RopeKind::Default { scale: 1.0 }),
        "linear" => Ok(RopeKind::Default {
            scale: (1.0 / factor("linear")?) as f32,
        }),
        "llama3" => Ok(RopeKind::Llama3 {
            factor: factor("llama3")? as f32,
            low_freq_factor: num(s, "low_freq_factor").unwrap_or(1.0) as f32,
            high_freq_factor: num(s, "high_freq_factor").unwrap_or(4.0) as f32,
            original_max_position_embeddings: num(s, "original_max_position_embeddings")
                .unwrap_or(8192.0) as f32,
        }),
        "dynamic" => Ok(RopeKind::Dynamic {
            factor: factor("dynamic")?,
            max_position_embeddings: need_max("dynamic")?,
        }),
        "yarn" | "deepseek_yarn" => Ok(RopeKind::Yarn {
            factor: factor("yarn")?,
            original_max_position_embeddings: num(s, "original_max_position_embeddings")
                .unwrap_or(4096.0),
            beta_fast: num(s, "beta_fast").unwrap_or(32.0),
            beta_slow: num(s, "beta_slow").unwrap_or(1.0),
            mscale: num(s, "mscale").unwrap_or(1.0),
            mscale_all_dim: num(s, "mscale_all_dim").unwrap_or(0.0),
        }),
        "longrope" | "su" => Ok(RopeKind::Su {
            long_factor: factors(s, "long_factor", dims, source)?,
            max_position_embeddings: need_max("longrope")?,
            original_max_position_embeddings: num(s, "original_max_position_embeddings")
                .ok_or_else(|| {
                    load_failed(format!(
                        "{source}: longrope rope_scaling needs original_max_position_embeddings"
                    ))
                })?,
        }),
        other => Err(load_failed(format!(
            "{source}: rope scaling type {other:?} is not supported (supported: {ROPE_TYPES})"
        ))),
    }
}
