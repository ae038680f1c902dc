//! The worker's caches and the estimator's KV layout come from one layer plan (the
//! `model` crate's description): for every checkpoint of the corpus the worker runs, and
//! for real engines of the families with sliding windows, the caches the engine builds
//! are the layout the preflight plans — which layers slide, with which window, and the
//! KV heads and head size of each.

#![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

use estimate::kv_cache::{layer_layout, LayerKv};
use protocol::{ModelOptions, ModelSpec};

use super::cache::LayerCache;
use super::model::cache_windows;
use super::tests::mlx_lock;
use super::{config, Engine, Hooks, LoadOptions, ModelConfig};

struct Quiet;

impl Hooks for Quiet {
    fn before_step(
        &mut self,
        _: protocol::Phase,
        _: u32,
        _: u64,
    ) -> Result<(), protocol::WorkerError> {
        Ok(())
    }
    fn token(&mut self, _: u32, _: &str) {}
}

/// The estimator's layout as the engine's caches: the ring buffer's size of a sliding
/// layer, `None` for a growing cache; and the (KV heads, head size) of every layer.
fn planned(layers: &[LayerKv]) -> (Vec<Option<i32>>, Vec<(u64, u64)>) {
    layers
        .iter()
        .map(|l| match *l {
            LayerKv::Full { kv_heads, head_dim } => (None, (kv_heads, head_dim)),
            LayerKv::Sliding {
                kv_heads,
                head_dim,
                window,
            } => (Some(i32::try_from(window).unwrap()), (kv_heads, head_dim)),
            other => panic!("the worker has no cache for {other:?}"),
        })
        .unzip()
}

fn heads(cfg: &ModelConfig) -> Vec<(u64, u64)> {
    vec![(cfg.num_kv_heads as u64, cfg.head_dim as u64); cfg.num_layers]
}

#[test]
fn the_corpus_caches_are_the_estimators_layout() {
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../estimate/tests/fixtures/models");
    let mut checked = 0;
    let mut sliding = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("config.json").exists() {
            continue;
        }
        let (est, _) = estimate::config::Config::read(&dir).unwrap();
        if !est.description().worker_runs() {
            assert!(config::load(&dir).is_err(), "{}", dir.display());
            continue;
        }
        let cfg = config::load(&dir).unwrap_or_else(|e| panic!("{}: {}", dir.display(), e.message));
        let (windows, kv) = planned(&layer_layout(&est, &est.description().dims, 2));
        assert_eq!(cache_windows(&cfg), windows, "{}", dir.display());
        assert_eq!(heads(&cfg), kv, "{}", dir.display());
        checked += 1;
        sliding += usize::from(windows.iter().any(Option::is_some));
    }
    assert!(checked >= 40, "{checked}");
    // Mistral 7B v0.1, Gemma 3 4B and MedGemma 27B slide.
    assert_eq!(sliding, 3);
}

#[test]
fn real_engines_build_the_estimators_layout() {
    let _mlx = mlx_lock();
    let tmp = tempfile::tempdir().unwrap();
    for (i, (arch, window)) in [
        ("mistral", None),
        ("gemma3_text", Some(8)),
        ("gemma3", Some(8)),
        ("gemma2", Some(8)),
        ("llama", None),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tmp.path().join(format!("m{i}"));
        crate::make_model::make_model(&ModelSpec {
            dir: dir.display().to_string(),
            arch: arch.into(),
            hidden: 128,
            layers: 3,
            heads: 4,
            kv_heads: 2,
            intermediate: 320,
            vocab: 384,
            dtype: "bf16".into(),
            quant_bits: None,
            group_size: 64,
            seed: 1,
            options: ModelOptions {
                sliding_window: window,
                ..Default::default()
            },
        })
        .unwrap();
        let est = estimate::Model::open(&dir).unwrap();
        let engine = Engine::load(&dir, &LoadOptions::default(), &mut Quiet).unwrap();
        let caches: Vec<Option<i32>> = engine
            .model
            .make_cache()
            .iter()
            .map(|c| match c {
                LayerCache::Rotating(r) => Some(r.max_size()),
                _ => None,
            })
            .collect();
        let (windows, kv) = planned(&est.kv_layers);
        assert_eq!(caches, windows, "{arch}");
        assert_eq!(heads(engine.config()), kv, "{arch}");
        if arch.starts_with("gemma3") || arch == "mistral" {
            assert!(windows.iter().any(Option::is_some), "{arch}: {windows:?}");
        }
    }
}
