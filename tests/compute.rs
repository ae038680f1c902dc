//! The compute-dtype policy end to end (issue 14): `mlxsup run` on the CPU computes in
//! f32 when the f32 model fits the budget, keeps the native dtype (with a one-line note,
//! never a refusal) when it does not, and obeys `--compute native|f32`; `inspect` shows
//! both weight figures and the estimate plans the dtype that runs.
#![allow(clippy::unwrap_used)]

use mlxsup_tests::{mlxsup, tiny_model, Run};
use serde_json::Value;

fn run(extra: &[&str]) -> Run {
    let model = tiny_model().to_str().unwrap().to_string();
    let mut args = vec![
        "run",
        model.as_str(),
        "--json",
        "--prompt",
        "The quick brown fox",
        "--max-tokens",
        "8",
        "--context",
        "512",
    ];
    args.extend_from_slice(extra);
    mlxsup(&args)
}

fn one<'a>(r: &'a Run, name: &str) -> &'a Value {
    let v = r.named(name);
    assert_eq!(v.len(), 1, "one {name} event: {}\n{}", r.stdout, r.stderr);
    v[0]
}

fn inspect(extra: &[&str]) -> Value {
    let model = tiny_model().to_str().unwrap().to_string();
    let mut args = vec!["inspect", model.as_str(), "--json", "--context", "512"];
    args.extend_from_slice(extra);
    let r = mlxsup(&args);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn auto_computes_in_f32_on_the_cpu_when_it_fits() {
    let r = run(&["--budget", "2GiB"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let est = one(&r, "estimate");
    assert_eq!(est["weights"]["compute_f32"], true, "{est:#}");
    assert_eq!(est["weights"]["bytes"], est["weights"]["f32_bytes"]);
    // bf16 weights: f32 is twice the stored bytes.
    assert_eq!(
        est["weights"]["bytes"].as_u64().unwrap(),
        2 * est["weights"]["native_bytes"].as_u64().unwrap()
    );
    assert_eq!(one(&r, "loaded")["compute_dtype"], "float32");
    assert_eq!(one(&r, "done")["compute_dtype"], "float32");
    assert!(r.named("note").is_empty(), "no note when f32 fits");
}

#[test]
fn native_and_f32_are_obeyed() {
    let r = run(&["--budget", "2GiB", "--compute", "native"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(one(&r, "estimate")["weights"]["compute_f32"], false);
    assert_eq!(one(&r, "loaded")["compute_dtype"], "bfloat16");
    assert_eq!(one(&r, "done")["compute_dtype"], "bfloat16");
    let r = run(&["--budget", "2GiB", "--compute", "f32"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(one(&r, "loaded")["compute_dtype"], "float32");
    let bad = run(&["--compute", "f16"]);
    assert_eq!(bad.code, Some(2), "a usage error: {}", bad.stderr);
}

#[test]
fn a_budget_just_above_the_native_estimate_runs_native_with_a_note() {
    let native = inspect(&["--compute", "native", "--budget", "2GiB"]);
    let total = native["total_bytes"].as_u64().unwrap();
    let f32_total = inspect(&["--compute", "f32", "--budget", "2GiB"])["total_bytes"]
        .as_u64()
        .unwrap();
    assert!(f32_total > total + (64 << 10), "{f32_total} vs {total}");
    let budget = (total + (64 << 10)).to_string();
    // The inspect of auto at that budget plans native and says why.
    let planned = inspect(&["--budget", &budget]);
    assert_eq!(planned["compute_dtype"], "native", "{planned:#}");
    assert!(planned["compute_note"]
        .as_str()
        .is_some_and(|n| n.contains("as f32 it would need")));
    // The worker's own footprint (the MLX library) is above a tiny model's estimate:
    // the ceiling is lifted so that only the policy is under test.
    let r = run(&["--budget", &budget, "--memory-ceiling", "4GiB"]);
    assert_eq!(r.code, Some(0), "not refused, not crashed: {}", r.stderr);
    assert_eq!(one(&r, "estimate")["total_bytes"].as_u64(), Some(total));
    assert_eq!(one(&r, "loaded")["compute_dtype"], "bfloat16");
    let note = one(&r, "note");
    assert!(
        note["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("compute: native") && !t.contains('\n')),
        "{note:#}"
    );
    assert_eq!(one(&r, "done")["generated_tokens"], 8);
}

#[test]
fn inspect_shows_both_weight_figures() {
    let model = tiny_model().to_str().unwrap().to_string();
    let r = mlxsup(&["inspect", model.as_str(), "--budget", "2GiB"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout.contains("as f32 compute on the CPU"),
        "{}",
        r.stdout
    );
    let j = inspect(&["--budget", "2GiB"]);
    assert_eq!(j["compute_dtype"], "f32");
    assert!(j["compute_note"].is_null());
    let n = inspect(&["--budget", "2GiB", "--compute", "native"]);
    assert_eq!(n["compute_dtype"], "native");
    assert_eq!(n["weights"]["bytes"], n["weights"]["native_bytes"]);
    assert_eq!(n["weights"]["f32_bytes"], j["weights"]["bytes"]);
    // The KV cache is planned in f32 too.
    assert_eq!(
        j["kv_cache"]["bytes"].as_u64().unwrap(),
        2 * n["kv_cache"]["bytes"].as_u64().unwrap()
    );
}

#[test]
fn the_daemon_loads_at_the_policy_it_is_given() {
    use mlxsup_tests::daemon::{gen_args, model_path, Daemon};
    let d = Daemon::start(&["--budget", "2GiB"]);
    let a = model_path("a");
    let mut args = gen_args(&a, "hello", "4");
    args.extend_from_slice(&["--compute", "native"]);
    let out = d.cli(&args);
    let loaded = out.named("loaded");
    assert_eq!(loaded.len(), 1, "{}", out.text());
    assert_eq!(loaded[0]["compute_dtype"], "bfloat16");
    assert_eq!(out.named("done")[0]["compute_dtype"], "bfloat16");
    let b = model_path("b");
    let out = d.cli(&gen_args(&b, "hello", "4"));
    assert_eq!(out.named("loaded")[0]["compute_dtype"], "float32", "auto");
    let est = &out.named("estimate")[0];
    assert_eq!(
        est["weights"]["compute_f32"], true,
        "admitted at f32: {est:#}"
    );
}

#[test]
fn the_estimator_counts_the_dequantized_weights_the_worker_holds() {
    let dir = tempfile::tempdir().unwrap();
    let q4 = dir.path().join("q4");
    let q4s = q4.to_str().unwrap();
    let made = mlxsup(&[
        "make-model",
        q4s,
        "--arch",
        "llama",
        "--hidden",
        "128",
        "--layers",
        "2",
        "--intermediate",
        "256",
        "--vocab",
        "512",
        "--quant-bits",
        "4",
    ]);
    assert_eq!(made.code, Some(0), "{}", made.stderr);
    let r = mlxsup(&[
        "run",
        q4s,
        "--json",
        "--prompt",
        "hi",
        "--max-tokens",
        "4",
        "--context",
        "256",
        "--budget",
        "2GiB",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let est = one(&r, "estimate");
    let loaded = one(&r, "loaded");
    assert_eq!(loaded["compute_dtype"], "float32");
    assert_eq!(
        est["weights"]["bytes"], loaded["weight_bytes"],
        "the f32 estimate is what MLX holds"
    );
    let n = mlxsup(&[
        "run",
        q4s,
        "--json",
        "--prompt",
        "hi",
        "--max-tokens",
        "4",
        "--context",
        "256",
        "--budget",
        "2GiB",
        "--compute",
        "native",
    ]);
    assert_eq!(one(&n, "loaded")["compute_dtype"], "bfloat16 (quantized)");
    assert_eq!(
        one(&n, "estimate")["weights"]["bytes"],
        one(&n, "loaded")["weight_bytes"]
    );
}

/// The f32 build's load peak (MLX's peak once the model is loaded) is what the estimate
/// plans: the f32 weights plus `load_transient_bytes`, never more and at most 2% less,
/// for dense and quantized checkpoints with untied (llama) and tied (qwen3) heads.
#[test]
fn the_f32_load_peak_is_the_planned_transient() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, quant) in [
        ("llama", None),
        ("llama", Some("4")),
        ("qwen3", None),
        ("qwen3", Some("8")),
    ] {
        let model = dir
            .path()
            .join(format!("{arch}-{}", quant.unwrap_or("bf16")));
        let m = model.to_str().unwrap();
        let mut args = vec![
            "make-model",
            m,
            "--arch",
            arch,
            "--hidden",
            "256",
            "--layers",
            "3",
            "--intermediate",
            "768",
            "--vocab",
            "4096",
        ];
        if let Some(b) = quant {
            args.extend_from_slice(&["--quant-bits", b]);
        }
        let made = mlxsup(&args);
        assert_eq!(made.code, Some(0), "{}", made.stderr);
        let r = mlxsup(&[
            "run",
            m,
            "--json",
            "--compute",
            "f32",
            "--prompt",
            "hi",
            "--max-tokens",
            "2",
            "--context",
            "256",
            "--budget",
            "4GiB",
        ]);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        let est = one(&r, "estimate");
        let peak = one(&r, "loaded")["peak_bytes"].as_u64().unwrap();
        let transient = est["load_transient_bytes"].as_u64().unwrap();
        let planned = est["weights"]["bytes"].as_u64().unwrap() + transient;
        assert!(transient > 0, "{m}: {est:#}");
        assert!(
            peak <= planned && peak * 100 >= planned * 98,
            "{m}: load peak {peak} vs planned {planned}"
        );
        let total = est["total_bytes"].as_u64().unwrap();
        assert!(total >= planned, "{m}: the total covers the load peak");
    }
}

/// Under `--compute f32`, a model that does not fit is told to compute natively (a
/// smaller quantization would not help: f32 compute dequantizes it).
#[test]
fn f32_that_does_not_fit_is_advised_the_native_dtype() {
    let native = inspect(&["--compute", "native", "--budget", "8GiB"]);
    let f32 = inspect(&["--compute", "f32", "--budget", "8GiB"]);
    let (n, f) = (
        native["total_bytes"].as_u64().unwrap(),
        f32["total_bytes"].as_u64().unwrap(),
    );
    assert!(f > n, "f32 {f} vs native {n}");
    let between = ((n + f) / 2).to_string();
    let tight = inspect(&["--compute", "f32", "--budget", &between]);
    assert_eq!(tight["verdict"], "does_not_fit", "{tight:#}");
    let advice = tight["advice"].as_str().unwrap();
    assert!(
        advice.contains("--compute native") && !advice.contains("--quant-bits"),
        "{advice}"
    );
}
