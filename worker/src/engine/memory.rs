//! The soft guard's prediction: how many bytes one prefill chunk or decode step adds on
//! top of what MLX already holds: KV-cache growth (this engine's buffers) plus transient
//! activations, which come from the one activation model of the `estimate` crate — the
//! preflight's, with the coefficients the load request carried.

use estimate::vision_activation::{VisionCoefficients, VisionModel, BUILTIN_VISION};
use estimate::{activation::Attended, ActivationDims, ActivationModel, Coefficients};

use super::cache::{LayerCache, STEP};
use super::config::ModelConfig;

/// The activation model's dimensions of this config (the preflight reads the same from
/// config.json; a test holds the two to equal). A token of an MoE layer runs `top_k`
/// experts' MLPs.
pub fn activation_dims(cfg: &ModelConfig) -> ActivationDims {
    let intermediate = match &cfg.moe {
        Some(m) => m.top_k.max(0) as u64 * m.intermediate.max(0) as u64,
        None => cfg.intermediate_size.max(0) as u64,
    };
    ActivationDims {
        heads: cfg.num_heads.max(0) as u64,
        hidden: cfg.hidden_size.max(0) as u64,
        intermediate,
        vocab: cfg.vocab_size.max(0) as u64,
    }
}

/// The load request's coefficients, or the built-in ones.
pub fn activation_model(wire: Option<&protocol::ActivationModel>) -> ActivationModel {
    let k = |c: &protocol::ActivationCoefficients| Coefficients {
        score_bytes: c.score_bytes,
        mlp_bytes: c.mlp_bytes,
        mask_bytes: c.mask_bytes,
        overhead_bytes: c.overhead_bytes,
    };
    let v = |c: &protocol::VisionCoefficients| VisionCoefficients {
        score_bytes: c.score_bytes,
        width_bytes: c.width_bytes,
        mlp_bytes: c.mlp_bytes,
        full_width_bytes: c.full_width_bytes,
        pixel_bytes: c.pixel_bytes,
    };
    wire.map_or(estimate::activation::BUILTIN, |m| ActivationModel {
        half: k(&m.half),
        full: k(&m.full),
        vision: m
            .vision
            .as_ref()
            .map_or(BUILTIN_VISION, |[h, f]| VisionModel {
                half: v(h),
                full: v(f),
            }),
    })
}

/// Transient activation bytes of one forward pass over `n` new tokens attending to
/// `attended` (including the new ones), with activations of `elem` bytes:
/// [`ActivationModel::predict`], the preflight's function.
pub fn activation_bytes(
    model: &ActivationModel,
    cfg: &ModelConfig,
    elem: u64,
    n: u64,
    attended: Attended,
) -> u64 {
    model
        .predict(&activation_dims(cfg), elem, n, attended, 1)
        .bytes
}

/// Bytes the caches will newly allocate to take `n` more tokens.
pub fn kv_growth_bytes(cfg: &ModelConfig, caches: &[LayerCache], elem: u64, n: i32) -> u64 {
    let per_pos = 2 * cfg.num_kv_heads as u64 * cfg.head_dim as u64 * elem;
    caches
        .iter()
        .map(|c| {
            let (offset, cap) = (c.offset(), c.capacity());
            match c {
                LayerCache::Full(_) if offset + n > cap => {
                    // The buffer grows by whole steps; the concatenation briefly holds
                    // the old and the new buffer.
                    let grow = (n + STEP - 1) / STEP * STEP;
                    (cap + grow) as u64 * per_pos
                }
                LayerCache::Rotating(r) if n > 1 => {
                    (offset.min(r.max_size() - 1) + n) as u64 * per_pos
                }
                LayerCache::Rotating(r) if cap < r.max_size() && offset >= cap => {
                    (cap + STEP.min(r.max_size() - offset)) as u64 * per_pos
                }
                LayerCache::Quantized(q) if offset + n > cap => {
                    // Packed values plus a scale and a bias per group of 64, for keys
                    // and values; grown by whole steps, old and new buffer at once.
                    let hd = cfg.head_dim as u64;
                    let per_pos_q = 2
                        * cfg.num_kv_heads as u64
                        * (hd * q.bits() as u64 / 8 + 2 * (hd / 64).max(1) * elem);
                    let grow = (n + STEP - 1) / STEP * STEP;
                    (cap + grow) as u64 * per_pos_q
                }
                _ => 0,
            }
        })
        .sum()
}

/// The prediction handed to `Hooks::before_step`.
pub fn step_bytes(
    model: &ActivationModel,
    cfg: &ModelConfig,
    caches: &[LayerCache],
    elem: u64,
    n: i32,
) -> u64 {
    kv_growth_bytes(cfg, caches, elem, n)
        + activation_bytes(model, cfg, elem, n.max(1) as u64, attended(caches, n))
}

/// What the `n` new tokens attend to: every cached position plus themselves, or, when
/// every layer keeps a sliding window, the `window − 1` a rotating cache holds (the
/// preflight's `estimate::activation::attended_positions`).
pub fn attended(caches: &[LayerCache], n: i32) -> Attended {
    let positions = caches
        .iter()
        .map(|c| match c {
            LayerCache::Rotating(r) => c.offset().min(r.max_size() - 1) + n,
            _ => c.offset() + n,
        })
        .max()
        .unwrap_or(n)
        .max(1) as u64;
    let all_rotating =
        !caches.is_empty() && caches.iter().all(|c| matches!(c, LayerCache::Rotating(_)));
    let window = caches
        .iter()
        .filter_map(|c| match c {
            LayerCache::Rotating(r) => Some(r.max_size().max(0) as u64),
            _ => None,
        })
        .max()
        .filter(|_| all_rotating);
    Attended { positions, window }
}
