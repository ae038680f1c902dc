//! Tests of the worker's reading of a config through the description: families,
//! quantization overrides, and hostile values (the shared range check, no truncation,
//! random bytes).
#![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

use super::*;
use crate::family::SUPPORTED;
use serde_json::json;

/// Describes `v` and reads the worker's config from it.
fn from_value(v: &Value, source: &str) -> Result<RunConfig, ConfigError> {
    let root = v
        .as_object()
        .cloned()
        .ok_or_else(|| load_failed(format!("{source}: top level is not an object")))?;
    Description::new(root)
        .map_err(|e| load_failed(format!("{source}: {e}")))?
        .run_config(source)
}

fn base(model_type: &str) -> Value {
    json!({"model_type": model_type, "hidden_size": 64, "num_hidden_layers": 2,
           "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": 300, "eos_token_id": [5, 6]})
}

#[test]
fn unsupported_model_type_names_it_and_the_supported_ones() {
    let e = from_value(&base("gpt2"), "config.json").unwrap_err();
    assert!(e.message.contains("\"gpt2\""), "{}", e.message);
    for s in SUPPORTED {
        assert!(e.message.contains(s), "{}", e.message);
    }
}

#[test]
fn family_switches() {
    let q2 = from_value(&base("qwen2"), "c").unwrap();
    assert!(q2.attention_bias);
    assert_eq!(q2.eos_token_ids, vec![5, 6]);
    assert_eq!(q2.head_dim, 16);
    let mut m = base("mistral");
    m["sliding_window"] = json!(32);
    assert_eq!(
        from_value(&m, "c").unwrap().sliding_layers,
        vec![true, true]
    );
    m["layer_types"] = json!(["full_attention", "sliding_attention"]);
    assert_eq!(
        from_value(&m, "c").unwrap().sliding_layers,
        vec![false, true]
    );
    let mut l = base("llama");
    l["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0});
    assert!(matches!(
        from_value(&l, "c").unwrap().rope,
        RopeKind::Llama3 { .. }
    ));
    l["rope_scaling"] = json!({"rope_type": "yarn", "factor": 8.0});
    assert!(matches!(
        from_value(&l, "c").unwrap().rope,
        RopeKind::Yarn { .. }
    ));
    l["rope_scaling"] = json!({"rope_type": "ntk-by-parts", "factor": 8.0});
    let e = from_value(&l, "c").unwrap_err();
    assert!(
        e.message.contains("ntk-by-parts") && e.message.contains("yarn"),
        "{}",
        e.message
    );
}

#[test]
fn the_new_families_read_their_switches() {
    let mut g2 = base("gemma2");
    g2["head_dim"] = json!(32);
    g2["sliding_window"] = json!(16);
    let c = from_value(&g2, "c").unwrap();
    assert_eq!((c.attn_softcap, c.final_softcap), (Some(50.0), Some(30.0)));
    assert_eq!(c.attn_scale, (1.0 / 144f64.sqrt()) as f32);
    assert_eq!(c.tie_word_embeddings, Some(true));
    assert_eq!(
        c.sliding_layers,
        vec![false, false],
        "mlx-lm: full attention"
    );
    g2["final_logit_softcapping"] = Value::Null;
    assert_eq!(from_value(&g2, "c").unwrap().final_softcap, None);

    let mut g3 = base("gemma3_text");
    g3["num_hidden_layers"] = json!(7);
    g3["sliding_window_pattern"] = json!(3);
    g3["rope_scaling"] = json!({"rope_type": "linear", "factor": 8.0});
    let c = from_value(&g3, "c").unwrap();
    assert_eq!(
        c.sliding_layers,
        vec![true, true, false, true, true, false, true]
    );
    assert_eq!(c.sliding_window, Some(512));
    assert_eq!(c.rope, RopeKind::Default { scale: 0.125 });
    assert_eq!(c.rope_local_base, Some(10_000.0));
    assert_eq!(c.rope_theta, 1_000_000.0);

    let mut p = base("phi3");
    p["head_dim"] = json!(8); // ignored: phi3 derives it
    p["partial_rotary_factor"] = json!(0.5);
    p["rope_scaling"] = json!({"type": "longrope", "long_factor": [1.0, 2.0, 3.0, 4.0],
        "short_factor": [1.0, 1.0, 1.0, 1.0]});
    let c = from_value(&p, "c").unwrap();
    assert_eq!((c.head_dim, c.rope_dims), (16, 8));
    match c.rope {
        RopeKind::Su {
            long_factor,
            max_position_embeddings,
            original_max_position_embeddings,
            ..
        } => {
            assert_eq!(long_factor, vec![1.0, 2.0, 3.0, 4.0]);
            assert_eq!(
                (max_position_embeddings, original_max_position_embeddings),
                (131072.0, 4096.0)
            );
        }
        other => panic!("{other:?}"),
    }
    p["rope_scaling"]["long_factor"] = json!([1.0, 2.0]);
    let e = from_value(&p, "c").unwrap_err();
    assert!(
        e.message.contains("long_factor has 2 entries"),
        "{}",
        e.message
    );

    let mut m = base("mixtral");
    m["num_local_experts"] = json!(8);
    let c = from_value(&m, "c").unwrap();
    let moe = c.moe.unwrap();
    assert_eq!((moe.experts, moe.top_k, moe.intermediate), (8, 2, 128));
    assert_eq!(moe.routing, Routing::TopKSoftmax);
    m["num_experts_per_tok"] = json!(9);
    assert!(from_value(&m, "c").is_err());

    let mut q = base("qwen3_moe");
    q["num_hidden_layers"] = json!(4);
    q.as_object_mut().unwrap().extend(
        json!({"num_experts": 16, "num_experts_per_tok": 4, "moe_intermediate_size": 32,
               "norm_topk_prob": true, "decoder_sparse_step": 2, "mlp_only_layers": [3]})
        .as_object()
        .unwrap()
        .clone(),
    );
    let moe = from_value(&q, "c").unwrap().moe.unwrap();
    assert_eq!(moe.layers, vec![false, true, false, false]);
    assert_eq!(moe.routing, Routing::SoftmaxTopK { norm: true });
    q.as_object_mut().unwrap().remove("num_experts");
    let e = from_value(&q, "c").unwrap_err();
    assert!(e.message.contains("experts"), "{}", e.message);
}

#[test]
fn a_multimodal_gemma3_is_read_as_its_text_model() {
    let mut text = base("gemma3_text");
    text.as_object_mut().unwrap().remove("vocab_size");
    text.as_object_mut().unwrap().remove("num_key_value_heads");
    text.as_object_mut().unwrap().remove("eos_token_id");
    let v = json!({"model_type": "gemma3", "text_config": text, "eos_token_id": [1, 106],
        "quantization": {"group_size": 64, "bits": 4,
            "language_model.model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8}}});
    let c = from_value(&v, "c").unwrap();
    assert_eq!(c.model_type, "gemma3");
    assert_eq!(c.family, Decoder::Gemma3Text);
    assert_eq!(c.weight_prefix.as_deref(), Some("language_model."));
    assert_eq!((c.vocab_size, c.num_kv_heads), (262_208, 4));
    assert_eq!(c.eos_token_ids, vec![1, 106]);
    assert_eq!(
        c.quant_for("model.layers.0.mlp.down_proj"),
        Some(QuantParams {
            group_size: 32,
            bits: 8
        })
    );
    let e = from_value(&json!({"model_type": "gemma3"}), "c").unwrap_err();
    assert!(e.message.contains("hidden_size"), "{}", e.message);
    let mut flat = base("gemma3");
    flat.as_object_mut().unwrap().remove("vocab_size");
    let e = from_value(&flat, "c").unwrap_err();
    assert!(e.message.contains("text_config"), "{}", e.message);
}

#[test]
fn a_known_unsupported_family_names_what_is_missing() {
    let e = from_value(&base("deepseek_v3"), "config.json").unwrap_err();
    assert!(
        e.message.contains("multi-head latent attention"),
        "{}",
        e.message
    );
    assert!(
        e.message
            .contains("gemma, gemma2, gemma3_text, gemma3, phi3, mixtral, qwen3_moe"),
        "{}",
        e.message
    );
}

/// Every config of the fixture corpus (estimate/tests/fixtures/models, published
/// checkpoints) whose family the engine runs parses; the others are refused by name.
#[test]
fn the_fixture_corpus_configs_parse() {
    let root = crate::tests_support::corpus_dir();
    let mut parsed = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path().join("config.json");
        if !path.exists() {
            continue;
        }
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mt = v["model_type"].as_str().unwrap_or("").to_string();
        match from_value(&v, &path.display().to_string()) {
            Ok(c) => {
                assert_eq!(c.sliding_layers.len(), c.num_layers);
                parsed.push(mt);
            }
            Err(e) => {
                assert!(
                    !SUPPORTED.contains(&mt.as_str()),
                    "{}: {}",
                    path.display(),
                    e.message
                );
                assert!(e.message.contains(&format!("{mt:?}")), "{}", e.message);
            }
        }
    }
    for family in [
        "gemma",
        "gemma3_text",
        "phi3",
        "mixtral",
        "llama",
        "qwen2",
        "qwen3",
        "mistral",
        "qwen2_5_vl",
        "qwen2_vl",
    ] {
        assert!(
            parsed.iter().any(|p| p == family),
            "no {family} config in the corpus parsed: {parsed:?}"
        );
    }
    assert!(parsed.iter().filter(|p| *p == "phi3").count() >= 3);
    assert!(parsed.iter().filter(|p| *p == "mixtral").count() >= 3);
}

#[test]
fn per_layer_quantization_overrides() {
    let mut c = base("llama");
    c["quantization"] = json!({"group_size": 64, "bits": 4, "mode": "affine",
        "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8},
        "lm_head": false});
    let cfg = from_value(&c, "c").unwrap();
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
    assert!(from_value(&c, "c").is_err());
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
        let e = from_value(&c, "config.json").unwrap_err();
        assert!(
            e.message.contains(&format!("`{field}` =")),
            "{field}={v}: {}",
            e.message
        );
        assert!(e.message.contains("accepted range"), "{}", e.message);
    }
    let mut c = base("llama");
    c["quantization"] = json!({"bits": 4, "group_size": 0});
    assert!(from_value(&c, "c").is_err());
    c["quantization"] = json!({"bits": 4, "group_size": -1});
    let e = from_value(&c, "c").unwrap_err();
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
        if let Ok(cfg) = from_value(&c, "c") {
            let exact = |f: &str| crate::view::as_u64(&c[f]);
            prop_assert_eq!(Some(cfg.hidden_size as u64), exact("hidden_size"));
            prop_assert_eq!(Some(cfg.num_layers as u64), exact("num_hidden_layers"));
            prop_assert_eq!(Some(cfg.vocab_size as u64), exact("vocab_size"));
            prop_assert_eq!(cfg.sliding_layers.len(), cfg.num_layers);
            prop_assert!(cfg.num_layers <= 1024);
        }
    }

    /// Random bytes as config.json: when they parse as an object, a description or
    /// an error, never a panic.
    #[test]
    fn random_bytes_never_panic(config in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(Value::Object(root)) = serde_json::from_slice::<Value>(&config) {
            if let Ok(d) = Description::new(root) {
                let _ = d.run_config("c");
            }
        }
    }
}

/// The published Qwen2.5-VL-7B and olmOCR (Qwen2-VL) configs: the text model under
/// `language_model.`, the multimodal RoPE's sections, the vision tokens and the towers.
#[test]
fn vision_language_configs_read_their_tower_and_rope() {
    let root = crate::tests_support::corpus_dir();
    let read = |name: &str| {
        let path = root.join(name).join("config.json");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        from_value(&v, name).unwrap()
    };
    let c = read("Qwen__Qwen2.5-VL-7B-Instruct");
    assert_eq!(c.model_type, "qwen2_5_vl");
    assert_eq!(c.family, Decoder::Qwen2);
    assert_eq!(c.weight_prefix.as_deref(), Some("language_model."));
    let vl = c.vl.unwrap();
    assert_eq!(vl.mrope_section, [16, 24, 24]);
    assert_eq!(
        (vl.tokens.image, vl.tokens.vision_start),
        (151_655, 151_652)
    );
    assert_eq!(
        (vl.tower.hidden, vl.tower.out_hidden, vl.tower.depth),
        (1280, 3584, 32)
    );
    assert_eq!(vl.tower.fullatt, vec![7, 15, 23, 31]);
    assert!(!vl.tower.qwen2);
    let o = read("allenai__olmOCR-7B-0225-preview");
    assert_eq!(o.model_type, "qwen2_vl");
    let t = o.vl.unwrap().tower;
    assert!(t.qwen2);
    assert_eq!((t.hidden, t.intermediate, t.out_hidden), (1280, 5120, 3584));
    // A section that does not add up to head_dim/2 is refused by name.
    let mut v: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("Qwen__Qwen2.5-VL-7B-Instruct/config.json")).unwrap(),
    )
    .unwrap();
    v["rope_scaling"]["mrope_section"] = serde_json::json!([16, 24, 20]);
    let e = from_value(&v, "c").unwrap_err();
    assert!(e.message.contains("mrope_section"), "{}", e.message);
}

