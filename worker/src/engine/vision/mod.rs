//! Vision-language models on MLX: Qwen2.5-VL's and Qwen2-VL's vision tower (`qwen25`), the language
//! side's multimodal RoPE (`mrope`), and the image features spliced into the prompt's
//! embeddings at the image placeholder tokens (`splice`), as mlx-vlm 0.7.6 does it.
pub mod mrope;
pub mod qwen25;
pub mod run;
pub mod splice;

pub use ::model::run::VlConfig;

/// A Hugging Face Qwen2-VL / Qwen2.5-VL tensor name as mlx-community's conversion names
/// it (what the engine loads), or `None` when it already is: `visual.*` and
/// `model.visual.*` → `vision_tower.*`; `model.language_model.*` and `model.*` →
/// `language_model.model.*`; `lm_head.*` → `language_model.lm_head.*` (mlx-vlm's
/// `sanitize`, for both of transformers' layouts).
pub fn mlx_name(name: &str) -> Option<String> {
    if let Some(rest) = name
        .strip_prefix("model.visual.")
        .or_else(|| name.strip_prefix("visual."))
    {
        return Some(format!("vision_tower.{rest}"));
    }
    if let Some(rest) = name
        .strip_prefix("model.language_model.")
        .or_else(|| name.strip_prefix("model."))
    {
        return Some(format!("language_model.model.{rest}"));
    }
    name.strip_prefix("lm_head.")
        .map(|rest| format!("language_model.lm_head.{rest}"))
}

#[cfg(test)]
mod generate_tests;
#[cfg(test)]
mod tests;
