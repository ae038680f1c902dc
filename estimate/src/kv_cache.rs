//! The KV cache per layer type: full attention (GQA/MQA), sliding-window layers capped at
//! their window, MLA latent caches, fixed-size linear-attention and convolution states,
//! and quantized KV (`--kv-bits 4|8`, MLX's group-64 affine with a scale and a bias per
//! group).
use serde::Serialize;

use crate::config::Config;
use crate::weights::{LayerKind, TextDims};

/// Group size of MLX's quantized KV cache (mlx-lm `QuantizedKVCache`).
pub const KV_GROUP_SIZE: u64 = 64;

/// What one layer keeps per sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LayerKv {
    /// Keys and values for every token.
    Full {
        /// Key/value heads.
        kv_heads: u64,
        /// Per-head dimension.
        head_dim: u64,
    },
    /// Keys and values for at most `window` tokens.
    Sliding {
        /// Key/value heads.
        kv_heads: u64,
        /// Per-head dimension.
        head_dim: u64,
        /// Window in tokens.
        window: u64,
    },
    /// One compressed latent vector per token (DeepSeek MLA): `kv_lora_rank + qk_rope_head_dim`.
    Mla {
        /// Elements per token.
        latent: u64,
    },
    /// A fixed-size state per sequence (linear attention, SSM, short convolution).
    State {
        /// Bytes per sequence.
        bytes: u64,
    },
}

/// Bytes per token one layer adds (0 for fixed-size states), for elements of
/// `dtype_bytes` bytes, optionally quantized to `kv_bits`.
pub fn kv_bytes_per_token(layer: &LayerKv, dtype_bytes: u64, kv_bits: Option<u8>) -> u64 {
    let vector = |len: u64| match kv_bits {
        None => len * dtype_bytes,
        Some(bits) => len * u64::from(bits) / 8 + len.div_ceil(KV_GROUP_SIZE) * 2 * dtype_bytes,
    };
    match *layer {
        LayerKv::Full { kv_heads, head_dim }
        | LayerKv::Sliding {
            kv_heads, head_dim, ..
        } => 2 * kv_heads * vector(head_dim),
        LayerKv::Mla { latent } => vector(latent),
        LayerKv::State { .. } => 0,
    }
}

/// Bytes one layer holds for one sequence of `context` tokens.
pub fn layer_bytes(layer: &LayerKv, context: u64, dtype_bytes: u64, kv_bits: Option<u8>) -> u64 {
    let per_token = kv_bytes_per_token(layer, dtype_bytes, kv_bits);
    match *layer {
        LayerKv::Sliding { window, .. } => per_token.saturating_mul(context.min(window)),
        LayerKv::State { bytes } => bytes,
        _ => per_token.saturating_mul(context),
    }
}

/// The cache layout of a model: one entry per decoder layer, from the description's
/// layer plan (the plan the worker builds its caches from).
pub fn layer_layout(cfg: &Config, t: &TextDims, dtype_bytes: u64) -> Vec<LayerKv> {
    let mla = cfg.description().mla;
    cfg.description()
        .layers
        .iter()
        .map(|layer| {
            let (kv_heads, head_dim) = (layer.kv_heads, layer.head_dim);
            match (layer.kind, mla) {
                (LayerKind::Linear, _) => LayerKv::State {
                    bytes: gated_delta_state(cfg, dtype_bytes),
                },
                (LayerKind::Conv, _) => LayerKv::State {
                    bytes: cfg.u64(&["conv_L_cache"]).unwrap_or(3).saturating_sub(1)
                        * t.hidden
                        * dtype_bytes,
                },
                (_, Some(m)) => LayerKv::Mla {
                    latent: m.kv_lora_rank + m.rope_head_dim,
                },
                (LayerKind::Sliding { window }, None) => LayerKv::Sliding {
                    kv_heads,
                    head_dim,
                    window,
                },
                (LayerKind::Full, None) => LayerKv::Full { kv_heads, head_dim },
            }
        })
        .collect()
}

/// State of one Gated DeltaNet layer: the convolution's last `kernel - 1` inputs and the
/// per-head `key_dim × value_dim` recurrent state (f32 when `mamba_ssm_dtype` says so).
fn gated_delta_state(cfg: &Config, dtype_bytes: u64) -> u64 {
    let nk = cfg.u64(&["linear_num_key_heads"]).unwrap_or(16);
    let nv = cfg.u64(&["linear_num_value_heads"]).unwrap_or(32);
    let dk = cfg.u64(&["linear_key_head_dim"]).unwrap_or(128);
    let dv = cfg.u64(&["linear_value_head_dim"]).unwrap_or(128);
    let kernel = cfg.u64(&["linear_conv_kernel_dim"]).unwrap_or(4);
    let state_bytes = if cfg.str("mamba_ssm_dtype") == Some("float32") {
        4
    } else {
        dtype_bytes
    };
    kernel.saturating_sub(1) * (2 * nk * dk + nv * dv) * dtype_bytes + nv * dk * dv * state_bytes
}

/// The KV cache of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KvCache {
    /// Total bytes at `context` × `batch`.
    pub bytes: u64,
    /// Bytes each new token adds while every layer still grows (sliding layers below
    /// their window), summed over layers, for one sequence.
    pub bytes_per_token: u64,
    /// Context length in tokens.
    pub context: u64,
    /// Sequences.
    pub batch: u64,
    /// Quantized KV bits, when quantized.
    pub kv_bits: Option<u8>,
    /// Bytes of full-attention layers.
    pub full_bytes: u64,
    /// Bytes of sliding-window layers.
    pub sliding_bytes: u64,
    /// Bytes of MLA latent caches.
    pub latent_bytes: u64,
    /// Bytes of fixed-size states.
    pub state_bytes: u64,
}

/// Sums the cache over `layers` for `context` tokens and `batch` sequences.
pub fn kv_cache(
    layers: &[LayerKv],
    context: u64,
    batch: u64,
    dtype_bytes: u64,
    kv_bits: Option<u8>,
) -> KvCache {
    let mut kv = KvCache {
        bytes: 0,
        bytes_per_token: 0,
        context,
        batch,
        kv_bits,
        full_bytes: 0,
        sliding_bytes: 0,
        latent_bytes: 0,
        state_bytes: 0,
    };
    for layer in layers {
        // The worker (as mlx-lm) keeps sliding-window layers' ring buffers unquantized.
        let bits = match layer {
            LayerKv::Sliding { .. } => None,
            _ => kv_bits,
        };
        let b = layer_bytes(layer, context, dtype_bytes, bits).saturating_mul(batch);
        kv.bytes_per_token =
            kv.bytes_per_token
                .saturating_add(kv_bytes_per_token(layer, dtype_bytes, bits));
        let slot = match layer {
            LayerKv::Full { .. } => &mut kv.full_bytes,
            LayerKv::Sliding { .. } => &mut kv.sliding_bytes,
            LayerKv::Mla { .. } => &mut kv.latent_bytes,
            LayerKv::State { .. } => &mut kv.state_bytes,
        };
        *slot = slot.saturating_add(b);
        kv.bytes = kv.bytes.saturating_add(b);
    }
    kv
}
