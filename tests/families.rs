//! The model families of issue 13 through the CLI: `mlxsup make-model --arch <family>`
//! with its family flags writes a folder whose config.json says what the flags asked,
//! `mlxsup run` generates from it (the estimate's weight bytes are what the worker
//! holds), a native bf16 MoE on the CPU is a load_failed that says why and what to do,
//! and a flag the family cannot honour is refused. Token parity with mlx-lm is in
//! worker/tests/families.rs.
#![allow(clippy::unwrap_used)]

use mlxsup_tests::mlxsup;
use serde_json::Value;

fn config(dir: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

fn tensor_names(dir: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header.as_object().unwrap().keys().cloned().collect()
}

fn make(dir: &std::path::Path, arch: &str, extra: &[&str]) {
    let d = dir.to_str().unwrap();
    let mut args = vec![
        "make-model",
        d,
        "--arch",
        arch,
        "--hidden",
        "128",
        "--layers",
        "2",
        "--intermediate",
        "256",
        "--json",
    ];
    args.extend_from_slice(extra);
    let r = mlxsup(&args);
    assert_eq!(r.code, Some(0), "{arch}: {}", r.stderr);
}

#[test]
fn every_new_family_is_made_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 11] = [
        ("gemma", &[]),
        ("gemma3", &["--sliding-window", "8", "--quant-bits", "4"]),
        ("gemma2", &["--sliding-window", "8"]),
        (
            "gemma3_text",
            &["--sliding-window", "8", "--rope-scaling", "linear:8"],
        ),
        (
            "phi3",
            &["--rope-scaling", "longrope:8", "--max-position", "8192"],
        ),
        ("mixtral", &["--experts", "3", "--experts-per-token", "1"]),
        (
            "qwen3_moe",
            &["--experts", "4", "--stacked-experts", "--quant-bits", "4"],
        ),
        // Issue 24.
        ("smollm3", &[]),
        ("mimo", &["--quant-bits", "4"]),
        ("qwen", &[]),
        ("granitemoe", &["--experts", "4"]),
    ];
    for (arch, extra) in cases {
        let dir = tmp.path().join(arch);
        make(&dir, arch, extra);
        let c = config(&dir);
        let names = tensor_names(&dir);
        assert_eq!(c["model_type"], arch);
        match arch {
            "gemma" => {
                assert_eq!(c["hidden_act"], "gelu");
                assert!(!names.iter().any(|n| n.contains("feedforward_layernorm")));
            }
            "gemma2" => {
                assert_eq!(c["sliding_window"], 8);
                assert!(c["attn_logit_softcapping"].as_f64().is_some(), "{c}");
                assert!(names
                    .iter()
                    .any(|n| n.ends_with("pre_feedforward_layernorm.weight")));
            }
            "gemma3" => {
                assert_eq!(c["text_config"]["model_type"], "gemma3_text");
                assert_eq!(c["quantization"]["bits"], 4);
                assert!(names
                    .iter()
                    .any(|n| n.starts_with("language_model.model.layers.0.")));
                assert!(names.iter().any(|n| n.starts_with("vision_tower.")));
            }
            "gemma3_text" => {
                assert_eq!(c["rope_scaling"]["type"], "linear");
                assert_eq!(c["rope_scaling"]["factor"], 8.0);
                assert_eq!(c["sliding_window_pattern"], 2);
                assert!(names.iter().any(|n| n.ends_with("self_attn.q_norm.weight")));
            }
            "phi3" => {
                assert_eq!(c["rope_scaling"]["type"], "longrope");
                assert_eq!(
                    c["rope_scaling"]["long_factor"].as_array().unwrap().len(),
                    16
                );
                assert_eq!(c["max_position_embeddings"], 8192);
                assert_eq!(c["original_max_position_embeddings"], 256);
                assert!(names
                    .iter()
                    .any(|n| n.ends_with("self_attn.qkv_proj.weight")));
                assert!(names.iter().any(|n| n.ends_with("mlp.gate_up_proj.weight")));
            }
            "mixtral" => {
                assert_eq!(
                    (
                        c["num_local_experts"].as_u64(),
                        c["num_experts_per_tok"].as_u64()
                    ),
                    (Some(3), Some(1))
                );
                assert!(names
                    .iter()
                    .any(|n| n == "model.layers.1.block_sparse_moe.experts.2.w2.weight"));
            }
            "smollm3" => {
                // Every 4th layer without RoPE, and the first (so that a 2-layer folder
                // has one).
                assert_eq!(c["no_rope_layers"], serde_json::json!([0, 1]));
                assert!(names.contains(&"model.layers.1.self_attn.q_proj.weight".to_string()));
            }
            "mimo" => {
                assert_eq!(c["attention_bias"], true);
                assert!(names.contains(&"model.layers.0.self_attn.k_proj.bias".to_string()));
                assert!(names.contains(&"model.layers.0.self_attn.k_proj.scales".to_string()));
                assert!(names.contains(&"lm_head.weight".to_string()));
            }
            "qwen" => {
                assert!(c.get("num_key_value_heads").is_none(), "{c}");
                assert_eq!(c["intermediate_size"], 512);
                for n in [
                    "transformer.wte.weight",
                    "transformer.h.1.attn.c_attn.bias",
                    "transformer.h.1.mlp.w2.weight",
                    "transformer.ln_f.weight",
                    "lm_head.weight",
                ] {
                    assert!(names.contains(&n.to_string()), "{n}: {names:?}");
                }
                assert!(!names.iter().any(|n| n.starts_with("model.")), "{names:?}");
            }
            "granitemoe" => {
                assert_eq!(c["num_local_experts"], 4);
                for key in [
                    "embedding_multiplier",
                    "attention_multiplier",
                    "residual_multiplier",
                    "logits_scaling",
                ] {
                    assert!(c[key].as_f64().is_some_and(|m| m != 1.0), "{key}: {c}");
                }
                assert!(names
                    .iter()
                    .any(|n| n == "model.layers.0.block_sparse_moe.input_linear.weight"));
            }
            _ => {
                assert_eq!(c["num_experts"], 4);
                assert_eq!(c["quantization"]["model.layers.0.mlp.gate"]["bits"], 8);
                assert!(names
                    .iter()
                    .any(|n| n == "model.layers.0.mlp.switch_mlp.up_proj.scales"));
                assert!(!names.iter().any(|n| n.contains(".experts.")));
            }
        }
        let d = dir.to_str().unwrap();
        let r = mlxsup(&[
            "run",
            d,
            "--prompt",
            "The quick brown fox",
            "--max-tokens",
            "8",
            "--context",
            "256",
            "--temp",
            "0",
            "--json",
        ]);
        assert_eq!(r.code, Some(0), "{arch}: {}\n{}", r.stderr, r.stdout);
        let done = r.named("done");
        assert_eq!(done[0]["generated_tokens"], 8, "{arch}");
        let w = &r.named("estimate")[0]["weights"];
        let est = w["bytes"].as_u64().unwrap();
        let held = r.named("loaded")[0]["weight_bytes"].as_u64().unwrap();
        if arch == "gemma3" {
            // The vision tower is planned for (a VLM runner would hold it); the text-only
            // worker, like mlx-lm, never reads it.
            // (`vision_bytes` is as stored; the f32 plan upcasts the bf16 tower.)
            let vision = w["vision_bytes"].as_u64().unwrap();
            let planned = if w["compute_f32"] == true {
                2 * vision
            } else {
                vision
            };
            assert!(vision > 0, "{w}");
            assert_eq!(est - planned, held, "{arch}: {w}");
        } else {
            assert_eq!(
                est, held,
                "{arch}: the estimate's weights are what the worker holds"
            );
        }
    }
}

