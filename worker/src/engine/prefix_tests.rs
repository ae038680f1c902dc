//! The prefix cache in the engine: a later turn starts from the earlier turn's KV and
//! generates the same tokens as an engine without the cache; a sliding-window cache that
//! has wrapped is reused only whole; under memory pressure the cache is emptied before a
//! step is refused.

#![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

use std::path::Path;

use protocol::{
    DoneInfo, GenerateRequest, ModelOptions, ModelSpec, Phase, Prompt, Sampling, WorkerError,
    WorkerErrorKind,
};

use super::tests::mlx_lock;
use super::{Engine, GenerateOptions, Hooks, LoadOptions};

/// Records the tokens; refuses one step once, as the soft guard would.
#[derive(Default)]
struct Tokens {
    ids: Vec<u32>,
    refuse_once: Option<(Phase, u32)>,
    refused: u32,
}

impl Hooks for Tokens {
    fn before_step(&mut self, phase: Phase, step: u32, _: u64) -> Result<(), WorkerError> {
        if self.refuse_once == Some((phase, step)) {
            self.refuse_once = None;
            self.refused += 1;
            return Err(WorkerError {
                kind: WorkerErrorKind::MemoryBudgetExceeded,
                message: "over budget".into(),
            });
        }
        Ok(())
    }
    fn token(&mut self, id: u32, _: &str) {
        self.ids.push(id);
    }
}

fn make(dir: &Path, arch: &str, window: Option<u32>) {
    let spec = ModelSpec {
        dir: dir.display().to_string(),
        arch: arch.into(),
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
        options: ModelOptions {
            sliding_window: window,
            ..Default::default()
        },
    };
    crate::make_model::make_model(&spec).unwrap();
}

fn load(dir: &Path, prefix_cache: u64) -> Engine {
    Engine::load(
        dir,
        &LoadOptions {
            prefill_chunk: 4,
            prefix_cache,
            ..Default::default()
        },
        &mut Tokens::default(),
    )
    .unwrap()
}

/// Greedy, eos ignored: the generated ids and the done info.
fn run(engine: &mut Engine, prompt: &[u32], max: u32, hooks: &mut Tokens) -> (Vec<u32>, DoneInfo) {
    let req = GenerateRequest {
        prompt: Prompt::Tokens(prompt.to_vec()),
        max_tokens: max,
        sampling: Sampling::default(),
        stop: vec![],
        fault: None,
        images: Vec::new(),
    };
    let opts = GenerateOptions {
        ignore_eos: true,
        ..Default::default()
    };
    let done = engine.generate_with(&req, &opts, hooks).unwrap();
    (std::mem::take(&mut hooks.ids), done)
}

fn prompt(n: u32, salt: u32) -> Vec<u32> {
    (0..n).map(|i| (i * 37 + salt * 11 + 3) % 320).collect()
}

/// Turn 2 (turn 1, its answer, more) with the cache and without.
fn two_turns(dir: &Path, p1: &[u32]) -> (usize, Vec<u32>, Vec<u32>, Engine) {
    let mut cached = load(dir, 1 << 30);
    let mut plain = load(dir, 0);
    let mut h = Tokens::default();
    let (g1, d1) = run(&mut cached, p1, 8, &mut h);
    assert_eq!(d1.cached_tokens, 0);
    assert!(d1.prefix_cache_bytes > 0, "turn 1 is kept");
    assert_eq!(run(&mut plain, p1, 8, &mut h).0, g1, "turn 1");
    let mut p2 = p1.to_vec();
    p2.extend(&g1);
    p2.extend([5, 6, 7]);
    let (with, d2) = run(&mut cached, &p2, 8, &mut h);
    let (without, d0) = run(&mut plain, &p2, 8, &mut h);
    assert_eq!(d0.cached_tokens, 0, "the cache is off");
    assert_eq!(d0.prefix_cache_bytes, 0);
    (d2.cached_tokens as usize, with, without, cached)
}

