//! Our engine against mlx-lm 0.32.2 on the same MLX: for each family, in bf16 and 4-bit
//! (group 64), a `make_model` folder gives the identical 64 greedy tokens, and the first
//! step's log-probabilities agree within [`LOGPROB_TOLERANCE`]. Also f32 and f16 once
//! each, a sliding-window Mistral (rotating cache), and the prompt's tokenization and
//! chat template against transformers' (which mlx-lm uses). And f32 compute (issue 14):
//! bf16 and 4-bit folders computed in f32 give mlx-lm's tokens on the same folder
//! converted to f32 (dequantized, then cast).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test scaffolding: a failure here is a test failure.

mod common;
use common::{ids, run_python, Collect};
use std::path::{Path, PathBuf};

use protocol::{ChatMessage, GenerateRequest, ModelSpec, Prompt, Sampling};
use serde_json::{json, Value};
use worker::engine::{Engine, GenerateOptions, LoadOptions};

/// Largest allowed |ours − mlx-lm| over the first step's log-probabilities. The two
/// run the same MLX kernels in the same order, so this is expected to be exactly 0; the
/// tolerance only allows for a different kernel choice on another backend.
const LOGPROB_TOLERANCE: f32 = 1e-3;
const MAX_TOKENS: u32 = 64;
const PREFILL_CHUNK: usize = 16;
const PROMPT: &str = "Hello, world! The model runs out of memory — ça va? Tokens stream one by one as the supervisor watches the machine and 42 numbers.";

struct Case {
    name: String,
    dir: PathBuf,
}

fn spec(dir: &Path, arch: &str, quant: Option<u32>, seed: u64) -> ModelSpec {
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
        options: Default::default(),
    }
}

/// Turns a Mistral folder into one whose first layer uses a 32-position sliding window
/// (mlx-lm honours `layer_types`), so the rotating cache is checked against mlx-lm too.
fn make_sliding(dir: &Path) {
    let path = dir.join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["sliding_window"] = json!(32);
    cfg["layer_types"] = json!(["sliding_attention", "full_attention"]);
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
}