#[test]
fn a_native_bf16_moe_on_the_cpu_says_why_it_cannot_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    make(&dir, "mixtral", &[]);
    let d = dir.to_str().unwrap();
    let r = mlxsup(&[
        "run",
        d,
        "--prompt",
        "Hi",
        "--max-tokens",
        "2",
        "--compute",
        "native",
        "--json",
    ]);
    assert_ne!(r.code, Some(0));
    let (_, f) = r.failure().expect("a failure event");
    assert_eq!(f["kind"], "load_failed", "{f}");
    let m = f["message"].as_str().unwrap();
    for needle in [
        "mixtral",
        "GatherMM",
        "only float32",
        "bfloat16",
        "--compute f32",
    ] {
        assert!(m.contains(needle), "{needle}: {m}");
    }
}

#[test]
fn family_flags_a_family_cannot_honour_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for (arch, extra, needle) in [
        (
            "gemma2",
            &["--rope-scaling", "yarn:2"][..],
            "ignores rope_scaling",
        ),
        ("llama", &["--experts", "4"][..], "mixtral and qwen3_moe"),
        (
            "phi3",
            &["--rope-scaling", "yarn:2"][..],
            "linear or longrope",
        ),
        (
            "mixtral",
            &["--experts", "2", "--experts-per-token", "3"][..],
            "more than",
        ),
        (
            "qwen3",
            &["--rope-scaling", "ntk:2"][..],
            "the type must be",
        ),
        // Issue 24: mlx-lm's qwen builds a plain RoPE; it quantizes Granite's experts
        // only stacked.
        (
            "qwen",
            &["--rope-scaling", "linear:2"][..],
            "ignores rope_scaling",
        ),
        (
            "granitemoe",
            &["--quant-bits", "4"][..],
            "needs --stacked-experts",
        ),
    ] {
        let dir = tmp.path().join(arch);
        let mut args = vec!["make-model", dir.to_str().unwrap(), "--arch", arch];
        args.extend_from_slice(extra);
        let r = mlxsup(&args);
        assert_ne!(r.code, Some(0), "{arch} {extra:?}");
        assert!(r.stderr.contains(needle), "{arch} {extra:?}: {}", r.stderr);
        assert!(!dir.exists(), "nothing is left behind");
    }
}

/// Per-expert (Hugging Face) tensors are stacked into one buffer expert by expert: the
/// load's peak exceeds the weights by about one expert, not by a whole stacked projection
/// (which an `mx.stack` of the parts would add).
#[test]
fn stacking_per_expert_tensors_holds_no_second_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let args = [
        "--hidden",
        "256",
        "--intermediate",
        "512",
        "--vocab",
        "512",
        "--experts",
        "8",
        "--dtype",
        "f32",
        "--layers",
        "2",
    ];
    let d = dir.to_str().unwrap();
    let mut a = vec!["make-model", d, "--arch", "qwen3_moe"];
    a.extend_from_slice(&args);
    assert_eq!(mlxsup(&a).code, Some(0));
    let r = mlxsup(&[
        "run",
        d,
        "--prompt",
        "Hi",
        "--max-tokens",
        "2",
        "--context",
        "256",
        "--json",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let loaded = r.named("loaded")[0];
    let over = loaded["peak_bytes"].as_u64().unwrap() - loaded["weight_bytes"].as_u64().unwrap();
    let projection = 8 * 512 * 256 * 4;
    assert!(
        over < projection / 2,
        "load peak {over} bytes over the weights (one projection: {projection})"
    );
}
