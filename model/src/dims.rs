//! `TextDims`: the language model's main dimensions, with the aliases of the families
//! the estimator plans and the rules mlx-lm 0.32.2 applies to the families the worker
//! runs (Phi-3's and Mixtral's derived head size, Gemma 3's defaults).
use crate::family::Family;
use crate::view::ConfigView;

/// The language model's main dimensions.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// mlx-lm's `gemma3.py`: the vocabulary of a multimodal Gemma 3 when the top level says
/// none, and its heads when `text_config` says none.
const GEMMA3_VOCAB: u64 = 262_208;

fn require(cfg: &ConfigView, keys: &[&str]) -> Result<u64, String> {
    cfg.u64(keys)
        .ok_or_else(|| format!("missing or non-integer `{}`", keys.join("` / `")))
}

impl TextDims {
    /// Reads the dimensions of a config, by the rules of its family.
    pub fn read(cfg: &ConfigView) -> Result<TextDims, String> {
        let family = Family::of_config(cfg);
        let gemma3 = family == Family::Gemma3;
        let hidden = require(cfg, &["hidden_size", "d_model", "n_embd", "dim"])?;
        let layers = require(
            cfg,
            &["num_hidden_layers", "n_layer", "num_layers", "n_layers"],
        )?;
        let heads = match cfg.u64(&["num_attention_heads", "n_head", "num_heads", "n_heads"]) {
            None if gemma3 => 8,
            h => h.ok_or_else(|| {
                "missing or non-integer `num_attention_heads` / `n_head` / `num_heads` / `n_heads`"
                    .to_string()
            })?,
        };
        let vocab = if gemma3 {
            cfg.root("vocab_size")
                .and_then(crate::view::as_u64)
                .unwrap_or(GEMMA3_VOCAB)
        } else {
            require(cfg, &["vocab_size", "padded_vocab_size"])?
        };
        if hidden == 0 || layers == 0 || heads == 0 || vocab == 0 {
            return Err("hidden_size, num_hidden_layers, num_attention_heads and vocab_size must be positive".into());
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
            .unwrap_or(if gemma3 { 4 } else { heads });
        // mlx-lm's `qwen.py` has no KV heads of its own: every head is a KV head.
        let kv_heads = if family == Family::Qwen {
            heads
        } else {
            kv_heads
        };
        if kv_heads == 0 || kv_heads > heads {
            return Err(format!(
                "num_key_value_heads {kv_heads} is not between 1 and num_attention_heads {heads}"
            ));
        }
        let configured = cfg.u64(&["head_dim", "kv_channels"]).filter(|&d| d > 0);
        let head_dim = match family {
            // mlx-lm 0.32.2 derives it for these, whatever head_dim (Qwen: kv_channels)
            // says.
            Family::Phi3 | Family::Mixtral | Family::Mimo | Family::Qwen | Family::GraniteMoe => {
                hidden / heads
            }
            Family::Gemma3 | Family::Gemma3Text => configured.unwrap_or(256),
            _ => configured.unwrap_or(hidden / heads),
        };
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
