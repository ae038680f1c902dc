//! The model families of issue 13 against mlx-lm 0.32.2 on the same MLX: Gemma 2,
//! Gemma 3 (sliding window, passed), Phi-3 (fused projections, LongRoPE), and every RoPE
//! scaling type on some family. For each, in bf16 and 4-bit with native compute, a
//! `make_model` folder gives mlx-lm's 64 greedy tokens and first-step log-probabilities
//! within 1e-3; a few also in f32 compute against mlx-lm's f32 conversion.
//!
//! Mixtral and Qwen3-MoE: MLX 0.32.2's CPU `GatherMM` runs only in float32 and mlx-lm
//! 0.32.2 cannot run a quantized MoE on this MLX, so they are checked in f32 compute
//! against mlx-lm's f32 conversion (both weight layouts, bf16 and 4-bit folders), and
//! the native 4-bit run against our own f32 run of the same folder (log-probs within
//! 1e-2, the first 16 tokens equal). A native bf16 MoE on the CPU is a clear load_failed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test scaffolding: a failure here is a test failure.

mod common;
use common::{ids, run_python, Collect};
use std::path::{Path, PathBuf};

use protocol::{GenerateRequest, ModelOptions, ModelSpec, Prompt, Sampling, WorkerErrorKind};
use serde_json::{json, Value};
use worker::engine::{Engine, GenerateOptions, LoadOptions};

const TOLERANCE: f32 = 1e-3;
/// Native 4-bit MoE (bf16 activations) against our f32 run of the same folder: a loose
/// bound, since bf16 against f32 moves these tiny random models' log-probs by ~0.2.
const BF16_VS_F32_BOUND: f32 = 0.5;
const MAX_TOKENS: u32 = 64;
/// 32 prompt tokens × 2 experts reach mlx-lm's 64-index threshold: the prefill takes
/// SwitchGLU's sorted path, the decode steps the unsorted one.
const PREFILL_CHUNK: usize = 32;
const PROMPT: &str = "Hello, world! The model runs out of memory — ça va? Tokens stream one by one as the supervisor watches the machine and 42 numbers.";

fn spec(dir: &Path, arch: &str, quant: Option<u32>, seed: u64, options: ModelOptions) -> ModelSpec {
    ModelSpec {
        dir: dir.display().to_string(),
        arch: arch.into(),
        hidden: 128,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        intermediate: 256,
        vocab: 512,
        dtype: "bf16".into(),
        quant_bits: quant,
        group_size: 64,
        seed,
        options,
    }
}

