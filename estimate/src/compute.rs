//! Weight bytes at f32 compute (issue 14): what the worker holds when, on the CPU, it
//! upcasts f16/bf16 weights and dequantizes MLX-quantized matrices once at load.
//!
//! Exact from the safetensors headers: a float tensor counts 4 bytes per element; a packed
//! MLX-affine weight (`uint32`, with a `.scales` sibling) counts its unpacked elements at
//! 4 bytes; its `.scales` and `.biases` are dropped. Without headers, the analytic dense
//! figure at 4 bytes per element. Other quantization schemes: `None` (not modelled).
use std::collections::BTreeSet;

use crate::dtype::Dtype;
use crate::model::Model;
use crate::quantization::{same_module, Quantization};
use crate::weights::{analytic_weights, Names};

/// Bytes of the weights computed in f32, when they can be modelled.
pub fn f32_weight_bytes(model: &Model) -> Option<u64> {
    let (bits, overrides) = match &model.quantization {
        Quantization::None => (0, &[][..]),
        Quantization::MlxAffine {
            bits, overrides, ..
        } => (*bits, &overrides[..]),
        _ => return None,
    };
    if model.shards.is_empty() {
        let names: Option<BTreeSet<String>> = model
            .index
            .as_ref()
            .map(|i| i.weight_map.keys().cloned().collect());
        let dense = analytic_weights(&model.config, &Quantization::None, Names(names.as_ref()))
            .ok()?
            .parts
            .total();
        let elem = match model.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
            _ => return None,
        };
        return Some(dense / elem * 4);
    }
    let tensors: Vec<_> = model.shards.iter().flat_map(|s| &s.tensors).collect();
    let scaled: BTreeSet<&str> = tensors
        .iter()
        .filter_map(|t| t.name.strip_suffix(".scales"))
        .collect();
    let mut total = 0u64;
    for t in &tensors {
        let numel: u64 = t.shape.iter().product();
        let module = t.name.strip_suffix(".weight");
        let packed = t.dtype == Dtype::U32 && module.is_some_and(|m| scaled.contains(m));
        let quant_part = t
            .name
            .strip_suffix(".scales")
            .or_else(|| t.name.strip_suffix(".biases"))
            .is_some_and(|m| scaled.contains(m));
        let bytes = if packed {
            let m = module.unwrap_or_default();
            let b = match overrides.iter().find(|(k, _)| same_module(k, m)) {
                Some((_, Some((b, _)))) => *b,
                _ => bits,
            };
            if b == 0 {
                return None;
            }
            numel.saturating_mul(32) / b * 4
        } else if quant_part {
            0
        } else if matches!(t.dtype, Dtype::F16 | Dtype::Bf16) {
            numel.saturating_mul(4)
        } else {
            t.bytes
        };
        total = total.saturating_add(bytes);
    }
    Some(total)
}
