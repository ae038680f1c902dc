//! Engine-level tests on a tiny `make_model` folder: refusals, stop sequences, eos,
//! sampling with a seed, chat prompts and load errors.

#![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use protocol::{
    ChatMessage, DoneInfo, FinishReason, GenerateRequest, ModelSpec, Phase, Prompt, Sampling,
    WorkerError, WorkerErrorKind,
};

use super::{Engine, GenerateOptions, Hooks, LoadOptions};

static MLX: Mutex<()> = Mutex::new(());

/// Serializes tests that run MLX (one computation at a time, as in the worker).
pub(crate) fn mlx_lock() -> MutexGuard<'static, ()> {
    MLX.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct Record {
    tokens: Vec<(u32, String)>,
    steps: Vec<(Phase, u32, u64)>,
    refuse_at: Option<(Phase, u32)>,
}

impl Hooks for Record {
    fn before_step(&mut self, phase: Phase, step: u32, predicted: u64) -> Result<(), WorkerError> {
        self.steps.push((phase, step, predicted));
        if self.refuse_at == Some((phase, step)) {
            return Err(WorkerError {
                kind: WorkerErrorKind::MemoryBudgetExceeded,
                message: "over budget".into(),
            });
        }
        Ok(())
    }
    fn token(&mut self, id: u32, text: &str) {
        self.tokens.push((id, text.to_string()));
    }
}

fn tiny(dir: &Path) -> Engine {
    let spec = ModelSpec {
        dir: dir.display().to_string(),
        arch: "qwen3".into(),
        hidden: 64,
        layers: 2,
        heads: 2,
        kv_heads: 1,
        intermediate: 128,
        vocab: 320,
        dtype: "f32".into(),
        quant_bits: None,
        group_size: 64,
        seed: 3,
        options: Default::default(),
    };
    crate::make_model::make_model(&spec).unwrap();
    Engine::load(
        dir,
        &LoadOptions {
            prefill_chunk: 4,
            f32: false,
            matmul_lanes: 0,
            kv_bits: None,
            prefix_cache: 0,
        },
        &mut Record::default(),
    )
    .unwrap()
}

/// Generates with eos ignored, recording into `rec`; a test failure on any error.
fn generate_free(engine: &mut Engine, req: &GenerateRequest, rec: &mut Record) -> DoneInfo {
    engine
        .generate_with(
            req,
            &GenerateOptions {
                ignore_eos: true,
                ..Default::default()
            },
            rec,
        )
        .unwrap()
}

fn request(prompt: Prompt, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        prompt,
        max_tokens,
        sampling: Sampling::default(),
        stop: vec![],
        fault: None,
        images: Vec::new(),
    }
}

#[test]
fn refused_step_fails_cleanly_and_the_engine_serves_the_next_request() {
    let _mlx = mlx_lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut engine = tiny(tmp.path());
    let req = request(Prompt::Text("Hello, world! How are you today?".into()), 6);
    let mut refused = Record {
        refuse_at: Some((Phase::Decode, 3)),
        ..Record::default()
    };
    let err = engine
        .generate_with(
            &req,
            &GenerateOptions {
                ignore_eos: true,
                ..Default::default()
            },
            &mut refused,
        )
        .unwrap_err();
    assert_eq!(err.kind, WorkerErrorKind::MemoryBudgetExceeded);
    assert_eq!(
        refused.tokens.len(),
        2,
        "the tokens before the refused step are streamed"
    );
    // Prefill chunks of 4 over all but the last prompt token, then decode steps from 1.
    let prefill: Vec<u32> = refused
        .steps
        .iter()
        .filter(|s| s.0 == Phase::Prefill)
        .map(|s| s.1)
        .collect();
    assert!(prefill.len() >= 2 && prefill.iter().enumerate().all(|(i, s)| *s == i as u32));
    assert!(
        refused.steps.iter().all(|s| s.2 > 0),
        "every step predicts some growth"
    );

    let mut ok = Record::default();
    let done = generate_free(&mut engine, &req, &mut ok);
    assert_eq!(done.generated_tokens, 6);
    assert_eq!(done.finish, FinishReason::Length);
    assert_eq!(
        &ok.tokens[..2],
        &refused.tokens[..],
        "greedy is reproducible"
    );
    let text: String = ok.tokens.iter().map(|t| t.1.as_str()).collect();
    let ids: Vec<u32> = ok.tokens.iter().map(|t| t.0).collect();
    assert_eq!(text, engine.tokenizer().decode(&ids));
}

