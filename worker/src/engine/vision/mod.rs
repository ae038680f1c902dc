//! Vision towers of vision-language models, on MLX. Only Qwen2.5-VL's for now
//! (`qwen25`); not yet wired into `run` (issue 16).
pub mod qwen25;

#[cfg(test)]
mod tests;
