//! Tests of config.json parsing: families, quantization overrides, and hostile values
//! (the shared range check, no truncation, random bytes).
#![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

use super::*;
use serde_json::json;

fn base(model_type: &str) -> Value {
    json!({"model_type": model_type, "hidden_size": 64, "num_hidden_layers": 2,
           "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": 300, "eos_token_id": [5, 6]})
}

#[test]
fn unsupported_model_type_names_it_and_the_supported_ones() {
    let e = ModelConfig::from_value(&base("gpt2"), "config.json").unwrap_err();
    assert_eq!(e.kind, protocol::WorkerErrorKind::LoadFailed);
    assert!(e.message.contains("\"gpt2\""), "{}", e.message);
    for s in SUPPORTED {
        assert!(e.message.contains(s), "{}", e.message);
    }
}

#[test]
fn family_switches() {
    let q2 = ModelConfig::from_value(&base("qwen2"), "c").unwrap();
    assert!(q2.attention_bias);
    assert_eq!(q2.eos_token_ids, vec![5, 6]);
    assert_eq!(q2.head_dim, 16);
    let mut m = base("mistral");
    m["sliding_window"] = json!(32);
    assert_eq!(
        ModelConfig::from_value(&m, "c").unwrap().sliding_layers,
        vec![true, true]
    );
    m["layer_types"] = json!(["full_attention", "sliding_attention"]);
    assert_eq!(
        ModelConfig::from_value(&m, "c").unwrap().sliding_layers,
        vec![false, true]
    );
    let mut l = base("llama");
    l["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0});
    assert!(matches!(
        ModelConfig::from_value(&l, "c").unwrap().rope,
        RopeKind::Llama3 { .. }
    ));
    l["rope_scaling"] = json!({"rope_type": "yarn", "factor": 8.0});
    assert!(ModelConfig::from_value(&l, "c").is_err());
}

#[test]
fn per_layer_quantization_overrides() {
    let mut c = base("llama");
    c["quantization"] = json!({"group_size": 64, "bits": 4, "mode": "affine",
        "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8},
        "lm_head": false});
    let cfg = ModelConfig::from_value(&c, "c").unwrap();
    assert_eq!(
        cfg.quant_for("model.layers.1.mlp.down_proj"),
        Some(QuantParams {
            group_size: 64,
            bits: 4
        })
    );
    assert_eq!(
        cfg.quant_for("model.layers.0.mlp.down_proj"),
        Some(QuantParams {
            group_size: 32,
            bits: 8
        })
    );
    assert_eq!(cfg.quant_for("lm_head"), None);
    c["quantization"]["mode"] = json!("mxfp4");
    assert!(ModelConfig::from_value(&c, "c").is_err());
}

#[test]
fn wide_values_are_refused_not_truncated() {
    for (field, v) in [
        ("hidden_size", json!((1u64 << 32) + 128)),
        ("hidden_size", json!(u64::MAX)),
        ("num_hidden_layers", json!(1_000_000_000u64)),
        ("intermediate_size", json!(-5)),
        ("vocab_size", json!(1e300)),
        ("eos_token_id", json!([1, 4294967301u64])),
    ] {
        let mut c = base("llama");
        c[field] = v.clone();
        let e = ModelConfig::from_value(&c, "config.json").unwrap_err();
        assert!(
            e.message.contains(&format!("`{field}` =")),
            "{field}={v}: {}",
            e.message
        );
        assert!(e.message.contains("accepted range"), "{}", e.message);
    }
    let mut c = base("llama");
    c["quantization"] = json!({"bits": 4, "group_size": 0});
    assert!(ModelConfig::from_value(&c, "c").is_err());
    c["quantization"] = json!({"bits": 4, "group_size": -1});
    let e = ModelConfig::from_value(&c, "c").unwrap_err();
    assert!(e.message.contains("per-channel"), "{}", e.message);
}

const FIELDS: &[&str] = &[
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "head_dim",
    "sliding_window",
    "rope_theta",
    "rms_norm_eps",
    "eos_token_id",
    "layer_types",
];

fn extreme() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        (0u64..300).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(json!(["sliding_attention", "full_attention"])),
        Just(json!("7")),
    ]
}

use proptest::prelude::*;

proptest! {
    /// Random and extreme values in every numeric field: a config or an error, and a
    /// config's integers are exactly what the file says (no truncation).
    #[test]
    fn random_numbers_never_panic_or_truncate(
        mt in proptest::sample::select(SUPPORTED),
        edits in proptest::collection::vec((proptest::sample::select(FIELDS), extreme()), 1..5),
        quant in proptest::option::of((any::<i64>(), any::<i64>())),
    ) {
        let mut c = base(mt);
        for (f, v) in edits {
            c[f] = v;
        }
        if let Some((bits, group)) = quant {
            c["quantization"] = json!({"bits": bits, "group_size": group});
        }
        if let Ok(cfg) = ModelConfig::from_value(&c, "c") {
            prop_assert_eq!(Some(i64::from(cfg.hidden_size)), c["hidden_size"].as_i64());
            prop_assert_eq!(Some(cfg.num_layers as u64), c["num_hidden_layers"].as_u64());
            prop_assert_eq!(Some(i64::from(cfg.vocab_size)), c["vocab_size"].as_i64());
            prop_assert_eq!(cfg.sliding_layers.len(), cfg.num_layers);
            prop_assert!(cfg.num_layers <= 1024);
        }
    }

    /// Random bytes as config.json and generation_config.json: an error, never a panic.
    #[test]
    fn random_bytes_never_panic(
        config in proptest::collection::vec(any::<u8>(), 0..300),
        generation in proptest::collection::vec(any::<u8>(), 0..300),
        valid_config in any::<bool>(),
    ) {
        let d = tempfile::tempdir().unwrap();
        let c = if valid_config { base("llama").to_string().into_bytes() } else { config };
        std::fs::write(d.path().join("config.json"), c).unwrap();
        std::fs::write(d.path().join("generation_config.json"), generation).unwrap();
        let r = ModelConfig::load(d.path());
        prop_assert!(r.is_err() || valid_config);
    }
}