#[test]
fn stop_sequences_end_generation_without_their_text() {
    let _mlx = mlx_lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut engine = tiny(tmp.path());
    let prompt = Prompt::Text("The quick brown fox".into());
    let mut free = Record::default();
    generate_free(&mut engine, &request(prompt.clone(), 12), &mut free);
    let text: String = free.tokens.iter().map(|t| t.1.as_str()).collect();
    // Stop on a piece of what the model will say anyway.
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 4, "{text:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let mut req = request(prompt, 12);
    req.stop = vec![stop.clone()];
    let mut stopped = Record::default();
    let done = generate_free(&mut engine, &req, &mut stopped);
    assert_eq!(done.finish, FinishReason::Stop);
    let got: String = stopped.tokens.iter().map(|t| t.1.as_str()).collect();
    assert_eq!(got, text[..text.find(&stop).unwrap()]);
}

#[test]
fn eos_ends_generation_and_is_not_streamed() {
    let _mlx = mlx_lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut engine = tiny(tmp.path());
    let prompt = Prompt::Text("Hello".into());
    let mut free = Record::default();
    generate_free(&mut engine, &request(prompt.clone(), 8), &mut free);
    // Make the 4th generated token an end-of-sequence token.
    let eos = free.tokens[3].0;
    engine.model.cfg.eos_token_ids = vec![eos];
    let first = free.tokens.iter().position(|t| t.0 == eos).unwrap();
    let mut rec = Record::default();
    let done = engine.generate(&request(prompt, 8), &mut rec).unwrap();
    assert_eq!(done.finish, FinishReason::Eos);
    assert_eq!(done.generated_tokens as usize, first);
    assert!(rec.tokens.iter().all(|t| t.0 != eos || !t.1.is_empty()));
}

#[test]
fn seeded_sampling_reproduces_and_chat_prompts_render() {
    let _mlx = mlx_lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut engine = tiny(tmp.path());
    let chat = Prompt::Chat(vec![ChatMessage {
        role: "user".into(),
        content: "hi".into(),
    }]);
    let ids = engine.prompt_ids(&chat).unwrap();
    let start = engine.tokenizer().token_id("<|im_start|>").unwrap();
    assert_eq!(ids[0], start);
    let mut req = request(chat, 10);
    req.sampling = Sampling {
        temperature: 0.9,
        top_p: 0.95,
        seed: Some(42),
    };
    let opts = GenerateOptions {
        ignore_eos: true,
        ..Default::default()
    };
    let run = |engine: &mut Engine, req: &GenerateRequest| {
        let mut r = Record::default();
        engine.generate_with(req, &opts, &mut r).unwrap();
        r.tokens.into_iter().map(|t| t.0).collect::<Vec<_>>()
    };
    let a = run(&mut engine, &req);
    assert_eq!(a, run(&mut engine, &req));
    req.sampling.seed = Some(43);
    assert_ne!(a, run(&mut engine, &req));
}

#[test]
fn load_errors_are_structured() {
    let _mlx = mlx_lock();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"model_type": "gpt2", "hidden_size": 8}"#,
    )
    .unwrap();
    let err = Engine::load(
        tmp.path(),
        &LoadOptions {
            prefill_chunk: 8,
            f32: false,
            matmul_lanes: 0,
            kv_bits: None,
            prefix_cache: 0,
        },
        &mut Record::default(),
    )
    .err()
    .unwrap();
    assert_eq!(err.kind, WorkerErrorKind::LoadFailed);
    assert!(
        err.message.contains("gpt2") && err.message.contains("qwen3"),
        "{}",
        err.message
    );

    let tmp = tempfile::tempdir().unwrap();
    let _ = tiny(tmp.path());
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let err = Engine::load(
        tmp.path(),
        &LoadOptions {
            prefill_chunk: 8,
            f32: false,
            matmul_lanes: 0,
            kv_bits: None,
            prefix_cache: 0,
        },
        &mut Record::default(),
    )
    .err()
    .unwrap();
    assert_eq!(err.kind, WorkerErrorKind::LoadFailed);
    assert!(err.message.contains("safetensors"), "{}", err.message);
}

