//! The per-layer plan: what each decoder layer mixes tokens with (full attention, a
//! sliding window and its size, linear attention, a short convolution) and, for the
//! attention layers, its KV heads and head size. The estimator's KV layout and the
//! worker's caches are both read from this one plan.
use crate::dims::TextDims;
use crate::family::Family;
use crate::view::ConfigView;

/// Gemma 3's window when the config names none (mlx-lm 0.32.2's `gemma3_text.py`).
pub const GEMMA3_DEFAULT_WINDOW: u64 = 512;
/// Gemma 3's `sliding_window_pattern` when the config names none.
pub const GEMMA3_DEFAULT_PATTERN: u64 = 6;

/// What kind of token mixer a layer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// Full (global) attention.
    Full,
    /// Sliding-window attention over the last `window` positions.
    Sliding {
        /// The window in tokens (> 0).
        window: u64,
    },
    /// Linear attention (Gated DeltaNet) with a fixed-size state.
    Linear,
    /// Short convolution (LFM2) with a fixed-size state.
    Conv,
}

/// One decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerPlan {
    /// Its mixer.
    pub kind: LayerKind,
    /// Key/value heads of its attention (the model's for non-attention layers).
    pub kv_heads: u64,
    /// Head size of its attention.
    pub head_dim: u64,
}

impl LayerPlan {
    /// The window when the layer slides.
    pub fn window(&self) -> Option<u64> {
        match self.kind {
            LayerKind::Sliding { window } => Some(window),
            _ => None,
        }
    }
}

/// The sliding window in tokens, when the config enables one (`use_sliding_window:
/// false` turns it off).
pub fn sliding_window(cfg: &ConfigView) -> Option<u64> {
    if cfg.bool("use_sliding_window") == Some(false) {
        return None;
    }
    cfg.u64(&["sliding_window", "attention_window_size"])
        .filter(|&w| w > 0)
}

/// The window the plan uses for `family` (Gemma 3's default when unsaid).
pub fn window_of(cfg: &ConfigView, family: Family) -> Option<u64> {
    match family {
        Family::Gemma3 | Family::Gemma3Text => {
            Some(sliding_window(cfg).unwrap_or(GEMMA3_DEFAULT_WINDOW))
        }
        _ => sliding_window(cfg),
    }
}

/// The plan of every layer of a model of `family` with dimensions `t`.
pub fn plan(cfg: &ConfigView, family: Family, t: &TextDims) -> Vec<LayerPlan> {
    let kinds = kinds(cfg, family, t.layers);
    let gemma4 = family == Family::Gemma4;
    kinds
        .into_iter()
        .map(|kind| {
            // Gemma 4's global layers have heads of their own.
            let (kv_heads, head_dim) = if kind == LayerKind::Full && gemma4 {
                (
                    cfg.u64(&["num_global_key_value_heads"])
                        .unwrap_or(t.kv_heads),
                    cfg.u64(&["global_head_dim"]).unwrap_or(t.head_dim),
                )
            } else {
                (t.kv_heads, t.head_dim)
            };
            LayerPlan {
                kind,
                kv_heads,
                head_dim,
            }
        })
        .collect()
}

/// Every layer's kind, as mlx-lm 0.32.2 builds the families the worker runs, and from
/// `layer_types`, the family's pattern or the config's indexes for the others.
fn kinds(cfg: &ConfigView, family: Family, layers: u64) -> Vec<LayerKind> {
    let n = layers as usize;
    let window = window_of(cfg, family);
    let slide = |sliding: bool| match (sliding, window) {
        (true, Some(window)) => LayerKind::Sliding { window },
        _ => LayerKind::Full,
    };
    match family {
        // mlx-lm 0.32.2 keeps a full cache on every layer of these, whatever
        // sliding_window / layer_types say.
        Family::Gemma
        | Family::Gemma2
        | Family::Phi3
        | Family::Mixtral
        | Family::Qwen2
        | Family::Qwen3
        | Family::Qwen3Moe
        | Family::Qwen2Vl
        | Family::Qwen25Vl => return vec![LayerKind::Full; n],
        // Every `sliding_window_pattern`-th layer is global, the others slide;
        // `layer_types` is not read.
        Family::Gemma3 | Family::Gemma3Text => {
            let p = cfg
                .u64(&["sliding_window_pattern"])
                .unwrap_or(GEMMA3_DEFAULT_PATTERN)
                .max(1);
            return (0..layers)
                .map(|i| slide(!(i + 1).is_multiple_of(p)))
                .collect();
        }
        // `layer_types` decides; without it a Llama attends in full and a Mistral
        // slides on every layer when it has a window.
        Family::Llama | Family::Mistral => {
            return match cfg.layer_types() {
                Some(types) if types.len() == n => types
                    .iter()
                    .map(|t| slide(t == "sliding_attention"))
                    .collect(),
                _ => vec![slide(family == Family::Mistral); n],
            };
        }
        _ => {}
    }
    if let Some(types) = cfg.layer_types() {
        if types.len() == n {
            return types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" | "local_attention" | "sliding" => slide(true),
                    "linear_attention" | "mamba" | "ssm" => LayerKind::Linear,
                    "conv" | "short_conv" => LayerKind::Conv,
                    _ => LayerKind::Full,
                })
                .collect();
        }
    }
    let mt = cfg.text_model_type();
    if family == Family::Lfm2 {
        let full = cfg.u64_list("full_attn_idxs").unwrap_or_default();
        return (0..layers)
            .map(|i| {
                if full.contains(&i) {
                    LayerKind::Full
                } else {
                    LayerKind::Conv
                }
            })
            .collect();
    }
    if mt.starts_with("qwen3_next") || mt.starts_with("qwen3_5") {
        let interval = cfg.u64(&["full_attention_interval"]).unwrap_or(4).max(1);
        return (0..layers)
            .map(|i| {
                if (i + 1).is_multiple_of(interval) {
                    LayerKind::Full
                } else {
                    LayerKind::Linear
                }
            })
            .collect();
    }
    if window.is_none() {
        return vec![LayerKind::Full; n];
    }
    // Others (Mistral-like) slide in every layer, or one global layer in every
    // `sliding_window_pattern`.
    let pattern = cfg
        .u64(&["sliding_window_pattern"])
        .or((family == Family::Gemma3n).then_some(GEMMA3_DEFAULT_PATTERN));
    (0..layers)
        .map(|i| match pattern {
            Some(p) if p > 0 && (i + 1).is_multiple_of(p) => LayerKind::Full,
            _ => slide(true),
        })
        .collect()
}
