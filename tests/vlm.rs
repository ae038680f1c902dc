//! The Qwen2.5-VL foundation end to end (issue 16): `make-model --arch qwen2_5_vl` writes
//! a tiny deterministic random folder that the reference, mlx-vlm 0.7.6 in .venv-vlm, loads
//! and generates from with images made here (one and two, different sizes and aspects);
//! mlx-vlm's processor, configured from that folder, gives the pixel values and the image
//! token counts our `vision` crate gives; and `mlxsup run MODEL --image FILE…` gives
//! mlx-vlm's greedy tokens, and refuses hostile image files with exit code 2 and a
//! message naming the file.
use std::path::{Path, PathBuf};
use std::process::Command;

use image::{ImageBuffer, Rgb};
use mlxsup_tests::{bin, mlxsup, mlxsup_env, repo};
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
    make_with(dir, "qwen2_5_vl", "2", "3", extra);
}

fn make_with(dir: &Path, arch: &str, layers: &str, seed: &str, extra: &[&str]) {
    let d = dir.to_str().expect("utf-8 path");
    let mut args = vec![
        "make-model",
        d,
        "--arch",
        arch,
        "--hidden",
        "128",
        "--layers",
        layers,
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--intermediate",
        "256",
        "--vocab",
        "1024",
        "--seed",
        seed,
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

/// The OpenBLAS the worker maps (Linux: from `ldd`), for the reference: the two BLAS
/// libraries sum in different orders, which moves bf16 results by an ulp (see
/// worker/src/engine/vision/tests.rs).
fn worker_openblas() -> Option<String> {
    let out = Command::new("ldd")
        .arg(bin("mlxsup-worker"))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("libopenblas"))
        .and_then(|l| l.split("=>").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_string)
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
        .unwrap_or_default()
}

#[test]
fn run_with_images_gives_mlx_vlm_tokens() {
    run_with_images_as_mlx_vlm("qwen2_5_vl", &[]);
}

#[test]
fn run_with_images_gives_mlx_vlm_tokens_4bit() {
    // 4-bit language weights, the tower in bf16 (as mlx-community ships them).
    run_with_images_as_mlx_vlm("qwen2_5_vl", &["--quant-bits", "4"]);
}

/// The Hugging Face layout (`visual.*`, `model.*`, a channels-first patch embedding), as
/// the original checkpoints ship: mlx-vlm converts it at load, the worker too.
#[test]
fn run_with_images_gives_mlx_vlm_tokens_hf_layout() {
    run_with_images_as_mlx_vlm("qwen2_5_vl", &["--hf-layout"]);
}

#[test]
fn run_with_images_gives_mlx_vlm_tokens_qwen2_vl_hf_layout() {
    run_with_images_as_mlx_vlm("qwen2_vl", &["--hf-layout"]);
}

#[test]
fn run_with_images_gives_mlx_vlm_tokens_qwen2_vl() {
    run_with_images_as_mlx_vlm("qwen2_vl", &[]);
}

fn run_with_images_as_mlx_vlm(arch: &str, extra: &[&str]) {
    let Some(py) = reference_python() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("m");
    // A size and seed whose greedy tokens vary and depend on the images (measured).
    make_with(&dir, arch, "4", "7", extra);
    let wide = tmp.path().join("wide_300x200.png");
    let tall = tmp.path().join("tall_97x160.png");
    png(&wide, 300, 200, 0);
    png(&tall, 97, 160, 1);
    let question = "Describe the picture.";
    let d = dir.to_str().expect("utf-8");
    let mut seen = Vec::new();
    for images in [&[&wide][..], &[&wide, &tall][..]] {
        let out = tmp.path().join(format!("ref-{}", images.len()));
        std::fs::create_dir(&out).expect("mkdir");
        let mut cmd = Command::new(&py);
        if let Some(blas) = worker_openblas() {
            cmd.env("LD_PRELOAD", blas);
        }
        let reference = cmd
            .env("VLM_QUESTION", question)
            .arg(repo().join("tests/vlm_reference.py"))
            .args([
                "generate".as_ref(),
                dir.as_os_str(),
                out.as_os_str(),
                "32".as_ref(),
            ])
            .args(images)
            .output()
            .expect("run mlx-vlm");
        assert!(
            reference.status.success(),
            "mlx-vlm: {}",
            String::from_utf8_lossy(&reference.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&reference.stdout).expect("json");
        let theirs = ids(&r["tokens"]);
        let mut args = vec![
            "run",
            d,
            "--prompt",
            question,
            "--max-tokens",
            "32",
            "--compute",
            "native",
            "--json",
        ];
        for i in images {
            args.extend(["--image", i.to_str().expect("utf-8")]);
        }
        let run = mlxsup(&args);
        assert_eq!(run.code, Some(0), "run --image: {}", run.stderr);
        let ours: Vec<u64> = run
            .named("token")
            .iter()
            .filter_map(|e| e["id"].as_u64())
            .collect();
        assert_eq!(ours, theirs[..32], "{arch}, {} image(s)", images.len());
        // The preflight planned the images (the largest at its processed size).
        let est = run.named("estimate");
        let vision = &est.first().expect("an estimate event")["vision"];
        assert_eq!(
            vision["images"],
            serde_json::json!(images.len()),
            "{vision}"
        );
        assert_eq!(vision["image"]["resized_width"], 308, "{vision}");
        seen.push(ours);
    }
    assert_ne!(seen[0], seen[1], "the second image changes nothing");
}

/// A run with images reports what its vision tower used (the `vision` event: per-image
/// patches, the tower's own MLX peak, the vision term predicted for it), the estimate plans
/// the larger of the tower and the text's prefill, and the run is recorded in the
/// calibration store with its tower — which the next estimate's vision term is refit from.
#[test]
fn a_run_with_images_reports_its_tower_and_calibrates_the_vision_term() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("m");
    make(&dir, &[]);
    let (a, b) = (tmp.path().join("a.png"), tmp.path().join("b.png"));
    png(&a, 300, 200, 0);
    png(&b, 97, 160, 1);
    let store = tmp.path().join("store.json");
    let env = [("MLXSUP_CALIBRATION", store.to_str().expect("utf-8"))];
    let d = dir.to_str().expect("utf-8");
    let run = |extra: &[&str]| {
        let mut args = vec![
            d,
            "--prompt",
            "What is this?",
            "--max-tokens",
            "2",
            "--json",
        ];
        args.extend_from_slice(extra);
        let r = mlxsup_env(&[&["run"][..], &args].concat(), &env);
        assert_eq!(r.code, Some(0), "run: {}", r.stderr);
        r
    };
    let images = [
        "--image",
        a.to_str().expect("utf-8"),
        "--image",
        b.to_str().expect("utf-8"),
    ];
    let first = run(&images);
    let v = first.named("vision");
    let v = v.first().expect("a vision event");
    // 300×200 → 308×196 (22×14 patches), 97×160 → 84×168 (6×12).
    assert_eq!(v["patches"], serde_json::json!([308, 72]), "{v}");
    let measured = v["activation_bytes"].as_u64().expect("activation_bytes");
    // At least the f32 pixel values themselves (380 patches × 1176 values × 4 bytes).
    assert!(measured >= 380 * 1176 * 4, "{v}");
    let predicted = v["predicted_bytes"].as_u64().expect("predicted_bytes");
    let est = first.named("estimate");
    let vision = &est.first().expect("an estimate")["vision"];
    assert!(
        ["vision_tower", "prefill"].contains(&vision["peak_phase"].as_str().unwrap_or("")),
        "{vision}"
    );
    // The store holds the run with its tower.
    let text = std::fs::read_to_string(&store).expect("the store");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    let records = doc["records"].as_array().expect("records");
    let tower = &records.last().expect("a record")["vision"];
    assert_eq!(tower["patches"], serde_json::json!([308, 72]), "{tower}");
    assert_eq!(tower["measured_bytes"].as_u64(), Some(measured), "{tower}");
    assert_eq!(
        tower["predicted_bytes"].as_u64(),
        Some(predicted),
        "{tower}"
    );
    // The next run's vision term is this machine's: scaled to the measured tower.
    let second = run(&images);
    let v2 = second.named("vision");
    let p2 = v2.first().expect("a vision event")["predicted_bytes"]
        .as_u64()
        .expect("predicted");
    let (was, now) = (
        (predicted as f64 - measured as f64).abs(),
        (p2 as f64 - measured as f64).abs(),
    );
    assert!(
        now < was || was < measured as f64 * 0.01,
        "refit {p2} no nearer the measured {measured} than {predicted}"
    );
    let e2 = second.named("estimate");
    assert_eq!(e2[0]["calibration_source"], "machine", "{}", e2[0]);
}

/// A forced run whose vision tower would pass the worker's budget is refused by the soft
/// guard before the tower allocates, with advice about the images, not the context.
#[test]
fn a_tower_over_the_budget_is_refused_before_it_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("m");
    make(&dir, &[]);
    let a = tmp.path().join("a.png");
    png(&a, 640, 480, 0);
    let r = mlxsup(&[
        "run",
        dir.to_str().expect("utf-8"),
        "--image",
        a.to_str().expect("utf-8"),
        "--prompt",
        "What is this?",
        "--max-tokens",
        "2",
        "--budget",
        "12MiB",
        "--memory-ceiling",
        "2GiB",
        "--force",
        "--json",
    ]);
    let f = r.named("failure");
    let f = f
        .first()
        .unwrap_or_else(|| panic!("no failure: {}", r.stderr));
    assert_eq!(f["kind"], "memory_budget_exceeded", "{f}");
    assert_eq!(f["phase"], "prefill", "{f}");
    // The tower is named by a field of the failure, and the advice follows it.
    assert_eq!(f["stage"], "vision_tower", "{f}");
    let advice = f["advice"].as_str().unwrap_or("");
    assert!(advice.contains("fewer or smaller images"), "{advice}");
    assert!(r.named("vision").is_empty(), "the tower ran: {}", r.stdout);
    // Well under the tower's need: it never allocated.
    let peak = f["peak_bytes"].as_u64().unwrap_or(u64::MAX);
    assert!(peak < 12 << 20, "{f}");
}