#[test]
fn make_model_is_deterministic() {
    let _mlx = mlx_lock();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [a.path(), b.path()] {
        let spec = ModelSpec {
            dir: dir.display().to_string(),
            arch: "llama".into(),
            hidden: 64,
            layers: 1,
            heads: 2,
            kv_heads: 2,
            intermediate: 128,
            vocab: 300,
            dtype: "bf16".into(),
            quant_bits: Some(4),
            group_size: 32,
            seed: 9,
            options: Default::default(),
        };
        crate::make_model::make_model(&spec).unwrap();
    }
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert_eq!(
            std::fs::read(a.path().join(f)).unwrap(),
            std::fs::read(b.path().join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn sharded_weights_load_like_a_single_file() {
    let _mlx = mlx_lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut single = tiny(tmp.path());
    let req = request(Prompt::Text("Hello there".into()), 5);
    let opts = GenerateOptions {
        ignore_eos: true,
        ..Default::default()
    };
    let mut a = Record::default();
    single.generate_with(&req, &opts, &mut a).unwrap();
    drop(single);

    let file = tmp.path().join("model.safetensors");
    let all = mlx_rs::Array::load_safetensors(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (k, part) in [first, second].iter().enumerate() {
        let shard = format!("model-0000{}-of-00002.safetensors", k + 1);
        let arrays: Vec<(&String, &mlx_rs::Array)> = part.iter().map(|n| (*n, &all[*n])).collect();
        mlx_rs::Array::save_safetensors(arrays, None, tmp.path().join(&shard)).unwrap();
        for n in part.iter() {
            map.insert((*n).clone(), serde_json::json!(shard));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let mut sharded = Engine::load(
        tmp.path(),
        &LoadOptions {
            prefill_chunk: 4,
            f32: false,
            matmul_lanes: 0,
            kv_bits: None,
            prefix_cache: 0,
        },
        &mut Record::default(),
    )
    .unwrap();
    let mut b = Record::default();
    sharded.generate_with(&req, &opts, &mut b).unwrap();
    assert_eq!(a.tokens, b.tokens);
}

/// MiMo's multi-token-prediction layers are never read (mlx-lm drops them): a folder
/// with them loads, and the store the engine opens holds none of them.
#[test]
fn mimo_mtp_layers_are_not_read() {
    let _mlx = mlx_lock();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = ModelSpec {
        dir: dir.display().to_string(),
        arch: "mimo".into(),
        hidden: 64,
        layers: 2,
        heads: 2,
        kv_heads: 1,
        intermediate: 128,
        vocab: 320,
        dtype: "f32".into(),
        quant_bits: None,
        group_size: 64,
        seed: 5,
        options: Default::default(),
    };
    crate::make_model::make_model(&spec).unwrap();
    let mtp = "model.mtp_layers.0.input_proj.weight";
    let w = mlx_rs::ops::zeros::<f32>(&[64, 128]).unwrap();
    mlx_rs::Array::save_safetensors([(mtp, &w)], None, dir.join("model-mtp.safetensors")).unwrap();
    let cfg = super::config::load(dir).unwrap();
    assert_eq!(cfg.skip_weights, vec!["model.mtp_layers.".to_string()]);
    let open = |skip: &[String]| {
        super::weights::WeightStore::open_keeping(
            dir,
            false,
            None,
            None,
            None,
            skip,
            &mut |_, _| {},
        )
        .unwrap()
    };
    assert!(open(&[]).has(mtp), "the shard is read without the skip");
    let store = open(&cfg.skip_weights);
    assert!(!store.has(mtp));
    assert!(store.has("model.layers.0.self_attn.q_proj.bias"));
    drop(store);
    let engine = Engine::load(dir, &LoadOptions::default(), &mut Record::default()).unwrap();
    assert_eq!(engine.compute_dtype(), "float32");
}
