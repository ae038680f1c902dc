//! The soft guard and the preflight predict with one activation model: the worker's
//! prediction before a prefill chunk, recorded through `Hooks::before_step` on a real
//! engine, equals the `estimate` crate's activation for that chunk and context (plus the
//! KV growth only the engine knows), for every family and dtype, built-in and custom
//! coefficients alike.

#![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

use protocol::{GenerateRequest, ModelSpec, Phase, Prompt, Sampling, WorkerError};

use super::tests::mlx_lock;
use super::{memory, Engine, Hooks, LoadOptions};

#[derive(Default)]
struct Steps(Vec<(Phase, u32, u64)>);

impl Hooks for Steps {
    fn before_step(&mut self, phase: Phase, step: u32, predicted: u64) -> Result<(), WorkerError> {
        self.0.push((phase, step, predicted));
        Ok(())
    }
    fn token(&mut self, _: u32, _: &str) {}
}

fn custom() -> estimate::ActivationModel {
    estimate::ActivationModel {
        half: estimate::Coefficients {
            score_bytes: 7.25,
            mlp_bytes: 33.0,
            mask_bytes: 1.5,
            overhead_bytes: 1e6,
        },
        full: estimate::Coefficients {
            score_bytes: 9.5,
            mlp_bytes: 41.0,
            mask_bytes: 2.5,
            overhead_bytes: 2e6,
        },
        vision: estimate::vision_activation::VisionModel {
            half: estimate::vision_activation::VisionCoefficients {
                score_bytes: 5.5,
                width_bytes: 30.0,
                mlp_bytes: 6.0,
                full_width_bytes: 9.0,
                pixel_bytes: 20.0,
            },
            full: estimate::vision_activation::VisionCoefficients {
                score_bytes: 6.5,
                width_bytes: 35.0,
                mlp_bytes: 7.0,
                full_width_bytes: 11.0,
                pixel_bytes: 21.0,
            },
        },
    }
}

#[test]
fn the_soft_guard_predicts_what_the_preflight_estimates() {
    let _mlx = mlx_lock();
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("llama", "bf16", None, false),
        ("mistral", "f32", None, false),
        ("qwen2", "bf16", Some(4), true),
        ("qwen3", "bf16", None, true),
        ("qwen3", "f32", Some(8), false),
        ("gemma2", "bf16", None, false),
        ("phi3", "bf16", Some(4), false),
        ("mixtral", "f32", None, false),
    ];
    for (i, (arch, dtype, quant_bits, f32)) in cases.into_iter().enumerate() {
        let dir = tmp.path().join(format!("m{i}"));
        crate::make_model::make_model(&ModelSpec {
            dir: dir.display().to_string(),
            arch: arch.into(),
            hidden: 128,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 320,
            vocab: 384,
            dtype: dtype.into(),
            quant_bits,
            group_size: 64,
            seed: 1,
            options: Default::default(),
        })
        .unwrap();
        let est_model = estimate::Model::open(&dir).unwrap();
        let chunk = 24u64;
        let prompt: Vec<u32> = (0..2 * chunk as u32 + 3).map(|t| 3 + t % 300).collect();
        for model in [estimate::activation::BUILTIN, custom()] {
            let mut engine = Engine::load(
                &dir,
                &LoadOptions {
                    prefill_chunk: chunk as usize,
                    f32,
                    ..Default::default()
                },
                &mut Steps::default(),
            )
            .unwrap();
            engine.set_activation_model(model);
            assert_eq!(
                memory::activation_dims(engine.config()),
                est_model.activation,
                "{arch}: the worker and the preflight read different dimensions"
            );
            let mut steps = Steps::default();
            engine
                .generate(
                    &GenerateRequest {
                        prompt: Prompt::Tokens(prompt.clone()),
                        max_tokens: 1,
                        sampling: Sampling::default(),
                        stop: vec![],
                        fault: None,
                        images: Vec::new(),
                    },
                    &mut steps,
                )
                .unwrap();
            let mut caches = engine.model.make_cache();
            let elem = if f32 || dtype == "f32" { 4 } else { 2 };
            // Chunk k attends to (k + 1) × chunk positions, as the preflight's chunk at
            // context does; the KV growth is the engine's own.
            for k in 0..2u64 {
                let context = (k + 1) * chunk;
                let preflight = estimate::estimate(
                    &est_model,
                    &estimate::Request {
                        context: Some(context),
                        prefill_chunk: chunk,
                        compute_f32: f32,
                        calibration: estimate::Calibration {
                            model,
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                );
                assert_eq!(preflight.activation_elem_bytes, elem, "{arch} {dtype}");
                let recorded = steps
                    .0
                    .iter()
                    .find(|s| s.0 == Phase::Prefill && s.1 == k as u32)
                    .unwrap()
                    .2;
                if k == 1 {
                    // The caches as the engine had them before chunk 1: chunk 0 prefilled.
                    let ids: Vec<i32> =
                        prompt[..chunk as usize].iter().map(|&t| t as i32).collect();
                    let input = mlx_rs::Array::from_slice(&ids, &[1, chunk as i32]);
                    engine.model.hidden(&input, &mut caches).unwrap();
                    mlx_rs::transforms::eval(caches.iter().flat_map(|c| c.state())).unwrap();
                }
                let kv = memory::kv_growth_bytes(engine.config(), &caches, elem, chunk as i32);
                assert_eq!(
                    recorded,
                    kv + preflight.activation.bytes,
                    "{arch} {dtype} f32={f32} chunk {k}: the guard and the preflight disagree"
                );
                assert!(kv < recorded, "{arch}: chunk {k} predicted no activations");
            }
        }
    }
}
