//! Plausible ranges for every number read from a model's `config.json`, checked once
//! for the estimator and the worker alike, and checked conversions for the numbers that
//! size anything.
//!
//! The ranges are generous (several times the largest published model) but bounded so
//! that no allocation is sized by a file without a cap (at most 1024 layers) and the
//! estimator's products of two or three dimensions stay far below 2^64 (vocabulary ×
//! layers × per-layer width, the largest, is under 2^52); the per-component sums
//! saturate, so even an absurd but in-range model gives a huge estimate, not a panic.
use serde_json::{Map, Value};

/// Most decoder (or vision-encoder) layers accepted.
pub const MAX_LAYERS: u64 = 1024;
/// Widest hidden size, head size or latent rank accepted.
pub const MAX_WIDTH: u64 = 1 << 17;
/// Widest MLP (dense or per-expert) accepted.
pub const MAX_FFN: u64 = 1 << 20;
/// Most attention heads accepted.
pub const MAX_HEADS: u64 = 4096;
/// Largest vocabulary accepted.
pub const MAX_VOCAB: u64 = 1 << 24;
/// Most experts (or experts per token) accepted.
pub const MAX_EXPERTS: u64 = 1 << 14;
/// Largest context length, window or position count accepted.
pub const MAX_POSITIONS: u64 = 1 << 32;
/// Largest `total_size` in an index accepted: 1 PiB.
pub const MAX_TOTAL_SIZE: u64 = 1 << 50;

/// Integer fields: names, smallest and largest value accepted.
const INT_FIELDS: &[(&[&str], u64, u64)] = &[
    (
        &[
            "num_hidden_layers",
            "n_layer",
            "num_layers",
            "n_layers",
            "depth",
        ],
        1,
        MAX_LAYERS,
    ),
    (
        &[
            "first_k_dense_replace",
            "moe_layer_freq",
            "decoder_sparse_step",
            "num_nextn_predict_layers",
            "full_attention_interval",
            "sliding_window_pattern",
            "num_ln_in_parallel_attn",
        ],
        0,
        MAX_LAYERS,
    ),
    (
        &["hidden_size", "n_embd", "n_embed", "d_model", "dim"],
        1,
        MAX_WIDTH,
    ),
    (
        &[
            "embed_dim",
            "width",
            "out_hidden_size",
            "hidden_size_per_layer_input",
            "kv_lora_rank",
            "q_lora_rank",
            "qk_nope_head_dim",
            "qk_rope_head_dim",
            "v_head_dim",
            "head_dim",
            "global_head_dim",
            "kv_channels",
            "linear_key_head_dim",
            "linear_value_head_dim",
        ],
        0,
        MAX_WIDTH,
    ),
    (
        &[
            "intermediate_size",
            "ffn_hidden_size",
            "ffn_dim",
            "n_inner",
            "moe_intermediate_size",
            "expert_intermediate_size",
            "shared_expert_intermediate_size",
            "block_ff_dim",
            "block_multiple_of",
        ],
        0,
        MAX_FFN,
    ),
    (&["num_attention_heads", "n_head", "n_heads"], 1, MAX_HEADS),
    (
        &[
            "num_heads",
            "heads",
            "num_key_value_heads",
            "num_kv_heads",
            "n_kv_heads",
            "num_global_key_value_heads",
            "multi_query_group_num",
            "linear_num_key_heads",
            "linear_num_value_heads",
        ],
        0,
        MAX_HEADS,
    ),
    (&["vocab_size"], 1, MAX_VOCAB),
    (
        &["padded_vocab_size", "vocab_size_per_layer_input"],
        0,
        MAX_VOCAB,
    ),
    (
        &[
            "num_local_experts",
            "num_experts",
            "n_routed_experts",
            "n_shared_experts",
            "num_experts_per_tok",
            "top_k_experts",
            "moe_top_k",
            "experts_per_token",
        ],
        0,
        MAX_EXPERTS,
    ),
    (
        &[
            "max_position_embeddings",
            "max_sequence_length",
            "seq_length",
            "n_positions",
            "sliding_window",
            "attention_window_size",
            "original_max_position_embeddings",
        ],
        0,
        MAX_POSITIONS,
    ),
    (
        &[
            "num_position_embeddings",
            "position_embedding_size",
            "mm_tokens_per_image",
            "query_num",
            "image_seq_length",
            "vision_soft_tokens_per_image",
        ],
        0,
        1 << 20,
    ),
    (&["image_size"], 0, 1 << 16),
    (
        &[
            "patch_size",
            "spatial_patch_size",
            "temporal_patch_size",
            "spatial_merge_size",
            "pooling_kernel_size",
            "linear_conv_kernel_dim",
        ],
        0,
        1024,
    ),
    (&["num_channels", "in_channels", "in_chans"], 0, 64),
    (&["bits", "num_bits"], 1, 16),
    (&["group_size", "weight_block_size"], 1, 1 << 16),
    // bos/pad ids are not read and old configs write -1 there; eos ids are used.
    (&["eos_token_id"], 0, u32::MAX as u64),
];

