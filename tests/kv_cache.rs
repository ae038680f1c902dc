//! `run --kv-bits` end to end (issue 12): the worker quantizes its KV cache as mlx-lm
//! does (parity with mlx-lm is `worker/tests/reference_mlx_lm.rs`), the estimate plans
//! the quantized cache, and a model whose head size cannot be quantized is a clear
//! `load_failed`, not a crash.
#![allow(clippy::unwrap_used)]

use mlxsup_tests::{mlxsup, tiny_model, Run};
use serde_json::Value;

fn one<'a>(r: &'a Run, name: &str) -> &'a Value {
    let v = r.named(name);
    assert_eq!(v.len(), 1, "one {name} event: {}\n{}", r.stdout, r.stderr);
    v[0]
}

fn run(model: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "run",
        model,
        "--json",
        "--prompt",
        "The quick brown fox jumps over the lazy dog",
        "--max-tokens",
        "12",
        "--context",
        "512",
        "--budget",
        "2GiB",
    ];
    args.extend_from_slice(extra);
    mlxsup(&args)
}

/// A llama whose head size is 256 / 4 = 64: the KV quantization groups run along it.
fn hd64(dir: &std::path::Path) -> String {
    let model = dir.join("hd64");
    let m = model.to_str().unwrap();
    let made = mlxsup(&[
        "make-model",
        m,
        "--arch",
        "llama",
        "--hidden",
        "256",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--layers",
        "2",
        "--intermediate",
        "512",
        "--vocab",
        "512",
    ]);
    assert_eq!(made.code, Some(0), "{}", made.stderr);
    m.to_string()
}

#[test]
fn kv_bits_quantize_the_cache_and_the_estimate_plans_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = hd64(dir.path());
    let m = m.as_str();
    let plain = run(m, &["--compute", "native"]);
    assert_eq!(plain.code, Some(0), "{}", plain.stderr);
    let mut kv_bytes = vec![];
    for bits in ["8", "4"] {
        let r = run(m, &["--compute", "native", "--kv-bits", bits]);
        assert_eq!(r.code, Some(0), "--kv-bits {bits}: {}", r.stderr);
        let est = one(&r, "estimate");
        assert_eq!(est["kv_cache"]["kv_bits"].to_string(), bits, "{est:#}");
        kv_bytes.push(est["kv_cache"]["bytes"].as_u64().unwrap());
        assert_eq!(one(&r, "done")["generated_tokens"], 12);
    }
    let dense = one(&plain, "estimate")["kv_cache"]["bytes"]
        .as_u64()
        .unwrap();
    // bf16 at 64 per group: 8-bit is (64 + 4) / 128 of it, 4-bit (32 + 4) / 128.
    assert_eq!(kv_bytes[0] * 128, dense * 68, "8-bit KV");
    assert_eq!(kv_bytes[1] * 128, dense * 36, "4-bit KV");
}

#[test]
fn kv_bits_a_model_cannot_take_is_load_failed() {
    // The tiny model's head size is 16.
    let r = run(tiny_model().to_str().unwrap(), &["--kv-bits", "8"]);
    assert_eq!(r.code, Some(4), "{}\n{}", r.stdout, r.stderr);
    let (_, f) = r.failure().unwrap();
    assert_eq!(f["kind"], "load_failed", "{f:#}");
    let advice = f["advice"].as_str().unwrap();
    assert!(
        advice.contains("divisible by 64") && advice.contains("is 16"),
        "{advice}"
    );
    assert!(r.orphans().is_empty(), "worker processes left behind");

    // Gemma 2's soft-capped attention has no quantized form.
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("gemma2");
    let g = g.to_str().unwrap();
    let made = mlxsup(&[
        "make-model",
        g,
        "--arch",
        "gemma2",
        "--hidden",
        "256",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--layers",
        "2",
        "--intermediate",
        "512",
        "--vocab",
        "512",
    ]);
    assert_eq!(made.code, Some(0), "{}", made.stderr);
    let r = run(g, &["--kv-bits", "8"]);
    assert_eq!(r.code, Some(4), "{}\n{}", r.stdout, r.stderr);
    let (_, f) = r.failure().unwrap();
    assert!(
        f["advice"].as_str().unwrap().contains("soft-capped"),
        "{f:#}"
    );
}

#[test]
fn kv_bits_other_than_4_or_8_is_a_usage_error() {
    let r = run(tiny_model().to_str().unwrap(), &["--kv-bits", "3"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("not 4 or 8"), "{}", r.stderr);
}

#[test]
fn the_daemon_loads_with_the_kv_bits_it_is_given() {
    use mlxsup_tests::daemon::{gen_args, Daemon};
    let dir = tempfile::tempdir().unwrap();
    let m = hd64(dir.path());
    let d = Daemon::start(&["--budget", "2GiB"]);
    let mut args = gen_args(&m, "hello there", "6");
    args.extend_from_slice(&["--kv-bits", "8"]);
    let out = d.cli(&args);
    let est = &out.named("estimate");
    assert_eq!(est.len(), 1, "{}", out.text());
    assert_eq!(est[0]["kv_cache"]["kv_bits"], 8, "{:#}", est[0]);
    assert_eq!(
        out.named("done")[0]["generated_tokens"],
        6,
        "{}",
        out.text()
    );
}