fn rope(s: &str) -> ModelOptions {
    ModelOptions {
        rope_scaling: Some(s.into()),
        ..Default::default()
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

struct Ours {
    prompt: Vec<u32>,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    dtype: String,
}

/// Our greedy run of `dir`, eos ignored, keeping the first step's log-probabilities.
fn greedy(dir: &Path, f32: bool) -> Ours {
    let mut engine = Engine::load(
        dir,
        &LoadOptions {
            prefill_chunk: PREFILL_CHUNK,
            f32,
            ..Default::default()
        },
        &mut Collect(vec![]),
    )
    .unwrap_or_else(|e| panic!("{}: {e:?}", dir.display()));
    let prompt = engine.prompt_ids(&Prompt::Text(PROMPT.into())).unwrap();
    let req = GenerateRequest {
        prompt: Prompt::Tokens(prompt.clone()),
        max_tokens: MAX_TOKENS,
        sampling: Sampling::default(),
        stop: vec![],
        fault: None,
        images: Vec::new(),
    };
    let opts = GenerateOptions {
        ignore_eos: true,
        keep_first_logprobs: true,
    };
    let mut hooks = Collect(vec![]);
    let done = engine.generate_with(&req, &opts, &mut hooks).unwrap();
    assert_eq!(done.generated_tokens, MAX_TOKENS);
    Ours {
        prompt,
        tokens: hooks.0,
        logprobs: engine.first_logprobs().unwrap().to_vec(),
        dtype: engine.compute_dtype(),
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// One folder, run by us (`f32` compute or native) and compared with mlx-lm's run of the
/// same folder (its f32 conversion when `f32`).
struct Case {
    name: String,
    dir: PathBuf,
    f32: bool,
}

fn compare_with_mlx_lm(cases: &[Case]) {
    compare_with(cases, "mlx_lm_reference.py")
}

fn compare_with(cases: &[Case], script: &str) {
    let mut ours = Vec::new();
    let mut jobs = Vec::new();
    for case in cases {
        let o = greedy(&case.dir, case.f32);
        let want = if case.f32 {
            "float32"
        } else if case.name.ends_with("-f16") {
            "float16"
        } else {
            "bfloat16"
        };
        assert!(o.dtype.starts_with(want), "{}: {}", case.name, o.dtype);
        jobs.push(json!({
            "model": case.dir, "prompt_text": PROMPT, "prompt_tokens": o.prompt,
            "max_tokens": MAX_TOKENS, "prefill_step": PREFILL_CHUNK, "f32": case.f32,
        }));
        ours.push(o);
    }
    let reference = run_python(script, &Value::Array(jobs));
    let mut failures = Vec::new();
    for ((case, o), r) in cases.iter().zip(&ours).zip(&reference) {
        let theirs = ids(&r["tokens"]);
        let d = max_diff(&o.logprobs, &floats(&r["first_logprobs"]));
        let distinct: std::collections::BTreeSet<_> = o.tokens.iter().collect();
        eprintln!(
            "{}: 64 tokens identical to mlx-lm: {}, max |Δ logprob| = {d:e}, {} distinct",
            case.name,
            theirs == o.tokens,
            distinct.len()
        );
        if theirs != o.tokens {
            let at = o.tokens.iter().zip(&theirs).position(|(a, b)| a != b);
            failures.push(format!(
                "{}: tokens differ at {at:?}:\n  ours   {:?}\n  mlx-lm {theirs:?}",
                case.name, o.tokens
            ));
        }
        if d > TOLERANCE {
            failures.push(format!("{}: first-step logprobs differ by {d}", case.name));
        }
        if distinct.len() < 8 {
            failures.push(format!("{}: degenerate generation", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn make(tmp: &Path, name: &str, s: impl FnOnce(&Path) -> ModelSpec) -> PathBuf {
    let dir = tmp.join(name);
    worker::make_model::make_model(&s(&dir)).unwrap();
    dir
}

#[test]
fn gemma_phi3_and_rope_scalings_match_mlx_lm() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let window = || ModelOptions {
        sliding_window: Some(16),
        ..Default::default()
    };
    let mut cases = Vec::new();
    let mut add = |name: &str, f32: bool, s: &dyn Fn(&Path) -> ModelSpec| {
        cases.push(Case {
            name: name.into(),
            dir: make(t, name, s),
            f32,
        });
    };
    for (k, q) in [None, Some(4)].into_iter().enumerate() {
        let tag = if q.is_some() { "q4" } else { "bf16" };
        let seed = 300 + k as u64;
        // Gemma 2: soft-capping, four norms, scaled embeddings (mlx-lm 0.32.2 attends in
        // full on every layer, whatever sliding_window says; a window of 16 is passed).
        add(&format!("gemma2-{tag}"), false, &|d| {
            spec(d, "gemma2", q, seed, window())
        });
        // Gemma 3: 1 sliding (window 16, passed by the 100-token run) + 1 global layer,
        // two RoPE bases, linear scaling on the global one as gemma-3-4b has.
        add(&format!("gemma3_text-linear8-{tag}"), false, &|d| {
            let mut o = window();
            o.rope_scaling = Some("linear:8".into());
            spec(d, "gemma3_text", q, seed, o)
        });
        // A multimodal Gemma 3 folder (text_config, language_model.*, a vision tower),
        // run as its text model as mlx-lm does.
        add(&format!("gemma3-{tag}"), false, &|d| {
            spec(d, "gemma3", q, seed + 7, window())
        });
        // Gemma 1: (1 + weight) norms, scaled embeddings, exact-GELU MLP, tied.
        add(&format!("gemma-{tag}"), false, &|d| {
            spec(d, "gemma", q, seed + 9, ModelOptions::default())
        });
        // Phi-3 mini 128k style: fused qkv / gate_up, LongRoPE.
        add(&format!("phi3-longrope-{tag}"), false, &|d| {
            spec(d, "phi3", q, seed, rope("longrope:8"))
        });
    }
    // phi-4 style: Phi-3 without scaling.
    add("phi3-plain-bf16", false, &|d| {
        spec(d, "phi3", None, 310, ModelOptions::default())
    });
    // The other scalings on the dense families.
    add("llama-yarn4-bf16", false, &|d| {
        spec(d, "llama", None, 311, rope("yarn:4"))
    });
    add("llama-yarn4-q4", false, &|d| {
        spec(d, "llama", Some(4), 312, rope("yarn:4"))
    });
    add("qwen2-dynamic2-bf16", false, &|d| {
        // max_position 64: the 100-token run passes it, where dynamic NTK moves the base.
        let mut o = rope("dynamic:2");
        o.max_position = Some(64);
        spec(d, "qwen2", None, 313, o)
    });
    add("qwen3-longrope4-bf16", false, &|d| {
        spec(d, "qwen3", None, 314, rope("longrope:4"))
    });
    add("mistral-linear2-q4", false, &|d| {
        spec(d, "mistral", Some(4), 315, rope("linear:2"))
    });
    // f32 compute against mlx-lm's f32 conversion, once per new dense family.
    add("gemma2-f32", true, &|d| {
        spec(d, "gemma2", Some(4), 320, window())
    });
    add("gemma3_text-f32", true, &|d| {
        spec(d, "gemma3_text", None, 321, window())
    });
    // Gemma 3 in float16: the residuals go through mlx-lm's clip_residual.
    add("gemma3_text-f16", false, &|d| {
        let mut s = spec(d, "gemma3_text", None, 323, window());
        s.dtype = "f16".into();
        s
    });
    add("phi3-longrope-f32", true, &|d| {
        spec(d, "phi3", None, 322, rope("longrope:8"))
    });
    compare_with_mlx_lm(&cases);
}

fn moe(experts: u32, k: u32, stacked: bool) -> ModelOptions {
    ModelOptions {
        experts,
        experts_per_token: k,
        stacked_experts: stacked,
        ..Default::default()
    }
}

#[test]
fn moe_families_match_mlx_lm_in_f32_and_4_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut f32_cases = Vec::new();
    let mut quant = Vec::new();
    for (k, arch) in ["mixtral", "qwen3_moe"].into_iter().enumerate() {
        let seed = 400 + 10 * k as u64;
        for (j, stacked) in [false, true].into_iter().enumerate() {
            let layout = if stacked { "stacked" } else { "hf" };
            let name = format!("{arch}-{layout}-bf16");
            let dir = make(t, &name, |d| {
                spec(d, arch, None, seed + j as u64, moe(4, 2, stacked))
            });
            f32_cases.push(Case {
                name,
                dir,
                f32: true,
            });
        }
        // mlx-lm's own layout for a quantized MoE: stacked switch_mlp, 8 experts.
        let name = format!("{arch}-stacked-q4");
        let dir = make(t, &name, |d| {
            spec(d, arch, Some(4), seed + 5, moe(8, 2, true))
        });
        f32_cases.push(Case {
            name: format!("{name} in f32"),
            dir: dir.clone(),
            f32: true,
        });
        quant.push(Case {
            name,
            dir,
            f32: false,
        });
    }
    // Per-expert quantized tensors (mlx-lm's mixtral sanitize stacks those too).
    let name = "mixtral-hf-q4".to_string();
    let dir = make(t, &name, |d| {
        spec(d, "mixtral", Some(4), 430, moe(4, 2, false))
    });
    quant.push(Case {
        name,
        dir,
        f32: false,
    });
    compare_with_mlx_lm(&f32_cases);
    // Native 4-bit (gather_qmm in bf16) against mlx-lm with the global_scale shim.
    compare_with(&quant, "mlx_lm_moe_reference.py");

    // And against our own f32 run of the same folder, as issue 13 proposed when no peer
    // could run it: bf16 activations against f32 ones. On these random tiny models
    // that gap is ~0.1–0.25 in log-prob (dense 4-bit folders show the same), so the
    // bound is loose; the exact check is the one above.
    let dense = Case {
        name: "llama-q4 (dense, for scale)".into(),
        dir: make(t, "llama-q4", |d| {
            spec(d, "llama", Some(4), 440, ModelOptions::default())
        }),
        f32: false,
    };
    for case in quant.iter().chain(std::iter::once(&dense)) {
        let native = greedy(&case.dir, false);
        let f32 = greedy(&case.dir, true);
        let d = max_diff(&native.logprobs, &f32.logprobs);
        let same = native
            .tokens
            .iter()
            .zip(&f32.tokens)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "{}: native 4-bit vs our f32 of it: max |Δ logprob| = {d:e}, first {same} tokens equal",
            case.name
        );
        assert!(
            d < BF16_VS_F32_BOUND,
            "{}: native vs f32 Δ logprob {d}",
            case.name
        );
    }
}

#[test]
fn a_native_bf16_moe_on_the_cpu_is_a_clear_load_failed() {
    if worker::mlx_info::device_name() != "cpu" {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = make(tmp.path(), "m", |d| {
        spec(d, "qwen3_moe", None, 1, moe(4, 2, true))
    });
    let err = match Engine::load(
        &dir,
        &LoadOptions {
            prefill_chunk: 16,
            f32: false,
            ..Default::default()
        },
        &mut Collect(vec![]),
    ) {
        Ok(_) => panic!("a bf16 MoE loaded natively on the CPU"),
        Err(e) => e,
    };
    assert_eq!(err.kind, WorkerErrorKind::LoadFailed);
    for needle in ["qwen3_moe", "GatherMM", "float32", "--compute f32"] {
        assert!(err.message.contains(needle), "{needle}: {}", err.message);
    }
}

/// Issue 24's dense families, each in bf16 and 4-bit against mlx-lm 0.32.2 loading the
/// same `make_model` folder (so its weight names and layout are mlx-lm's too): SmolLM3
/// (its first layer attends without RoPE, per `no_rope_layers`), MiMo (Qwen2-shaped,
/// q/k/v biases) and the first Qwen (`transformer.*` names, fused `c_attn` with its
/// bias, `swiglu(w2, w1)`, RoPE base 10000 whatever the config says).
#[test]
fn smollm3_mimo_and_qwen_match_mlx_lm() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut cases = Vec::new();
    for (k, arch) in ["smollm3", "mimo", "qwen"].into_iter().enumerate() {
        for (j, q) in [None, Some(4)].into_iter().enumerate() {
            let tag = if q.is_some() { "q4" } else { "bf16" };
            let name = format!("{arch}-{tag}");
            let seed = 500 + 10 * k as u64 + j as u64;
            cases.push(Case {
                dir: make(t, &name, |d| {
                    let mut s = spec(d, arch, q, seed, ModelOptions::default());
                    if arch == "qwen" {
                        s.kv_heads = s.heads;
                    }
                    s
                }),
                name,
                f32: false,
            });
        }
    }
    compare_with_mlx_lm(&cases);
}

/// Granite MoE (its embedding, attention, residual and logit multipliers; top-k logits
/// softmaxed in float32): in f32 compute against mlx-lm's f32 conversion, for Hugging
/// Face's `input_linear`/`output_linear` layout and a stacked 4-bit folder (router,
/// o_proj at 8 bits, as mlx-lm's quant_predicate), and the 4-bit folder natively
/// against mlx-lm with the global_scale shim.
#[test]
fn granitemoe_matches_mlx_lm_in_f32_and_4_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let hf = make(t, "granitemoe-hf-bf16", |d| {
        spec(d, "granitemoe", None, 600, moe(4, 2, false))
    });
    let q4 = make(t, "granitemoe-stacked-q4", |d| {
        spec(d, "granitemoe", Some(4), 603, moe(8, 2, true))
    });
    compare_with_mlx_lm(&[
        Case {
            name: "granitemoe-hf-bf16 in f32".into(),
            dir: hf,
            f32: true,
        },
        Case {
            name: "granitemoe-stacked-q4 in f32".into(),
            dir: q4.clone(),
            f32: true,
        },
    ]);
    compare_with(
        &[Case {
            name: "granitemoe-stacked-q4".into(),
            dir: q4,
            f32: false,
        }],
        "mlx_lm_moe_reference.py",
    );
}