#[test]
fn greedy_tokens_match_mlx_lm() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for (k, arch) in ["llama", "mistral", "qwen2", "qwen3"]
        .into_iter()
        .enumerate()
    {
        for quant in [None, Some(4)] {
            let name = format!("{arch}-{}", if quant.is_some() { "q4" } else { "bf16" });
            let dir = tmp.path().join(&name);
            worker::make_model::make_model(&spec(&dir, arch, quant, 1000 + k as u64)).unwrap();
            cases.push(Case { name, dir });
        }
    }
    // The other float dtypes, once each.
    for (arch, dtype) in [("llama", "f32"), ("qwen3", "f16")] {
        let name = format!("{arch}-{dtype}");
        let dir = tmp.path().join(&name);
        let mut s = spec(&dir, arch, None, 77);
        s.dtype = dtype.into();
        worker::make_model::make_model(&s).unwrap();
        cases.push(Case { name, dir });
    }
    let dir = tmp.path().join("mistral-swa32-bf16");
    worker::make_model::make_model(&spec(&dir, "mistral", None, 7)).unwrap();
    make_sliding(&dir);
    cases.push(Case {
        name: "mistral-swa32-bf16".into(),
        dir,
    });

    let chat = vec![ChatMessage {
        role: "user".into(),
        content: "Hi there, ça va?".into(),
    }];
    let mut ours = Vec::new();
    let mut jobs = Vec::new();
    for case in &cases {
        let mut engine = Engine::load(
            &case.dir,
            &LoadOptions {
                prefill_chunk: PREFILL_CHUNK,
                f32: false,
                matmul_lanes: 0,
                kv_bits: None,
                prefix_cache: 0,
            },
            &mut Collect(vec![]),
        )
        .unwrap();
        let prompt = engine.prompt_ids(&Prompt::Text(PROMPT.into())).unwrap();
        let chat_ids = engine.prompt_ids(&Prompt::Chat(chat.clone())).unwrap();
        let (tokens, logprobs) = generate(&mut engine, &prompt);
        jobs.push(json!({
            "model": case.dir, "prompt_text": PROMPT, "prompt_tokens": prompt,
            "max_tokens": MAX_TOKENS, "prefill_step": PREFILL_CHUNK,
            "chat": [{"role": "user", "content": chat[0].content}],
        }));
        ours.push((prompt, chat_ids, tokens, logprobs));
    }
    let reference = run_python("mlx_lm_reference.py", &Value::Array(jobs));

    let mut failures = Vec::new();
    for ((case, (prompt, chat_ids, tokens, logprobs)), r) in cases.iter().zip(&ours).zip(&reference)
    {
        if &ids(&r["prompt_tokens"]) != prompt {
            failures.push(format!(
                "{}: prompt tokenization differs: ours {prompt:?}, mlx-lm {:?}",
                case.name, r["prompt_tokens"]
            ));
        }
        if &ids(&r["chat_tokens"]) != chat_ids {
            failures.push(format!(
                "{}: chat template tokens differ: ours {chat_ids:?}, mlx-lm {:?}",
                case.name, r["chat_tokens"]
            ));
        }
        failures.extend(compare(&case.name, tokens, logprobs, r, LOGPROB_TOLERANCE));
        let distinct: std::collections::BTreeSet<_> = tokens.iter().collect();
        if distinct.len() < 8 {
            failures.push(format!(
                "{}: degenerate generation ({} distinct tokens)",
                case.name,
                distinct.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Our greedy tokens and first-step log-probabilities against one mlx-lm result: what
/// differs (tokens, or log-probs by more than `tolerance`), printed either way.
fn compare(name: &str, tokens: &[u32], lp: &[f32], r: &Value, tolerance: f32) -> Vec<String> {
    let theirs = ids(&r["tokens"]);
    let ref_lp: Vec<f32> = r["first_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let max_diff = lp
        .iter()
        .zip(&ref_lp)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!(
        "{name}: tokens identical to mlx-lm's: {}, max |Δ logprob| = {max_diff:e}",
        theirs == tokens
    );
    let mut failures = Vec::new();
    if theirs != tokens {
        let at = tokens.iter().zip(&theirs).position(|(a, b)| a != b);
        failures.push(format!(
            "{name}: tokens differ at {at:?}:\n  ours   {tokens:?}\n  mlx-lm {theirs:?}"
        ));
    }
    if ref_lp.len() != lp.len() || max_diff > tolerance {
        failures.push(format!("{name}: first-step logprobs differ by {max_diff}"));
    }
    failures
}

/// Our greedy run of `dir`: the prompt ids, the tokens, the first step's log-probabilities
/// and the reported compute dtype.
fn greedy(dir: &Path, f32: bool) -> (Vec<u32>, Vec<u32>, Vec<f32>, String) {
    let mut engine = Engine::load(
        dir,
        &LoadOptions {
            prefill_chunk: PREFILL_CHUNK,
            f32,
            matmul_lanes: 0,
            kv_bits: None,
            prefix_cache: 0,
        },
        &mut Collect(vec![]),
    )
    .unwrap();
    let prompt = engine.prompt_ids(&Prompt::Text(PROMPT.into())).unwrap();
    let (tokens, lp) = generate(&mut engine, &prompt);
    (prompt, tokens, lp, engine.compute_dtype())
}

/// `MAX_TOKENS` greedy tokens from `prompt`, eos ignored, and the first step's
/// log-probabilities.
fn generate(engine: &mut Engine, prompt: &[u32]) -> (Vec<u32>, Vec<f32>) {
    let req = GenerateRequest {
        prompt: Prompt::Tokens(prompt.to_vec()),
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
    (hooks.0, engine.first_logprobs().unwrap().to_vec())
}

#[test]
fn f32_compute_matches_mlx_lm_on_the_f32_conversion() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for (k, arch) in ["llama", "mistral", "qwen2", "qwen3"]
        .into_iter()
        .enumerate()
    {
        for quant in [None, Some(4)] {
            let name = format!("{arch}-{}", if quant.is_some() { "q4" } else { "bf16" });
            let dir = tmp.path().join(&name);
            worker::make_model::make_model(&spec(&dir, arch, quant, 2000 + k as u64)).unwrap();
            cases.push(Case { name, dir });
        }
    }
    let mut ours = Vec::new();
    let mut jobs = Vec::new();
    for case in &cases {
        let (prompt, tokens, lp, dtype) = greedy(&case.dir, true);
        assert_eq!(dtype, "float32", "{}", case.name);
        jobs.push(json!({
            "model": case.dir, "prompt_text": PROMPT, "prompt_tokens": prompt,
            "max_tokens": MAX_TOKENS, "prefill_step": PREFILL_CHUNK, "f32": true,
        }));
        ours.push((tokens, lp));
    }
    let reference = run_python("mlx_lm_reference.py", &Value::Array(jobs));
    let mut failures = Vec::new();
    for ((case, (tokens, lp)), r) in cases.iter().zip(&ours).zip(&reference) {
        let name = format!("{} (f32)", case.name);
        failures.extend(compare(&name, tokens, lp, r, LOGPROB_TOLERANCE));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The quantized KV cache (`--kv-bits`, issue 12): mlx-lm's tokens with the same
/// setting (`kv_bits`, group 64, quantized from the first step), in bf16, 4-bit and f32
/// compute. Head size 64 (the KV quantization groups run along it).
#[test]
fn quantized_kv_cache_matches_mlx_lm() {
    let tmp = tempfile::tempdir().unwrap();
    let mut jobs = Vec::new();
    let mut ours = Vec::new();
    // The long prompt passes the cache's 256-position step: the quantized buffers grow.
    let long = [PROMPT; 7].join(" ");
    for (k, (arch, quant, f32, bits, text)) in [
        ("llama", None, false, 8u8, PROMPT),
        ("qwen3", None, false, 4, long.as_str()),
        ("qwen2", Some(4), false, 8, PROMPT),
        ("mistral", None, true, 8, PROMPT),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!(
            "{arch}-{}-kv{bits}{}",
            if quant.is_some() { "q4" } else { "bf16" },
            if f32 { "-f32" } else { "" }
        );
        let dir = tmp.path().join(&name);
        let mut s = spec(&dir, arch, quant, 4000 + k as u64);
        s.hidden = 256;
        worker::make_model::make_model(&s).unwrap();
        let mut engine = Engine::load(
            &dir,
            &LoadOptions {
                prefill_chunk: PREFILL_CHUNK,
                f32,
                matmul_lanes: 0,
                kv_bits: Some(bits),
                prefix_cache: 0,
            },
            &mut Collect(vec![]),
        )
        .unwrap();
        let prompt = engine.prompt_ids(&Prompt::Text(text.into())).unwrap();
        assert!(text == PROMPT || prompt.len() > 256, "{}", prompt.len());
        let (tokens, lp) = generate(&mut engine, &prompt);
        jobs.push(json!({
            "model": dir, "prompt_text": text, "prompt_tokens": prompt,
            "max_tokens": MAX_TOKENS, "prefill_step": PREFILL_CHUNK, "f32": f32,
            "kv_bits": bits,
        }));
        ours.push((name, tokens, lp));
    }
    let reference = run_python("mlx_lm_reference.py", &Value::Array(jobs));
    let mut failures = Vec::new();
    for ((name, tokens, lp), r) in ours.iter().zip(&reference) {
        // f32 compute multiplies by transposed weights (OpenBLAS without packing), a
        // different accumulation order than mlx-lm's f32 conversion (~1e-6, see the f32
        // test); the KV cache's rounding to 8 bits can turn that into one quantization
        // step of a key. Native dtypes run mlx-lm's exact kernels: exactly 0 there.
        let tolerance = if name.ends_with("-f32") {
            F32_KV_LOGPROB_TOLERANCE
        } else {
            LOGPROB_TOLERANCE
        };
        failures.extend(compare(name, tokens, lp, r, tolerance));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// See [`quantized_kv_cache_matches_mlx_lm`]: measured 0.035 on the mistral case.
const F32_KV_LOGPROB_TOLERANCE: f32 = 0.1;

/// Not a parity check but a measurement the issue asks for: how often the greedy tokens
/// of a 4-bit model computed in f32 (dequantized once) differ from the 4-bit run. Printed
/// (`--nocapture`); asserted only to be a real generation in both.
#[test]
fn dequantized_f32_against_the_quantized_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut same, mut total) = (0usize, 0usize);
    for (k, arch) in ["llama", "mistral", "qwen2", "qwen3"]
        .into_iter()
        .enumerate()
    {
        let dir = tmp.path().join(arch);
        worker::make_model::make_model(&spec(&dir, arch, Some(4), 3000 + k as u64)).unwrap();
        let (_, q, _, qd) = greedy(&dir, false);
        let (_, f, _, fd) = greedy(&dir, true);
        assert_eq!(qd, "bfloat16 (quantized)");
        assert_eq!(fd, "float32");
        assert_eq!(
            (q.len(), f.len()),
            (MAX_TOKENS as usize, MAX_TOKENS as usize)
        );
        let first = q.iter().zip(&f).position(|(a, b)| a != b);
        let n = q.iter().zip(&f).filter(|(a, b)| a == b).count();
        eprintln!(
            "{arch} 4-bit: f32-dequantized vs quantized greedy: {n}/{} positions equal, first difference at {first:?}",
            q.len()
        );
        same += n;
        total += q.len();
    }
    eprintln!("all: {same}/{total} positions equal");
}
