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
        | Family::Qwen25Vl
        | Family::Mimo
        | Family::Qwen
        | Family::GraniteMoe => return vec![LayerKind::Full; n],
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
        // `layer_types` decides; without it a Llama (or SmolLM3, a Llama) attends in
        // full and a Mistral slides on every layer when it has a window.
        Family::Llama | Family::SmolLm3 | Family::Mistral => {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use crate::Description;

    proptest! {
        /// Any layer count, window, pattern and `layer_types` (of any length and
        /// content), for every kind of family: one plan entry per layer, a sliding layer
        /// only with a positive window (the family's), and the families mlx-lm runs in
        /// full never slide.
        #[test]
        fn the_plan_has_one_entry_per_layer_and_windows_only_when_set(
            mt in proptest::sample::select(vec!["llama", "mistral", "qwen2", "qwen3", "gemma2",
                "gemma3_text", "phi3", "mixtral", "gpt_oss", "gemma4_text", "lfm2", "qwen3_next",
                "olmo3", "something_new"]),
            layers in 1u64..48,
            window in proptest::option::of(0u64..5000),
            use_window in proptest::option::of(any::<bool>()),
            pattern in proptest::option::of(0u64..8),
            types in proptest::option::of(proptest::collection::vec(
                proptest::sample::select(vec!["full_attention", "sliding_attention",
                    "linear_attention", "conv", "other"]), 0..48)),
        ) {
            let mut c = json!({"model_type": mt, "hidden_size": 64, "num_hidden_layers": layers,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
                "intermediate_size": 128});
            if let Some(w) = window { c["sliding_window"] = w.into(); }
            if let Some(u) = use_window { c["use_sliding_window"] = u.into(); }
            if let Some(p) = pattern { c["sliding_window_pattern"] = p.into(); }
            if let Some(t) = &types { c["layer_types"] = Value::from(t.clone()); }
            let d = Description::new(c.as_object().unwrap().clone()).unwrap();
            prop_assert_eq!(d.layers.len() as u64, layers);
            let expected = super::window_of(d.view(), d.family);
            for l in &d.layers {
                if let Some(w) = l.window() {
                    prop_assert!(w > 0);
                    prop_assert_eq!(Some(w), expected);
                }
                if l.window().is_some() || d.family != crate::Family::Gemma4 {
                    prop_assert_eq!((l.kv_heads, l.head_dim), (d.dims.kv_heads, d.dims.head_dim));
                }
            }
            if ["qwen2", "qwen3", "gemma2", "phi3", "mixtral"].contains(&mt) {
                prop_assert!(d.layers.iter().all(|l| l.window().is_none()));
            }
        }
    }
}