/// Values outside the range that a field may still hold, with a meaning of their own:
/// GPTQ writes `group_size: -1` for per-channel quantization.
const SENTINELS: &[(&str, i64)] = &[("group_size", -1)];

/// Number fields that may be fractional: names, smallest and largest value accepted.
const FLOAT_FIELDS: &[(&[&str], f64, f64)] = &[
    (&["rope_theta"], 1e-9, 1e15),
    (&["rms_norm_eps", "layer_norm_eps", "norm_eps"], 0.0, 1.0),
    (&["partial_rotary_factor"], 0.0, 1.0),
    (&["mlp_ratio", "block_ffn_dim_multiplier"], 0.0, 64.0),
    (&["factor", "low_freq_factor", "high_freq_factor"], 0.0, 1e6),
];

/// Sub-objects of `config.json` whose fields are checked too.
const NESTED: [&str; 8] = [
    "text_config",
    "language_config",
    "llm_config",
    "vision_config",
    "rope_scaling",
    "rope_parameters",
    "quantization",
    "quantization_config",
];

/// A number in a model file outside the range accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` = {value} is outside the accepted range {accepted}")]
pub struct Implausible {
    /// The field, with its sub-object (`text_config.hidden_size`).
    pub field: String,
    /// The value as written.
    pub value: String,
    /// The range accepted (`1..=131072`).
    pub accepted: String,
}

impl Implausible {
    /// An implausible `value` of `field` where `min..=max` is accepted.
    pub fn new(field: &str, value: impl std::fmt::Display, min: u64, max: u64) -> Implausible {
        Implausible {
            field: field.to_string(),
            value: value.to_string(),
            accepted: format!("{min}..={max}"),
        }
    }
}

/// The accepted range of an integer field, if the field is one that is checked.
pub fn int_range(field: &str) -> Option<(u64, u64)> {
    INT_FIELDS
        .iter()
        .find(|(names, _, _)| names.contains(&field))
        .map(|&(_, min, max)| (min, max))
}

fn float_range(field: &str) -> Option<(f64, f64)> {
    FLOAT_FIELDS
        .iter()
        .find(|(names, _, _)| names.contains(&field))
        .map(|&(_, min, max)| (min, max))
}

/// Checks one number of an integer field: a whole number within `min..=max`.
fn check_int(
    field: &str,
    name: &str,
    n: &serde_json::Number,
    min: u64,
    max: u64,
) -> Result<(), Implausible> {
    if SENTINELS
        .iter()
        .any(|&(f, v)| f == name && n.as_i64() == Some(v))
    {
        return Ok(());
    }
    let whole = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f <= max as f64)
            .map(|f| f as u64)
    });
    match whole {
        Some(v) if (min..=max).contains(&v) => Ok(()),
        _ => Err(Implausible::new(field, n, min, max)),
    }
}

fn check_value(field: &str, name: &str, v: &Value) -> Result<(), Implausible> {
    let numbers: Vec<&serde_json::Number> = match v {
        Value::Number(n) => vec![n],
        Value::Array(list) => list
            .iter()
            .filter_map(|x| match x {
                Value::Number(n) => Some(n),
                _ => None,
            })
            .collect(),
        _ => return Ok(()),
    };
    if let Some((min, max)) = int_range(name) {
        for n in numbers {
            check_int(field, name, n, min, max)?;
        }
    } else if let Some((min, max)) = float_range(name) {
        for n in numbers {
            match n.as_f64() {
                Some(f) if f.is_finite() && f >= min && f <= max => {}
                _ => {
                    return Err(Implausible {
                        field: field.to_string(),
                        value: n.to_string(),
                        accepted: format!("{min}..={max}"),
                    })
                }
            }
        }
    }
    Ok(())
}

