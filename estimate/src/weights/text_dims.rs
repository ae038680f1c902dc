//! The language model's shape read from the config: its main dimensions, the mixer of
//! every layer and the sliding window.

use crate::config::Config;
use crate::error::EstimateError;

/// The language model's main dimensions.
#[derive(Clone, Debug)]
pub struct TextDims {
    /// Hidden size.
    pub hidden: u64,
    /// Decoder layers.
    pub layers: u64,
    /// Query heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Per-head dimension.
    pub head_dim: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// Dense MLP intermediate size (0 when unknown).
    pub intermediate: u64,
}

impl TextDims {
    /// Reads the dimensions, with the aliases of the families covered.
    pub fn read(cfg: &Config) -> Result<TextDims, EstimateError> {
        let hidden = cfg.require(&["hidden_size", "d_model", "n_embd", "dim"])?;
        let layers = cfg.require(&["num_hidden_layers", "n_layer", "num_layers", "n_layers"])?;
        let heads = cfg.require(&["num_attention_heads", "n_head", "num_heads", "n_heads"])?;
        let vocab = cfg.require(&["vocab_size", "padded_vocab_size"])?;
        if hidden == 0 || layers == 0 || heads == 0 || vocab == 0 {
            return Err(cfg.error("hidden_size, num_hidden_layers, num_attention_heads and vocab_size must be positive".into()));
        }
        let falcon_kv = if cfg.bool("new_decoder_architecture") == Some(true) {
            cfg.u64(&["num_kv_heads"])
        } else if cfg.bool("multi_query") == Some(true) {
            Some(1)
        } else {
            None
        };
        let kv_heads = falcon_kv
            .or_else(|| {
                cfg.u64(&[
                    "num_key_value_heads",
                    "num_kv_heads",
                    "multi_query_group_num",
                    "n_kv_heads",
                ])
            })
            .unwrap_or(heads);
        if kv_heads == 0 || kv_heads > heads {
            return Err(cfg.error(format!(
                "num_key_value_heads {kv_heads} is not between 1 and num_attention_heads {heads}"
            )));
        }
        let head_dim = cfg
            .u64(&["head_dim", "kv_channels"])
            .filter(|&d| d > 0)
            .unwrap_or(hidden / heads);
        let intermediate = cfg
            .u64(&["intermediate_size", "ffn_hidden_size", "n_inner", "ffn_dim"])
            .unwrap_or(0);
        Ok(TextDims {
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            vocab,
            intermediate,
        })
    }
}

/// What kind of mixer layer `i` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mixer {
    /// Full (global) attention.
    Full,
    /// Sliding-window attention.
    Sliding,
    /// Linear attention (Gated DeltaNet) with a fixed-size state.
    Linear,
    /// Short convolution (LFM2) with a fixed-size state.
    Conv,
}

/// The mixer of every layer, from `layer_types`, the family's pattern or the config's
/// indexes. Sliding layers are reported only when the config sets a window.
pub fn layer_mixers(cfg: &Config, layers: u64) -> Vec<Mixer> {
    // mlx-lm 0.32.2 (and the worker, token for token with it) keeps a full cache on every
    // layer of these, whatever sliding_window / layer_types say.
    if matches!(
        cfg.text_model_type(),
        "gemma2" | "phi3" | "mixtral" | "qwen3_moe"
    ) {
        return vec![Mixer::Full; layers as usize];
    }
    let window = sliding_window(cfg).is_some();
    if let Some(types) = cfg.layer_types() {
        if types.len() as u64 == layers {
            return types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" | "local_attention" | "sliding" if window => Mixer::Sliding,
                    "linear_attention" | "mamba" | "ssm" => Mixer::Linear,
                    "conv" | "short_conv" => Mixer::Conv,
                    _ => Mixer::Full,
                })
                .collect();
        }
    }
    let mt = cfg.text_model_type();
    if mt == "lfm2" {
        let full = cfg.u64_list("full_attn_idxs").unwrap_or_default();
        return (0..layers)
            .map(|i| {
                if full.contains(&i) {
                    Mixer::Full
                } else {
                    Mixer::Conv
                }
            })
            .collect();
    }
    if mt.starts_with("qwen3_next") || mt.starts_with("qwen3_5") {
        let interval = cfg.u64(&["full_attention_interval"]).unwrap_or(4).max(1);
        return (0..layers)
            .map(|i| {
                if (i + 1) % interval == 0 {
                    Mixer::Full
                } else {
                    Mixer::Linear
                }
            })
            .collect();
    }
    if !window {
        return vec![Mixer::Full; layers as usize];
    }
    // Gemma 2 alternates sliding and global; Gemma 3 has one global layer in every
    // `sliding_window_pattern` (6); others (Mistral) slide in every layer.
    let pattern = match mt {
        "gemma2" => Some(2),
        m if m.starts_with("gemma3") => Some(cfg.u64(&["sliding_window_pattern"]).unwrap_or(6)),
        _ => cfg.u64(&["sliding_window_pattern"]),
    };
    (0..layers)
        .map(|i| match pattern {
            Some(p) if p > 0 && (i + 1) % p == 0 => Mixer::Full,
            _ => Mixer::Sliding,
        })
        .collect()
}

/// The sliding window in tokens, when the config enables one.
pub fn sliding_window(cfg: &Config) -> Option<u64> {
    if cfg.bool("use_sliding_window") == Some(false) {
        return None;
    }
    cfg.u64(&["sliding_window", "attention_window_size"])
        .filter(|&w| w > 0)
}
