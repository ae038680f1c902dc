//! The Qwen2.5-VL foundation end to end (issue 16): `make-model --arch qwen2_5_vl` writes
//! a tiny deterministic random folder that the reference, mlx-vlm 0.7.6 in .venv-vlm, loads
//! and generates from with images made here (one and two, different sizes and aspects);
//! mlx-vlm's processor, configured from that folder, gives the pixel values and the image
//! token counts our `vision` crate gives.
use std::path::{Path, PathBuf};
use std::process::Command;

use image::{ImageBuffer, Rgb};
use mlxsup_tests::{mlxsup, repo};
use vision::{image_tokens, process_file, ProcessorConfig};

fn reference_python() -> Option<PathBuf> {
    let py = repo().join(".venv-vlm/bin/python");
    if py.exists() {
        return Some(py);
    }
    assert!(
        std::env::var_os("MLXSUP_SKIP_VLM").is_some(),
        "{} is missing: run scripts/setup.sh (or set MLXSUP_SKIP_VLM=1)",
        py.display()
    );
    eprintln!("skipped: MLXSUP_SKIP_VLM is set and .venv-vlm is missing");
    None
}

fn make(dir: &Path, extra: &[&str]) {
    let d = dir.to_str().expect("utf-8 path");
    let mut args = vec![
        "make-model",
        d,
        "--arch",
        "qwen2_5_vl",
        "--hidden",
        "128",
        "--layers",
        "2",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--intermediate",
        "256",
        "--vocab",
        "1024",
        "--seed",
        "3",
    ];
    args.extend_from_slice(extra);
    let r = mlxsup(&args);
    assert_eq!(r.code, Some(0), "make-model failed: {}", r.stderr);
}

fn png(path: &Path, w: u32, h: u32, seed: u32) {
    ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([0u32, 1, 2]
            .map(|c| ((x * (3 + c) + y * (5 + seed) + c * 70 + (x * y) % 17) % 256) as u8))
    })
    .save(path)
    .expect("write png");
}

#[test]
fn make_model_is_deterministic() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    make(&a.path().join("m"), &[]);
    make(&b.path().join("m"), &[]);
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "preprocessor_config.json",
    ] {
        let (x, y) = (
            std::fs::read(a.path().join("m").join(f)).expect("read"),
            std::fs::read(b.path().join("m").join(f)).expect("read"),
        );
        assert!(x == y, "{f} differs between two runs with the same seed");
    }
    // The estimator reads the folder as a Qwen2.5-VL with its vision tower.
    let model = estimate::Model::open(&a.path().join("m")).expect("estimate opens it");
    assert_eq!(model.architecture, "qwen2_5_vl");
    assert!(model.weights.vision_bytes > 0 && model.vision.and_then(|v| v.qwen).is_some());
}

#[test]
fn mlx_vlm_loads_and_runs_it_with_our_pixels() {
    let Some(py) = reference_python() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let images = [
        (tmp.path().join("wide_300x200.png"), 300, 200),
        (tmp.path().join("tall_97x160.png"), 97, 160),
    ];
    for (i, (p, w, h)) in images.iter().enumerate() {
        png(p, *w, *h, i as u32);
    }
    for (name, extra) in [("bf16", &[][..]), ("q4", &["--quant-bits", "4"][..])] {
        let dir = tmp.path().join(name);
        make(&dir, extra);
        let cfg = ProcessorConfig::from_model_dir(&dir).expect("preprocessor_config.json");
        for n in [1, 2] {
            let out = tmp.path().join(format!("{name}-{n}"));
            std::fs::create_dir(&out).expect("mkdir");
            let run = Command::new(&py)
                .arg(repo().join("tests/vlm_reference.py"))
                .args([
                    "generate".as_ref(),
                    dir.as_os_str(),
                    out.as_os_str(),
                    "16".as_ref(),
                ])
                .args(images[..n].iter().map(|i| &i.0))
                .output()
                .expect("run mlx-vlm");
            assert!(
                run.status.success(),
                "{name}, {n} image(s): mlx-vlm failed: {}",
                String::from_utf8_lossy(&run.stderr)
            );
            let r: serde_json::Value = serde_json::from_slice(&run.stdout).expect("json");
            let tokens = r["tokens"].as_array().map_or(0, Vec::len);
            assert!(tokens >= 16, "{name}: {tokens} tokens: {r}");
            // The prompt's image placeholders expand to exactly our token counts.
            let ours: u64 = images[..n]
                .iter()
                .map(|(_, w, h)| image_tokens(*h, *w, &cfg).expect("tokens").0)
                .sum();
            assert_eq!(
                r["image_tokens"],
                serde_json::json!(ours),
                "{name}, {n} image(s)"
            );
            // And its pixel values are ours, bit for bit (PNG), image after image.
            let theirs: Vec<f32> = std::fs::read(out.join("pixel_values.f32"))
                .expect("pixel values")
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let mut mine = Vec::new();
            let mut grids = Vec::new();
            for (p, _, _) in &images[..n] {
                let pv = process_file(p, &cfg).expect("process");
                grids.push(pv.grid_thw.to_vec());
                mine.extend(pv.data);
            }
            assert_eq!(r["image_grid_thw"], serde_json::json!(grids), "{name}");
            assert_eq!(mine.len(), theirs.len(), "{name}: pixel_values sizes");
            let differ = mine
                .iter()
                .zip(&theirs)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(
                differ, 0,
                "{name}, {n} image(s): {differ} pixel values differ"
            );
        }
    }
}
