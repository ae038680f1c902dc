//! Qwen2.5-VL and Qwen2-VL generation against mlx-vlm 0.7.6's `stream_generate` (greedy, bf16) on a
//! tiny random `make_model` folder: a text-only prompt, one image and two images of
//! different sizes and aspects (PNGs made here), the same chat prompt (mlx-vlm's chat
//! template with its image parts) — 32 tokens identical, and the prompt's ids (image
//! tokens expanded) identical too. The reference runs with this process's OpenBLAS, as
//! in the tower's test.
#![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

use std::path::Path;
use std::process::Command;

use protocol::{ChatMessage, GenerateRequest, ModelSpec, Phase, Prompt, Sampling, WorkerError};
use vision::{process_file, ProcessorConfig};

use super::super::tests::mlx_lock;
use super::super::{Engine, GenerateOptions, Hooks, LoadOptions};
use super::tests::{have_reference, own_openblas, repo};

const QUESTION: &str = "Describe the picture.";
const TOKENS: usize = 32;

#[derive(Default)]
struct Tokens(Vec<u32>);

impl Hooks for Tokens {
    fn before_step(&mut self, _: Phase, _: u32, _: u64) -> Result<(), WorkerError> {
        Ok(())
    }
    fn token(&mut self, id: u32, _: &str) {
        self.0.push(id);
    }
}

fn png(path: &Path, w: u32, h: u32, seed: u32) {
    image::ImageBuffer::from_fn(w, h, |x, y| {
        image::Rgb(
            [0u32, 1, 2]
                .map(|c| ((x * (3 + c) + y * (5 + seed) + c * 70 + (x * y) % 17) % 256) as u8),
        )
    })
    .save(path)
    .unwrap();
}

/// mlx-vlm's prompt ids and greedy tokens.
fn reference(dir: &Path, out: &Path, images: &[&std::path::PathBuf]) -> (Vec<u32>, Vec<u32>) {
    let mut cmd = Command::new(repo().join(".venv-vlm/bin/python"));
    if let Some(blas) = own_openblas() {
        cmd.env("LD_PRELOAD", blas);
    }
    let run = cmd
        .env("VLM_QUESTION", QUESTION)
        .arg(repo().join("tests/vlm_reference.py"))
        .arg("generate")
        .arg(dir)
        .arg(out)
        .arg(TOKENS.to_string())
        .args(images)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "mlx-vlm: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let ids = |k: &str| -> Vec<u32> {
        r[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    (ids("input_ids"), ids("tokens"))
}

#[test]
fn qwen25_vl_generates_as_mlx_vlm() {
    generates_as_mlx_vlm("qwen2_5_vl");
}

#[test]
fn qwen2_vl_generates_as_mlx_vlm() {
    generates_as_mlx_vlm("qwen2_vl");
}

fn generates_as_mlx_vlm(arch: &str) {
    if !have_reference() {
        return;
    }
    let _mlx = mlx_lock();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    // Measured: this size and seed give varied greedy tokens that depend on the images
    // (smaller random folders repeat one token).
    let spec = ModelSpec {
        dir: dir.display().to_string(),
        arch: arch.into(),
        hidden: 128,
        layers: 4,
        heads: 4,
        kv_heads: 2,
        intermediate: 256,
        vocab: 1024,
        dtype: "bf16".into(),
        quant_bits: None,
        group_size: 64,
        seed: 7,
        options: Default::default(),
    };
    crate::make_model::make_model(&spec).unwrap();
    let wide = tmp.path().join("wide_300x200.png");
    let tall = tmp.path().join("tall_97x160.png");
    png(&wide, 300, 200, 0);
    png(&tall, 97, 160, 1);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();

    let mut engine = Engine::load(&dir, &LoadOptions::default(), &mut Tokens::default()).unwrap();
    let cfg = ProcessorConfig::from_model_dir(&dir).unwrap();
    let req = GenerateRequest {
        prompt: Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: QUESTION.into(),
        }]),
        max_tokens: TOKENS as u32,
        sampling: Sampling::default(),
        stop: vec![],
        fault: None,
        images: Vec::new(),
    };
    let opts = GenerateOptions {
        ignore_eos: true,
        ..Default::default()
    };
    let mut seen = Vec::new();
    for images in [&[][..], &[&wide][..], &[&wide, &tall][..]] {
        let (their_ids, theirs) = reference(&dir, &out, images);
        let pixels: Vec<(usize, vision::PixelValues)> = images
            .iter()
            .map(|p| (0, process_file(p, &cfg).unwrap()))
            .collect();
        let mut ours = Tokens::default();
        if pixels.is_empty() {
            engine.generate_with(&req, &opts, &mut ours).unwrap();
        } else {
            let (ids, _, _) = engine.prepare_images(&req.prompt, &pixels).unwrap();
            assert_eq!(ids, their_ids, "{} image(s): the prompt ids", images.len());
            engine
                .generate_images(&req, &pixels, &opts, &mut ours)
                .unwrap();
        }
        eprintln!("{arch}, {} image(s): {:?}", images.len(), ours.0);
        assert_eq!(
            ours.0,
            theirs[..TOKENS],
            "{arch}, {} image(s): greedy tokens differ from mlx-vlm's",
            images.len()
        );
        seen.push(ours.0);
    }
    assert!(
        seen[0] != seen[1] && seen[1] != seen[2],
        "the images change nothing: the test proves nothing"
    );
}