/// Read for the worker, a family it does not run is the error before a missing field
/// (read for the estimator, the missing field is).
#[test]
fn an_unsupported_family_is_named_before_what_the_config_lacks() {
    let v = json!({"model_type": "gpt2", "hidden_size": 8});
    let root = v.as_object().unwrap().clone();
    match Description::new_runnable(root.clone()) {
        Err(crate::DescribeError::Unsupported(m)) => {
            assert!(m.contains("\"gpt2\"") && m.contains("qwen3"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    match Description::new(root) {
        Err(crate::DescribeError::Config(m)) => assert!(m.contains("num_hidden_layers"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A family it runs describes as for the estimator.
    let d = Description::new_runnable(base("qwen3").as_object().unwrap().clone()).unwrap();
    assert_eq!(d.family, crate::Family::Qwen3);
}

/// A corpus checkpoint's config.json.
fn corpus_config(name: &str) -> Value {
    let path = crate::tests_support::corpus_dir()
        .join(name)
        .join("config.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Issue 24's families, read from their published configs as mlx-lm 0.32.2 reads them.
#[test]
fn issue24_families_read_as_mlx_lm_reads_them() {
    // SmolLM3-3B: every 4th layer attends without RoPE, per `no_rope_layers`.
    let s = from_value(&corpus_config("HuggingFaceTB__SmolLM3-3B"), "c").unwrap();
    assert_eq!(s.family, Decoder::SmolLm3);
    let want: Vec<bool> = (0..36).map(|i| (i + 1) % 4 != 0).collect();
    assert_eq!(s.rope_layers, want);
    assert_eq!(s.rope_theta, 5_000_000.0);
    assert!(!s.attention_bias && !s.o_proj_bias && !s.mlp_bias);
    // No tie_word_embeddings: tied, as mlx-lm's llama arguments default it.
    assert_eq!(s.tie_word_embeddings, Some(true));
    // MiMo-7B: q/k/v biases, no o_proj bias, its MTP layers never read.
    let m = from_value(&corpus_config("XiaomiMiMo__MiMo-7B"), "c").unwrap();
    assert_eq!(m.family, Decoder::Mimo);
    assert!(m.attention_bias && !m.o_proj_bias);
    assert_eq!(m.skip_weights, vec!["model.mtp_layers.".to_string()]);
    assert_eq!(m.tie_word_embeddings, Some(false));
    assert_eq!((m.rope_theta, m.rms_norm_eps), (640_000.0, 1e-5));
    assert!(m.rope_layers.iter().all(|r| *r));
    // Qwen-72B: every head a KV head, w1/w2 half of intermediate_size, RoPE base 10000
    // (qwen.py's nn.RoPE) although the config says 1e6, layer_norm_epsilon.
    let q = from_value(&corpus_config("Qwen__Qwen-72B"), "c").unwrap();
    assert_eq!(q.family, Decoder::Qwen);
    assert_eq!((q.num_heads, q.num_kv_heads, q.head_dim), (64, 64, 128));
    assert_eq!(q.intermediate_size, 24_576);
    assert_eq!(q.rope_theta, 10_000.0);
    assert_eq!(q.rope, RopeKind::Default { scale: 1.0 });
    assert!(q.attention_bias && !q.o_proj_bias && !q.mlp_bias && !q.lm_head_bias);
    assert_eq!(q.tie_word_embeddings, Some(false));
    // granite-3.1-1b-a400m: its multipliers, the attention's as the scale, 32 experts.
    let g = from_value(
        &corpus_config("ibm-granite__granite-3.1-1b-a400m-instruct"),
        "c",
    )
    .unwrap();
    assert_eq!(g.family, Decoder::GraniteMoe);
    assert_eq!(
        g.multipliers,
        Some(Multipliers {
            embedding: 12.0,
            residual: 0.22,
            logits_scaling: 6.0
        })
    );
    assert_eq!(g.attn_scale, 0.015625);
    let moe = g.moe.unwrap();
    assert_eq!((moe.experts, moe.top_k, moe.intermediate), (32, 8, 512));
    assert_eq!(moe.routing, Routing::TopKSoftmaxF32);
    assert_eq!(g.tie_word_embeddings, Some(true));
}

#[test]
fn issue24_families_refuse_what_mlx_lm_cannot_run() {
    // SmolLM3 without no_rope_layers: every `no_rope_layer_interval`-th layer (4).
    let mut v = base("smollm3");
    v["num_hidden_layers"] = 8.into();
    let s = from_value(&v, "c").unwrap();
    assert_eq!(
        s.rope_layers,
        vec![true, true, true, false, true, true, true, false]
    );
    v["no_rope_layer_interval"] = 2.into();
    assert_eq!(
        from_value(&v, "c").unwrap().rope_layers,
        vec![true, false, true, false, true, false, true, false]
    );
    for (bad, needle) in [
        (json!([1, 0, 1]), "3 entries for 8 layers"),
        (json!("all"), "not a list"),
        (json!([1, 0, 1, 1, 1, 1, 1, "x"]), "not 0 or 1"),
    ] {
        v["no_rope_layers"] = bad;
        let e = from_value(&v, "config.json").unwrap_err().message;
        assert!(e.contains("no_rope_layers") && e.contains(needle), "{e}");
    }
    // Granite MoE without a multiplier mlx-lm requires, or dividing by zero.
    let mut g = base("granitemoe");
    for (k, x) in [
        ("num_local_experts", json!(4)),
        ("num_experts_per_tok", json!(2)),
        ("embedding_multiplier", json!(12.0)),
        ("attention_multiplier", json!(0.5)),
        ("residual_multiplier", json!(0.2)),
        ("logits_scaling", json!(6.0)),
    ] {
        g[k] = x;
    }
    if let Err(e) = from_value(&g, "c") {
        panic!("{}", e.message);
    }
    for k in [
        "embedding_multiplier",
        "attention_multiplier",
        "residual_multiplier",
        "logits_scaling",
    ] {
        let mut h = g.clone();
        h.as_object_mut().unwrap().remove(k);
        let e = from_value(&h, "config.json").unwrap_err().message;
        assert!(e.contains(k) && e.contains("missing"), "{e}");
    }
    g["logits_scaling"] = 0.0.into();
    let e = from_value(&g, "config.json").unwrap_err().message;
    assert!(e.contains("logits_scaling"), "{e}");
    // The first Qwen: kv_channels × heads must be the hidden size.
    let mut q = base("qwen");
    q["kv_channels"] = 8.into();
    let e = from_value(&q, "config.json").unwrap_err().message;
    assert!(e.contains("kv_channels 8"), "{e}");
    q["kv_channels"] = 16.into();
    assert_eq!(from_value(&q, "c").unwrap().intermediate_size, 64);
}
