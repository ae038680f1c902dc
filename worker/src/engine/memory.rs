//! The soft guard's prediction: how many bytes one prefill chunk or decode step adds on
//! top of what MLX already holds (KV-cache growth plus transient activations).

use super::cache::{LayerCache, STEP};
use super::config::ModelConfig;

/// Transient activation bytes of one forward pass over `n` new tokens attending to
/// `context` positions (including the new ones), with activations of `elem` bytes.
///
/// Terms: the residual stream and norms (≈4 × hidden per token), q/k/v and the attention
/// output, the MLP's gate/up/product (3 × intermediate), the attention scores and their
/// softmax (heads × n × context, in float32 on the CPU backend), and, for the step that
/// samples, the logits and log-probabilities (vocab, plus a float32 copy).
pub fn activation_bytes(
    cfg: &ModelConfig,
    elem: u64,
    n: u64,
    context: u64,
    with_logits: bool,
) -> u64 {
    let hidden = cfg.hidden_size as u64;
    let qkv = (cfg.num_heads as u64 + 2 * cfg.num_kv_heads as u64) * cfg.head_dim as u64;
    let per_token = 4 * hidden
        + qkv
        + cfg.num_heads as u64 * cfg.head_dim as u64
        + 3 * cfg.intermediate_size as u64;
    let scores = 2 * cfg.num_heads as u64 * n * context * 4;
    let logits = if with_logits {
        cfg.vocab_size as u64 * (2 * elem + 8)
    } else {
        0
    };
    n * per_token * elem + scores + logits
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
    cfg: &ModelConfig,
    caches: &[LayerCache],
    elem: u64,
    n: i32,
    with_logits: bool,
) -> u64 {
    let context = caches.iter().map(|c| c.offset()).max().unwrap_or(0) as u64 + n as u64;
    kv_growth_bytes(cfg, caches, elem, n)
        + activation_bytes(cfg, elem, n as u64, context, with_logits)
}
