//! The compute dtype: what a person asks for (`--compute auto|native|f32`) and what the
//! plan tells the worker to compute in.

use serde::{Deserialize, Serialize};

/// `--compute`: which dtype the weights and activations are computed in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputePolicy {
    /// On the CPU device: f32 when the model at f32 fits the budget, else native. On a
    /// GPU: native.
    #[default]
    Auto,
    /// The checkpoint's own dtype (quantized weights stay quantized).
    Native,
    /// f32: floating weights upcast, quantized weights dequantized once at load.
    F32,
}

impl ComputePolicy {
    /// Parses `auto`, `native` or `f32`.
    pub fn parse(s: &str) -> Result<ComputePolicy, String> {
        match s {
            "auto" => Ok(ComputePolicy::Auto),
            "native" => Ok(ComputePolicy::Native),
            "f32" => Ok(ComputePolicy::F32),
            _ => Err(format!(
                "`{s}` is not a compute policy: auto, native or f32"
            )),
        }
    }
}

/// The dtype the worker is told to compute in (the plan's decision).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeDtype {
    /// The checkpoint's dtype.
    #[default]
    Native,
    /// f32 (upcast and dequantized at load).
    F32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_policies_and_refuses_others() {
        assert_eq!(ComputePolicy::parse("auto"), Ok(ComputePolicy::Auto));
        assert_eq!(ComputePolicy::parse("native"), Ok(ComputePolicy::Native));
        assert_eq!(ComputePolicy::parse("f32"), Ok(ComputePolicy::F32));
        assert!(ComputePolicy::parse("f16").is_err());
    }
}