/// `calibrate --image-sizes` runs the tower on one generated image per size, records each
/// with its tower and reports the vision term before and after the refit; a model
/// without a tower is a usage error.
#[test]
fn calibrate_measures_the_tower_per_image_size() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("m");
    make(&dir, &[]);
    let store = tmp.path().join("store.json");
    let env = [("MLXSUP_CALIBRATION", store.to_str().expect("utf-8"))];
    let d = dir.to_str().expect("utf-8");
    let r = mlxsup_env(
        &[
            "calibrate",
            d,
            "--contexts",
            "128",
            "--image-sizes",
            "448x448,300x200",
            "--json",
        ],
        &env,
    );
    assert_eq!(r.code, Some(0), "calibrate: {}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).expect("one JSON object");
    let towers = report["towers"].as_array().expect("towers");
    assert_eq!(towers.len(), 2, "{report}");
    assert_eq!(towers[0]["patches"], 1024, "{report}");
    assert_eq!(
        (towers[1]["width"].clone(), towers[1]["height"].clone()),
        (308.into(), 196.into())
    );
    for t in towers {
        assert!(t["measured_bytes"].as_u64().unwrap_or(0) > 0, "{t}");
        assert!(t["predicted_after"].as_u64().unwrap_or(0) > 0, "{t}");
    }
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&store).expect("store")).expect("json");
    let with_tower = doc["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["vision"].is_object())
        .count();
    assert_eq!(with_tower, 2, "{doc}");
    // A text model has no tower to measure.
    let text = mlxsup_tests::tiny_model();
    let r = mlxsup_env(
        &[
            "calibrate",
            text.to_str().expect("utf-8"),
            "--contexts",
            "64",
            "--image-sizes",
            "448x448",
        ],
        &env,
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("has no vision tower"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("MLX peak"),
        "the ladder ran first: {}",
        r.stderr
    );
}

#[test]
fn hostile_images_exit_2_naming_the_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("m");
    make(&dir, &[]);
    let good = tmp.path().join("good.png");
    png(&good, 64, 48, 0);
    let bytes = std::fs::read(&good).expect("read");
    let truncated = tmp.path().join("truncated.png");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    // A valid PNG whose header claims 30000x30000 (IHDR rewritten, CRC fixed).
    let mut huge = bytes.clone();
    huge[16..20].copy_from_slice(&30000u32.to_be_bytes());
    huge[20..24].copy_from_slice(&30000u32.to_be_bytes());
    let crc = crc32(&huge[12..29]);
    huge[29..33].copy_from_slice(&crc.to_be_bytes());
    let huge_path = tmp.path().join("huge.png");
    std::fs::write(&huge_path, &huge).expect("write");
    let text = tmp.path().join("notes.png");
    std::fs::write(&text, "these are not pixels\n").expect("write");
    let d = dir.to_str().expect("utf-8");
    for (path, says) in [
        (&truncated, "truncated.png"),
        (&huge_path, "30000x30000"),
        (&text, "not a PNG or JPEG"),
        (&tmp.path().join("missing.png"), "missing.png"),
    ] {
        let p = path.to_str().expect("utf-8");
        // A good image first: the bad one is named, not just "an image".
        let run = mlxsup(&[
            "run",
            d,
            "--image",
            good.to_str().expect("utf-8"),
            "--image",
            p,
        ]);
        assert_eq!(run.code, Some(2), "{p}: {}", run.stderr);
        assert!(
            run.stderr.contains(says) && run.stderr.contains(p) && !run.stderr.contains("panicked"),
            "{p}: {}",
            run.stderr
        );
    }
    // Images for a text-only model: a usage error naming the model.
    let text_model = mlxsup_tests::tiny_model();
    let run = mlxsup(&[
        "run",
        text_model.to_str().expect("utf-8"),
        "--image",
        good.to_str().expect("utf-8"),
    ]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("not a vision-language model"),
        "{}",
        run.stderr
    );
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_tower_that_does_not_match_its_config_is_load_failed_naming_the_tensor() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("m");
    make(&dir, &[]);
    let path = dir.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    c["vision_config"]["intermediate_size"] = serde_json::json!(128);
    std::fs::write(&path, c.to_string()).expect("write");
    let r = mlxsup(&[
        "run",
        dir.to_str().expect("utf-8"),
        "--prompt",
        "hi",
        "--max-tokens",
        "2",
    ]);
    assert_eq!(r.code, Some(4), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("vision_tower.blocks.0.mlp.gate_proj.weight has shape [256, 128]"),
        "{}",
        r.stderr
    );
}
