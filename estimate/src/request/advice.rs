//! The advice line of an estimate and its searches: the largest context that fits, the
//! KV cache quantized, the f32 compute's native alternative, a smaller quantization.

use crate::bytes::Bytes;
use crate::model::Model;
use crate::verdict::{Verdict, TIGHT_FRACTION};

use super::{totals, Request};

/// Quantization bits tried, best quality first, when advising how to fit.
pub const ADVICE_BITS: [u8; 5] = [8, 6, 4, 3, 2];

/// The largest context in `1..=upto` whose total stays within `limit`.
pub fn largest_context_within(
    model: &Model,
    req: &Request,
    weights: u64,
    upto: u64,
    limit: u64,
) -> Option<u64> {
    crate::activation::largest_fitting(upto, |c| totals(model, weights, c, req).total <= limit)
}

pub(super) fn advise(
    model: &Model,
    req: &Request,
    weights: u64,
    context: u64,
    total: u64,
    verdict: Verdict,
) -> String {
    let budget = req.budget.0;
    let pct = if budget > 0 {
        total as f64 / budget as f64 * 100.0
    } else {
        f64::INFINITY
    };
    match verdict {
        Verdict::Fits => format!(
            "fits: {} of {} ({pct:.0}%) at context {context}",
            Bytes(total),
            Bytes(budget)
        ),
        Verdict::Tight => {
            let comfy = (TIGHT_FRACTION * budget as f64) as u64;
            match largest_context_within(model, req, weights, context, comfy) {
                Some(c) if c >= 256 => format!(
                    "tight: {pct:.0}% of the budget, expect slowness or swapping; --context {c} stays under {:.0}%",
                    TIGHT_FRACTION * 100.0
                ),
                _ => format!("tight: {pct:.0}% of the budget, expect slowness or swapping; a smaller quantization would help"),
            }
        }
        Verdict::DoesNotFit => {
            // f32 compute holds quantized weights dequantized: a smaller quantization
            // does not help it; the checkpoint's own dtype does.
            let native = Request {
                compute_f32: false,
                ..req.clone()
            };
            let native_weights = req
                .quant_bits
                .and_then(|b| model.weights_at_bits(b))
                .unwrap_or(model.weights.bytes);
            let native_total = totals(model, native_weights, context, &native).total;
            if req.compute_f32 && native_total <= budget {
                return format!(
                    "does not fit as f32 compute: needs {} of {}; in the checkpoint's own dtype it needs {} (--compute native)",
                    Bytes(total),
                    Bytes(budget),
                    Bytes(native_total)
                );
            }
            if let Some(c) =
                largest_context_within(model, req, weights, context, budget).filter(|&c| c >= 256)
            {
                let mut s = format!(
                    "does not fit: needs {} of {}; the largest context that fits is {c} (--context {c})",
                    Bytes(total),
                    Bytes(budget)
                );
                if req.kv_bits.is_none() {
                    let q = Request {
                        kv_bits: Some(4),
                        ..req.clone()
                    };
                    if totals(model, weights, context, &q).total <= budget {
                        s.push_str(&format!(", or keep context {context} with --kv-bits 4"));
                    }
                }
                return s;
            }
            if req.compute_f32 {
                return format!(
                    "does not fit as f32 compute: needs {} of {}, and {} in the checkpoint's own dtype: --compute native, with a smaller context or quantization (mlxsup inspect --compute native)",
                    Bytes(total),
                    Bytes(budget),
                    Bytes(native_total)
                );
            }
            let current_bits = req.quant_bits.map(u64::from);
            for bits in ADVICE_BITS {
                if current_bits.is_some_and(|b| u64::from(bits) >= b) {
                    continue;
                }
                let Some(w) = model.weights_at_bits(bits) else {
                    break;
                };
                if w >= weights {
                    continue;
                }
                let t = totals(model, w, context, req).total;
                if t <= budget {
                    return format!(
                        "does not fit: needs {} of {}; quantized to {bits}-bit it would need {} (--quant-bits {bits})",
                        Bytes(total),
                        Bytes(budget),
                        Bytes(t)
                    );
                }
                if let Some(c) =
                    largest_context_within(model, req, w, context, budget).filter(|&c| c >= 256)
                {
                    return format!(
                        "does not fit: needs {} of {}; quantized to {bits}-bit it fits up to context {c} (--quant-bits {bits} --context {c})",
                        Bytes(total),
                        Bytes(budget)
                    );
                }
            }
            format!(
                "does not fit: needs {} of {}, and no context or quantization brings it within the budget",
                Bytes(total),
                Bytes(budget)
            )
        }
    }
}
