//! The one description of a model folder's `config.json`, read once, for the estimator
//! to plan from and the worker to build from — so the two cannot disagree.
//!
//! Pure: no MLX and no I/O. The caller reads the file (through its capped reader),
//! parses the JSON and hands the object to [`Description::new`], which checks every
//! number against [`limits`] and derives:
//!
//! - the [`Family`] (every `model_type` the estimator plans; [`SUPPORTED`] the ones the
//!   worker runs, [`unsupported`] why not for the others);
//! - the language model's [`TextDims`] (heads, KV heads, head size, widths, vocabulary);
//! - the [`LayerPlan`] of every layer: full attention, a sliding window with its size,
//!   linear attention or a convolution, with its KV heads and head size;
//! - multi-head latent attention ([`Mla`]) and routed experts ([`Moe`]);
//! - for the families the worker runs, [`RunConfig`] ([`Description::run_config`]):
//!   norms, biases, q/k norms, softcaps, tied embeddings, RoPE and its scaling
//!   ([`RopeKind`]), the experts' routing, the Qwen2-VL / Qwen2.5-VL vision tower and
//!   the quantization with its per-layer overrides;
//! - the checkpoint's [`Quantization`] (MLX affine with per-layer overrides, MXFP4,
//!   bitsandbytes, compressed-tensors, FP8) and the bytes a layer takes under it, for
//!   the estimator ([`Description::quantization`]).
//!
//! Where the estimator and the worker used to read a config differently, the rule is
//! what mlx-lm 0.32.2 (the worker's token-for-token reference) does:
//!
//! - **head size**: Phi-3, Mixtral, MiMo, Granite MoE and the first Qwen derive it
//!   (`hidden_size / num_attention_heads`, `phi3.py`, `mixtral.py`, `mimo.py`,
//!   `granitemoe.py`, `qwen.py`) whatever `head_dim` (`kv_channels`) says; Gemma 3 defaults it to 256;
//!   every other family takes `head_dim` when positive, else derives it.
//! - **Gemma 3's window**: 512 when the config names none (`gemma3_text.py`); its
//!   layers slide by `sliding_window_pattern` (default 6: every 6th layer is global),
//!   and `layer_types` is not read.
//! - **which layers slide**: Llama (and SmolLM3) and Mistral by `layer_types` (`llama.py`); without
//!   it a Mistral with a window slides on every layer (Hugging Face's meaning, which the
//!   worker has always kept) and a Llama attends in full. Gemma 1/2, Phi-3, Mixtral,
//!   Qwen 1/2/3, Qwen3-MoE, Qwen2(.5)-VL, MiMo and Granite MoE attend in full on every
//!   layer, whatever their
//!   `sliding_window` / `layer_types` say. The families the worker does not run keep the
//!   estimator's rules: `layer_types`, then the family's pattern or indexes.
//!
//! What moved with these rules (no checkpoint of the 55-config corpus is affected): the
//! estimator plans a Gemma 3 without `sliding_window` with 512-token windows (it planned
//! full attention), Phi-3/Mixtral with a `head_dim` other than the derived one at the
//! derived one, and a Llama with a window but no `layer_types`, or a Qwen 2/3 with a window
//! turned on, in full (it planned windows); the worker no longer slides a Qwen 2/3 by its
//! `layer_types`, nor a Mistral whose `use_sliding_window` is false.
pub mod description;
pub mod dims;
pub mod family;
pub mod layers;
pub mod limits;
pub mod quantization;
pub mod rope;
pub mod run;
pub mod view;

pub use description::{DescribeError, Description, Mla, Moe};
pub use dims::TextDims;
pub use family::{unsupported, Family, SUPPORTED};
pub use layers::{LayerKind, LayerPlan};
pub use limits::Implausible;
pub use quantization::Quantization;
pub use rope::RopeKind;
pub use run::{ConfigError, RunConfig};
pub use view::ConfigView;

#[cfg(test)]
mod tests_support {
    /// The fixture corpus of published configs (the estimator's).
    pub fn corpus_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../estimate/tests/fixtures/models")
    }
}
