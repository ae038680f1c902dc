//! `Family`: the architecture a config's `model_type` names, every one the estimator
//! plans, and for each whether the worker runs it (and, when not, what it lacks).

/// The architecture of a model, from its top-level `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Family {
    Llama,
    Mistral,
    Mixtral,
    /// Qwen (1), `qwen`.
    Qwen,
    Qwen2,
    Qwen2Moe,
    Qwen2Vl,
    Qwen25Vl,
    Qwen3,
    Qwen3Moe,
    Qwen3Next,
    /// Qwen3.5 (dense and MoE, text or not): Gated DeltaNet hybrids.
    Qwen35,
    Qwen3Vl,
    /// Phi-1/2.
    Phi,
    Phi3,
    PhiMoe,
    /// Gemma 1.
    Gemma,
    Gemma2,
    /// A multimodal Gemma 3 (`gemma3`): the worker runs its text model.
    Gemma3,
    Gemma3Text,
    Gemma3n,
    Gemma4,
    GptOss,
    DeepseekV2,
    DeepseekV3,
    DeepseekVlV2,
    Granite,
    GraniteMoe,
    SmolLm3,
    Mimo,
    Lfm2,
    Falcon,
    Olmo2,
    Olmo3,
    MiniCpmV,
    /// A `model_type` none of the above names: the estimator plans it as a generic
    /// decoder, the worker refuses it.
    Other,
}

/// Every `model_type` known, with its family.
const TYPES: &[(&str, Family)] = &[
    ("llama", Family::Llama),
    ("mistral", Family::Mistral),
    ("mixtral", Family::Mixtral),
    ("qwen", Family::Qwen),
    ("qwen2", Family::Qwen2),
    ("qwen2_moe", Family::Qwen2Moe),
    ("qwen2_vl", Family::Qwen2Vl),
    ("qwen2_5_vl", Family::Qwen25Vl),
    ("qwen3", Family::Qwen3),
    ("qwen3_moe", Family::Qwen3Moe),
    ("qwen3_next", Family::Qwen3Next),
    ("qwen3_5", Family::Qwen35),
    ("qwen3_5_text", Family::Qwen35),
    ("qwen3_5_moe", Family::Qwen35),
    ("qwen3_5_moe_text", Family::Qwen35),
    ("qwen3_vl", Family::Qwen3Vl),
    ("qwen3_vl_moe", Family::Qwen3Vl),
    ("phi", Family::Phi),
    ("phi3", Family::Phi3),
    ("phimoe", Family::PhiMoe),
    ("gemma", Family::Gemma),
    ("gemma2", Family::Gemma2),
    ("gemma3", Family::Gemma3),
    ("gemma3_text", Family::Gemma3Text),
    ("gemma3n", Family::Gemma3n),
    ("gemma4", Family::Gemma4),
    ("gemma4_text", Family::Gemma4),
    ("gpt_oss", Family::GptOss),
    ("deepseek_v2", Family::DeepseekV2),
    ("deepseek_v3", Family::DeepseekV3),
    ("deepseek_vl_v2", Family::DeepseekVlV2),
    ("granite", Family::Granite),
    ("granitemoe", Family::GraniteMoe),
    ("granitemoeshared", Family::GraniteMoe),
    ("smollm3", Family::SmolLm3),
    ("mimo", Family::Mimo),
    ("lfm2", Family::Lfm2),
    ("falcon", Family::Falcon),
    ("RefinedWeb", Family::Falcon),
    ("RefinedWebModel", Family::Falcon),
    ("olmo2", Family::Olmo2),
    ("olmo3", Family::Olmo3),
    ("minicpmv", Family::MiniCpmV),
];

/// The `model_type`s the worker runs, in the order error messages list them.
pub const SUPPORTED: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "gemma3",
    "phi3",
    "mixtral",
    "qwen3_moe",
    "qwen2_5_vl",
    "qwen2_vl",
    "smollm3",
    "mimo",
    "qwen",
    "granitemoe",
];

/// `model_type`s people run that the worker does not, and what it lacks for each.
const MISSING: &[(&str, &str)] = &[
    ("gemma3n", "Gemma 3n's per-layer embeddings and AltUp"),
    ("gemma4", "Gemma 4's decoder"),
    ("gemma4_text", "Gemma 4's decoder"),
    (
        "phi",
        "Phi-1/2's parallel attention and partial LayerNorm decoder",
    ),
    ("phimoe", "Phi-3.5-MoE's sparse-mixer routing"),
    ("qwen2_moe", "Qwen2-MoE's shared expert"),
    ("qwen3_next", "Qwen3-Next's linear (gated delta) attention"),
    ("qwen3_5", "Qwen3.5's linear attention layers"),
    ("qwen3_5_moe_text", "Qwen3.5's linear attention layers"),
    ("qwen3_vl", "the vision tower and multimodal RoPE"),
    ("deepseek_v2", "multi-head latent attention"),
    ("deepseek_v3", "multi-head latent attention"),
    ("gpt_oss", "attention sinks and the OpenAI SwiGLU variant"),
    ("granitemoeshared", "Granite MoE's shared expert"),
    ("lfm2", "LFM2's short convolution layers"),
    ("falcon", "Falcon's parallel attention block"),
];

impl Family {
    /// The family a `model_type` names ([`Family::Other`] for one not known).
    pub fn of(model_type: &str) -> Family {
        TYPES
            .iter()
            .find(|(t, _)| *t == model_type)
            .map_or(Family::Other, |(_, f)| *f)
    }

    /// The family of a config: its top-level `model_type`'s, else its language model's
    /// (a VLM wrapper the list does not name around a known decoder).
    pub fn of_config(cfg: &crate::view::ConfigView) -> Family {
        match Family::of(cfg.model_type()) {
            Family::Other => Family::of(cfg.text_model_type()),
            f => f,
        }
    }

    /// Whether the worker runs a model whose top-level `model_type` is `model_type`.
    pub fn worker_runs(model_type: &str) -> bool {
        SUPPORTED.contains(&model_type)
    }
}

/// Why the worker cannot run `model_type`, by name, with what it lacks when known and
/// the list of the `model_type`s it runs; `None` when it runs it.
pub fn unsupported(model_type: &str) -> Option<String> {
    if Family::worker_runs(model_type) {
        return None;
    }
    let missing = MISSING
        .iter()
        .find(|(t, _)| *t == model_type)
        .map(|(_, what)| format!(" (the worker lacks {what})"))
        .unwrap_or_default();
    Some(format!(
        "unsupported model_type {model_type:?}{missing}; supported: {}",
        SUPPORTED.join(", ")
    ))
}