#[test]
fn a_second_turn_starts_from_the_first_and_generates_the_same_tokens() {
    let _mlx = mlx_lock();
    let tmp = tempfile::tempdir().unwrap();
    make(tmp.path(), "qwen3", None);
    let p1 = prompt(30, 1);
    let (cached, with, without, mut engine) = two_turns(tmp.path(), &p1);
    // The KV holds the prompt and every generated token but the last (never fed back).
    assert_eq!(cached, p1.len() + 8 - 1);
    assert_eq!(with, without);
    // A prompt sharing only its first 12 tokens reuses those, rewound.
    let mut p3 = p1[..12].to_vec();
    p3.extend([1, 2, 3, 4]);
    let mut h = Tokens::default();
    let (ids, d3) = run(&mut engine, &p3, 6, &mut h);
    assert_eq!(d3.cached_tokens, 12);
    let mut plain = load(tmp.path(), 0);
    assert_eq!(ids, run(&mut plain, &p3, 6, &mut h).0);
    let stats = engine.prefix_cache().stats();
    assert_eq!((stats.lookups, stats.hits), (3, 2));
}

#[test]
fn a_wrapped_sliding_window_cache_is_reused_only_whole_and_never_wrongly() {
    let _mlx = mlx_lock();
    let tmp = tempfile::tempdir().unwrap();
    make(tmp.path(), "mistral", Some(8));
    // 20 prompt tokens and 8 generated: far past the window of 8.
    let p1 = prompt(20, 2);
    let (cached, with, without, mut engine) = two_turns(tmp.path(), &p1);
    // Turn 2 extends all of turn 1: nothing to rewind, so the ring is reused whole.
    assert_eq!(cached, p1.len() + 8 - 1);
    assert_eq!(with, without);
    // A prompt sharing only a part of it would need the wrapped ring rewound: not reused.
    let mut p3 = p1[..12].to_vec();
    p3.extend([1, 2, 3, 4]);
    let mut h = Tokens::default();
    let (ids, d3) = run(&mut engine, &p3, 6, &mut h);
    assert_eq!(d3.cached_tokens, 0);
    let mut plain = load(tmp.path(), 0);
    assert_eq!(ids, run(&mut plain, &p3, 6, &mut h).0);
}

#[test]
fn under_memory_pressure_the_cache_goes_before_the_step() {
    let _mlx = mlx_lock();
    let tmp = tempfile::tempdir().unwrap();
    make(tmp.path(), "qwen3", None);
    let mut engine = load(tmp.path(), 1 << 30);
    let p1 = prompt(16, 3);
    let mut h = Tokens::default();
    run(&mut engine, &p1, 4, &mut h);
    assert!(!engine.prefix_cache().is_empty());
    // The guard refuses the first decode step once: the cache is emptied and the step
    // asked again, which passes.
    h.refuse_once = Some((Phase::Decode, 1));
    let (ids, _) = run(&mut engine, &prompt(16, 4), 4, &mut h);
    assert_eq!((h.refused, ids.len()), (1, 4));
    // With nothing cached, the refusal stands.
    engine.prefix_cache_mut().clear();
    let mut off = load(tmp.path(), 0);
    h.refuse_once = Some((Phase::Decode, 1));
    let req = GenerateRequest {
        prompt: Prompt::Tokens(p1),
        max_tokens: 4,
        sampling: Sampling::default(),
        stop: vec![],
        fault: None,
        images: Vec::new(),
    };
    let err = off.generate(&req, &mut h).unwrap_err();
    assert_eq!(err.kind, WorkerErrorKind::MemoryBudgetExceeded);
}

#[test]
fn a_cache_smaller_than_an_entry_keeps_nothing() {
    let _mlx = mlx_lock();
    let tmp = tempfile::tempdir().unwrap();
    make(tmp.path(), "qwen3", None);
    let mut engine = load(tmp.path(), 1024);
    let p1 = prompt(16, 5);
    let mut h = Tokens::default();
    let (_, d) = run(&mut engine, &p1, 4, &mut h);
    assert_eq!(d.prefix_cache_bytes, 0);
    let (_, d) = run(&mut engine, &p1, 4, &mut h);
    assert_eq!(d.cached_tokens, 0);
}
