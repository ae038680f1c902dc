//! The shapes the activation estimate needs, read from the config: the language model's
//! attention and MLP widths (MoE-aware) and the vision encoder's patches and tokens.
use crate::activation::ActivationDims;
use crate::config::{map_u64, Config};
use crate::model::VisionDims;
use crate::weights::TextDims;

/// The activation model's dimensions of a description: a token of an MoE layer runs
/// `top_k` experts' MLPs and the shared one.
pub fn activation_dims(cfg: &Config, t: &TextDims) -> ActivationDims {
    let intermediate = match &cfg.description().moe {
        Some(m) => m.top_k * m.intermediate + m.shared_intermediate,
        // The first Qwen's `intermediate_size` is w1 and w2 together: each is half.
        None if cfg.description().family == model::Family::Qwen => t.intermediate / 2,
        None => t
            .intermediate
            .max(if t.intermediate == 0 { 4 * t.hidden } else { 0 }),
    };
    ActivationDims {
        heads: t.heads,
        hidden: t.hidden,
        intermediate,
        vocab: t.vocab,
    }
}

pub(crate) fn vision_dims(cfg: &Config) -> Option<VisionDims> {
    let v = cfg.vision()?;
    // Qwen2-VL's `hidden_size` is the merger's output (the language model's width); its
    // tower is `embed_dim` wide, with an MLP `mlp_ratio` times that.
    let width =
        map_u64(v, &["embed_dim", "hidden_size", "width"]).filter(|&w| w > 0 && w < 100_000)?;
    let heads = map_u64(v, &["num_heads", "num_attention_heads", "heads"])
        .unwrap_or(16)
        .max(1);
    let intermediate = map_u64(v, &["intermediate_size"])
        .or_else(|| map_u64(v, &["mlp_ratio"]).map(|r| r.saturating_mul(width)))
        .unwrap_or(4 * width);
    let mt = cfg.model_type();
    let mut qwen = None;
    let (patches, tokens) = if mt.starts_with("qwen") {
        // The processor's smart resize decides per image (`crate::vision`); the default
        // here is a 448×448 image: 32×32 patches of 14 px, merged 2×2 into 256 tokens.
        let merge = map_u64(v, &["spatial_merge_size"]).unwrap_or(2).max(1);
        let patch = map_u64(v, &["patch_size", "spatial_patch_size"])
            .unwrap_or(14)
            .max(1);
        let temporal = map_u64(v, &["temporal_patch_size"]).unwrap_or(2);
        qwen = Some(crate::vision::QwenGrid::new(patch, merge, temporal));
        let side = 448 / patch;
        (side * side, side * side / (merge * merge))
    } else if mt.starts_with("gemma4") {
        let tokens = cfg.u64(&["vision_soft_tokens_per_image"]).unwrap_or(280);
        let k = map_u64(v, &["pooling_kernel_size"]).unwrap_or(3);
        (tokens * k * k, tokens)
    } else {
        let image = map_u64(v, &["image_size"]).unwrap_or(224);
        let patch = map_u64(v, &["patch_size"]).unwrap_or(14).max(1);
        let patches = (image / patch).pow(2);
        let tokens = cfg
            .u64(&["mm_tokens_per_image", "query_num", "image_seq_length"])
            .unwrap_or(patches);
        (patches, tokens)
    };
    Some(VisionDims {
        width,
        intermediate,
        heads,
        patches_per_image: patches,
        tokens_per_image: tokens,
        qwen,
        all_full_attention: mt == "qwen2_vl",
    })
}
