//! Weight bytes at f32 compute (issue 14): what the worker holds when, on the CPU, it
//! upcasts f16/bf16 weights and dequantizes MLX-quantized matrices once at load.
//!
//! Exact from the safetensors headers: a float tensor counts 4 bytes per element; a packed
//! MLX-affine weight (`uint32`, with a `.scales` sibling) counts its unpacked elements at
//! 4 bytes; its `.scales` and `.biases` are dropped. Without headers, the analytic dense
//! figure at 4 bytes per element. Other quantization schemes: `None` (not modelled).
use std::collections::{BTreeSet, HashMap};

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
    f32_matrices(model, bits, overrides).map(|m| m.iter().map(|t| t.f32_bytes).sum())
}

/// The f32 build's load transient, on top of the f32 weights (measured in the worker):
/// the largest matrix it transposes once more — a dense matrix while it is transposed
/// for the BLAS, a quantized one while its dequantized blocks are joined, with its
/// quantized tensors still held and one block's working space. A tied embedding table is
/// not transposed (it is looked up by rows), nor is a vision tower (upcast as it is read,
/// its layers used as stored: a Qwen2.5-VL's 4096² merger is not in the transient). Or, if larger, what reading the shards adds
/// over the f32 weights ([`read_peak`]). Freed before the first token, so the peak is the
/// larger of this and the KV cache with activations.
pub fn f32_load_transient_bytes(model: &Model) -> u64 {
    let (bits, overrides) = match &model.quantization {
        Quantization::MlxAffine {
            bits, overrides, ..
        } => (*bits, &overrides[..]),
        _ => (0, &[][..]),
    };
    match f32_matrices(model, bits, overrides) {
        Some(m) if !model.shards.is_empty() => {
            let weights: u64 = m.iter().map(|t| t.f32_bytes).sum();
            let tied = !m.iter().any(|t| t.name.ends_with("lm_head.weight"));
            let read = read_peak(model).saturating_sub(weights);
            m.iter()
                .filter(|t| {
                    t.matrix
                        && !(tied && t.name.ends_with("embed_tokens.weight"))
                        && !crate::model::is_vision_tensor(t.name)
                })
                .map(|t| {
                    let block = if t.quant_bytes > 0 {
                        DEQUANT_BLOCK_BYTES.min(t.f32_bytes)
                    } else {
                        0
                    };
                    t.f32_bytes + t.quant_bytes + block
                })
                .max()
                .unwrap_or(0)
                .max(read)
        }
        _ => {
            let d = &model.activation;
            d.vocab
                .max(d.intermediate)
                .saturating_mul(d.hidden)
                .saturating_mul(4)
        }
    }
}

/// The peak while the worker reads the shards for f32 compute: shard by shard, each
/// shard's tensors largest first (the worker's order), a f16/bf16 tensor held in both
/// dtypes while it is upcast; everything else as stored.
fn read_peak(model: &Model) -> u64 {
    let (mut held, mut peak) = (0u64, 0u64);
    for shard in &model.shards {
        let mut tensors: Vec<_> = shard.tensors.iter().collect();
        tensors.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
        for t in tensors {
            let quant_part = t.name.ends_with(".scales") || t.name.ends_with(".biases");
            if !quant_part && matches!(t.dtype, Dtype::F16 | Dtype::Bf16) {
                peak = peak.max(held + t.bytes * 3);
                held += t.bytes * 2;
            } else {
                held += t.bytes;
                peak = peak.max(held);
            }
        }
    }
    peak
}

/// The worker dequantizes in blocks of 65536 elements: one block at f32.
const DEQUANT_BLOCK_BYTES: u64 = (1 << 16) * 4;

/// One weight tensor as the f32 build holds it.
struct F32Tensor<'a> {
    name: &'a str,
    /// Bytes at f32 (a packed quantized weight unpacked; its scales and biases: 0).
    f32_bytes: u64,
    /// For a quantized weight: its packed weight, scales and biases as stored.
    quant_bytes: u64,
    /// Two-dimensional (a matrix the worker transposes or dequantizes).
    matrix: bool,
}

/// Every tensor of the shard headers at f32, `None` when a bit width is unknown.
fn f32_matrices<'a>(
    model: &'a Model,
    bits: u64,
    overrides: &[(String, Option<(u64, u64)>)],
) -> Option<Vec<F32Tensor<'a>>> {
    let tensors: Vec<_> = model.shards.iter().flat_map(|s| &s.tensors).collect();
    let scaled: BTreeSet<&str> = tensors
        .iter()
        .filter_map(|t| t.name.strip_suffix(".scales"))
        .collect();
    let bytes: HashMap<&str, u64> = tensors.iter().map(|t| (t.name.as_str(), t.bytes)).collect();
    let stored = |name: &str| bytes.get(name).copied().unwrap_or(0);
    let mut out = Vec::with_capacity(tensors.len());
    for t in &tensors {
        let numel: u64 = t.shape.iter().product();
        let module = t.name.strip_suffix(".weight");
        let packed = t.dtype == Dtype::U32 && module.is_some_and(|m| scaled.contains(m));
        let quant_part = t
            .name
            .strip_suffix(".scales")
            .or_else(|| t.name.strip_suffix(".biases"))
            .is_some_and(|m| scaled.contains(m));
        let (f32_bytes, quant_bytes) = if packed {
            let m = module.unwrap_or_default();
            let b = match overrides.iter().find(|(k, _)| same_module(k, m)) {
                Some((_, Some((b, _)))) => *b,
                _ => bits,
            };
            if b == 0 {
                return None;
            }
            let q = t.bytes + stored(&format!("{m}.scales")) + stored(&format!("{m}.biases"));
            (numel.saturating_mul(32) / b * 4, q)
        } else if quant_part {
            (0, 0)
        } else if matches!(t.dtype, Dtype::F16 | Dtype::Bf16) {
            (numel.saturating_mul(4), 0)
        } else {
            (t.bytes, 0)
        };
        out.push(F32Tensor {
            name: &t.name,
            f32_bytes,
            quant_bytes,
            matrix: t.shape.len() == 2 && !quant_part,
        });
    }
    Some(out)
}
