//! The compute-dtype policy (`--compute auto|native|f32`, issue 14), decided where the
//! plan is made: it has the estimate and the budget.
//!
//! On MLX's CPU backend the dtype decides the speed: f32 matmuls go to OpenBLAS' SGEMM,
//! bf16 and quantized ones to slow generic kernels. `auto` on the CPU device computes in
//! f32 when the model at f32 (weights upcast or dequantized once at load, KV cache in
//! f32) fits the budget under the usual safety fraction (the verdict `fits`); otherwise
//! it keeps the native dtype and says so in one line. On Metal/CUDA, `auto` is native.

use estimate::{Bytes, Estimate, Model, Verdict};
use protocol::{ComputeDtype, ComputePolicy, Device};

use crate::plan::{estimate_for, PlanRequest};

/// Whether the worker will compute on the CPU device: asked for, or the default device
/// of a CPU-only build (Linux without `MLX_BACKEND=cuda` at build time; macOS has Metal).
pub fn runs_on_cpu(device: Device) -> bool {
    match device {
        Device::Cpu => true,
        Device::Default | Device::Gpu => {
            !cfg!(target_os = "macos") && option_env!("MLX_BACKEND") != Some("cuda")
        }
    }
}

/// The compute dtype for `req`, the estimate at that dtype, and the one-line note when
/// `auto` kept the native dtype on the CPU (or `f32` cannot be modelled).
pub fn choose(model: &Model, req: &PlanRequest) -> (ComputeDtype, Estimate, Option<String>) {
    decide(model, req.compute, req.device, |f32| {
        estimate_for(model, req, req.context, f32)
    })
}

/// The policy, for any estimate request: `at(f32)` estimates at that compute dtype.
pub fn decide(
    model: &Model,
    policy: ComputePolicy,
    device: Device,
    at: impl Fn(bool) -> Estimate,
) -> (ComputeDtype, Estimate, Option<String>) {
    let f32_modelled = estimate::compute::f32_weight_bytes(model).is_some();
    match policy {
        ComputePolicy::F32 if f32_modelled => (ComputeDtype::F32, at(true), None),
        ComputePolicy::F32 => {
            let note = format!(
                "compute: native {} kept: f32 compute is not available for these weights",
                native_name(model)
            );
            (ComputeDtype::Native, at(false), Some(note))
        }
        ComputePolicy::Auto if runs_on_cpu(device) && f32_modelled => {
            let f = at(true);
            if f.verdict == Verdict::Fits {
                return (ComputeDtype::F32, f, None);
            }
            let note = format!(
                "compute: native {} on the CPU (slower kernels): as f32 it would need {} of the {} budget, over the {:.0}% safety line; --compute f32 forces it",
                native_name(model),
                Bytes(f.total_bytes),
                Bytes(f.budget_bytes),
                f.tight_fraction * 100.0
            );
            (ComputeDtype::Native, at(false), Some(note))
        }
        ComputePolicy::Auto | ComputePolicy::Native => (ComputeDtype::Native, at(false), None),
    }
}

/// The native compute dtype in words (`bf16`, `bf16, 4-bit quantized`).
pub fn native_name(model: &Model) -> String {
    if model.quantization.is_quantized() {
        format!("{} ({})", model.dtype, model.quantization.describe())
    } else {
        model.dtype.to_string()
    }
}