fn check_map(prefix: &str, map: &Map<String, Value>, depth: u32) -> Result<(), Implausible> {
    for (name, v) in map {
        let field = format!("{prefix}{name}");
        check_value(&field, name, v)?;
        if let Value::Object(sub) = v {
            // Quantization is checked all the way down (per-layer overrides, the
            // compressed-tensors `config_groups.*.weights`).
            let nested = depth == 0 && NESTED.contains(&name.as_str());
            let in_quantization = prefix.starts_with("quantization") && depth < 5;
            if nested || in_quantization {
                check_map(&format!("{field}."), sub, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// Checks every number of a `config.json` (the top level, the language and vision
/// sub-configs, rope scaling and quantization) against its plausible range.
pub fn check_config(root: &Map<String, Value>) -> Result<(), Implausible> {
    check_map("", root, 0)
}

/// `a × b`, or an error naming `what` when it overflows.
pub fn checked_mul(what: &str, a: u64, b: u64) -> Result<u64, Implausible> {
    a.checked_mul(b).ok_or_else(|| Implausible {
        field: what.to_string(),
        value: format!("{a} × {b}"),
        accepted: format!("products up to {}", u64::MAX),
    })
}

/// `a + b`, or an error naming `what` when it overflows.
pub fn checked_add(what: &str, a: u64, b: u64) -> Result<u64, Implausible> {
    a.checked_add(b).ok_or_else(|| Implausible {
        field: what.to_string(),
        value: format!("{a} + {b}"),
        accepted: format!("sums up to {}", u64::MAX),
    })
}

/// A non-negative integer field as `i32`, or an error naming it (never a truncation).
pub fn to_i32(field: &str, v: i64) -> Result<i32, Implausible> {
    i32::try_from(v).map_err(|_| Implausible::new(field, v, 0, i32::MAX as u64))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn check(v: Value) -> Result<(), Implausible> {
        check_config(v.as_object().unwrap())
    }

    #[test]
    fn real_values_pass() {
        let c = json!({"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 151936,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "intermediate_size": 11008.0,
            "eos_token_id": [151645, 151643], "quantization": {"bits": 4, "group_size": 64,
            "model.layers.0.mlp.gate": {"bits": 8, "group_size": 64}},
            "text_config": {"head_dim": 128}, "transformers_version": "4.1",
            "pad_token_id": -1, "bos_token_id": -1,
            "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": -1}});
        assert_eq!(check(c), Ok(()));
    }

    #[test]
    fn each_implausible_value_is_named_with_its_range() {
        let e = check(json!({"num_hidden_layers": 18446744073709551615u64})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`num_hidden_layers` = 18446744073709551615 is outside the accepted range 1..=1024"
        );
        let e = check(json!({"text_config": {"hidden_size": 4294967424u64}})).unwrap_err();
        assert_eq!(e.field, "text_config.hidden_size");
        let e = check(json!({"intermediate_size": -5})).unwrap_err();
        assert_eq!(e.value, "-5");
        assert!(check(json!({"hidden_size": 64.5})).is_err());
        assert!(check(json!({"hidden_size": 1e300})).is_err());
        assert!(check(json!({"hidden_size": 0})).is_err());
        assert!(check(json!({"eos_token_id": [1, 4294967296u64]})).is_err());
        assert!(check(json!({"quantization": {"group_size": -2}})).is_err());
        assert!(check(json!({"eos_token_id": -1})).is_err());
        let e = check(json!({"quantization": {"m.q": {"bits": 99}}})).unwrap_err();
        assert_eq!(e.field, "quantization.m.q.bits");
        assert!(check(json!({"rope_theta": -1.0})).is_err());
        assert!(check(json!({"rope_scaling": {"factor": 1e300}})).is_err());
    }

    #[test]
    fn checked_helpers_refuse_overflow() {
        assert_eq!(checked_mul("x", 3, 4), Ok(12));
        assert!(checked_mul("x", u64::MAX, 2).is_err());
        assert!(checked_add("x", u64::MAX, 1).is_err());
        assert_eq!(to_i32("h", 128), Ok(128));
        assert!(to_i32("h", (1 << 32) + 128).is_err());
    }

    proptest! {
        #[test]
        fn any_number_in_any_field_is_checked_without_panic(
            field in proptest::sample::select(
                INT_FIELDS.iter().flat_map(|(n, _, _)| n.iter().copied()).collect::<Vec<_>>()),
            v in prop_oneof![any::<u64>().prop_map(Value::from), any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number))],
        ) {
            let mut m = Map::new();
            m.insert(field.to_string(), v.clone());
            let r = check_config(&m);
            if let (Some((min, max)), Some(n)) = (int_range(field), v.as_u64()) {
                prop_assert_eq!(r.is_ok(), (min..=max).contains(&n));
            }
        }
    }
}
