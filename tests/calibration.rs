//! The calibration store end to end, with real `mlxsup run` processes, real workers and a
//! real store file: runs record themselves; a model whose runs were under-predicted is
//! predicted higher afterwards; a corrupt store is set aside and the run still works; two
//! processes recording at once lose no record; the summary compares the peak with the
//! estimate at the context used and the `loaded` event carries the weight check.
#![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

use std::path::Path;

use mlxsup_tests::{
    daemon::{gen_args, Daemon},
    mlxsup_env, tiny_model, Run,
};
use serde_json::Value;

fn run_with_store(store: &Path, prompt: &str, max_tokens: &str) -> Run {
    run_with_store_env(store, prompt, max_tokens, &[])
}

fn run_with_store_env(store: &Path, prompt: &str, max_tokens: &str, env: &[(&str, &str)]) -> Run {
    let mut env = env.to_vec();
    env.push(("MLXSUP_CALIBRATION", store.to_str().unwrap()));
    mlxsup_env(
        &[
            "run",
            tiny_model().to_str().unwrap(),
            "--prompt",
            prompt,
            "--max-tokens",
            max_tokens,
            "--context",
            "256",
            "--budget",
            "1GiB",
            "--json",
        ],
        &env,
    )
}

fn records(store: &Path) -> Vec<Value> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(store).unwrap()).unwrap();
    assert_eq!(v["version"], 1);
    v["records"].as_array().unwrap().clone()
}

fn inspect(store: &Path, context: &str) -> Value {
    let r = mlxsup_env(
        &[
            "inspect",
            tiny_model().to_str().unwrap(),
            "--context",
            context,
            "--budget",
            "1GiB",
            "--json",
        ],
        &[("MLXSUP_CALIBRATION", store.to_str().unwrap())],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn a_run_records_itself_and_reports_the_estimate_at_the_context_used() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("data/mlxsup/calibration.json");
    let r = run_with_store(&store, "hello hello hello", "5");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let loaded = r.named("loaded")[0];
    let predicted = loaded["predicted_weight_bytes"].as_u64().unwrap();
    let active = loaded["active_bytes"].as_u64().unwrap();
    assert_eq!(
        loaded["weight_delta_bytes"].as_i64().unwrap(),
        active as i64 - predicted as i64
    );
    assert!(
        loaded["weight_delta_pct"].as_f64().unwrap().abs() <= 2.0,
        "{loaded}"
    );
    assert!(loaded["weight_warning"].is_null());
    let done = r.named("done")[0];
    let used = done["context_used"].as_u64().unwrap();
    assert_eq!(
        used,
        done["prompt_tokens"].as_u64().unwrap() + done["generated_tokens"].as_u64().unwrap()
    );
    assert_eq!(done["planned_context"], 256);
    // At the few tokens used the estimate is far below the one planned for 256.
    let at_used = done["estimate_used_bytes"].as_u64().unwrap();
    assert!(at_used < done["estimate_bytes"].as_u64().unwrap(), "{done}");
    let recs = records(&store);
    assert_eq!(recs.len(), 1);
    let rec = &recs[0];
    assert_eq!(rec["context"].as_u64().unwrap(), used);
    assert_eq!(rec["peak_bytes"], done["peak_bytes"]);
    assert_eq!(rec["predicted_bytes"].as_u64().unwrap(), at_used);
    assert_eq!(rec["machine"]["backend"], "cpu");
    assert_eq!(rec["source"], "run");
    // inspect now says which calibration it uses.
    let est = inspect(&store, "256");
    assert_eq!(est["calibration_source"], "machine");
    assert!(est["calibration"]
        .as_str()
        .unwrap()
        .starts_with("this machine: 1 run, cpu, MLX "));
}

#[test]
fn under_predicted_runs_raise_the_prediction() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("calibration.json");
    let builtin = inspect(&tmp.path().join("none.json"), "64");
    assert_eq!(builtin["calibration_source"], "builtin");
    // Real runs at ~64 tokens, then their peaks as a machine whose MLX needs three times as much
    // would have measured them (3x): the built-in model under-predicts them all.
    let prompt = "one two three four five six seven eight nine ten ".repeat(5);
    for _ in 0..2 {
        let r = run_with_store(&store, &prompt, "3");
        assert_eq!(r.code, Some(0), "{}", r.stderr);
    }
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&store).unwrap()).unwrap();
    let mut worst = 0u64;
    for rec in v["records"].as_array_mut().unwrap() {
        let inflated = rec["peak_bytes"].as_u64().unwrap() * 3;
        assert!(rec["predicted_bytes"].as_u64().unwrap() < inflated);
        rec["peak_bytes"] = inflated.into();
        worst = worst.max(inflated);
    }
    let context = records(&store)[0]["context"].as_u64().unwrap().to_string();
    std::fs::write(&store, v.to_string()).unwrap();
    let before = inspect(&tmp.path().join("none.json"), &context)["total_bytes"]
        .as_u64()
        .unwrap();
    let after = inspect(&store, &context);
    assert_eq!(after["calibration_source"], "machine");
    let after_total = after["total_bytes"].as_u64().unwrap();
    assert!(after_total > before, "{after_total} <= {before}");
    assert!(
        after_total >= worst,
        "{after_total} is below the measured {worst}"
    );
}

#[test]
fn a_corrupt_store_is_set_aside_and_the_run_still_works() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("calibration.json");
    std::fs::write(&store, "{\"version\": 1, \"records\": [tru").unwrap();
    let r = run_with_store(&store, "hello", "2");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let notes: Vec<String> = r
        .named("note")
        .iter()
        .map(|n| n["text"].as_str().unwrap().to_string())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("is corrupt") && n.contains("set aside")),
        "{notes:?}"
    );
    let aside: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        std::fs::read_to_string(aside[0].path()).unwrap(),
        "{\"version\": 1, \"records\": [tru"
    );
    assert_eq!(records(&store).len(), 1);
}

#[test]
fn two_processes_recording_at_once_lose_no_record() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("calibration.json");
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                // Each holds the store's lock 400 ms between its read and its write.
                let hold = [("MLXSUP_TEST_STORE_HOLD_MS", "400")];
                run_with_store_env(&store, &format!("run {i}"), "2", &hold)
            })
        })
        .collect();
    for t in threads {
        let r = t.join().unwrap();
        assert_eq!(r.code, Some(0), "{}", r.stderr);
    }
    assert_eq!(records(&store).len(), 4);
}

#[test]
fn calibrate_measures_a_ladder_records_it_and_refits() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("calibration.json");
    let r = mlxsup_env(
        &[
            "calibrate",
            tiny_model().to_str().unwrap(),
            "--contexts",
            "128,32,64",
            "--prefill-chunk",
            "32",
            "--budget",
            "1GiB",
            "--json",
        ],
        &[("MLXSUP_CALIBRATION", store.to_str().unwrap())],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // Progress, one context after the other.
    for c in ["context 32 (1/3)", "context 64 (2/3)", "context 128 (3/3)"] {
        assert!(r.stderr.contains(c), "{}", r.stderr);
    }
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["calibration_before"], "built-in (CPU, 92 peaks)");
    assert!(v["calibration_after"]
        .as_str()
        .unwrap()
        .starts_with("this machine: 3 runs"));
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    let recs = records(&store);
    assert_eq!(recs.len(), 3);
    for (p, rec) in points.iter().zip(&recs) {
        assert_eq!(rec["source"], "calibrate");
        assert_eq!(rec["peak_bytes"], p["peak_bytes"]);
        assert_eq!(rec["context"], p["context_used"]);
        // The floor: never below what was just measured.
        assert!(
            p["predicted_after"].as_u64() >= p["peak_bytes"].as_u64(),
            "{p}"
        );
        let (b, a) = (
            p["error_before_pct"].as_f64().unwrap(),
            p["error_refit_pct"].as_f64().unwrap(),
        );
        assert!(b.is_finite() && a.is_finite());
    }
    // The refit is what inspect uses now.
    let est = inspect(&store, "128");
    assert_eq!(est["calibration_source"], "machine");
}

#[test]
fn a_daemon_generation_records_itself_and_reports_the_estimate_at_the_context_used() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("calibration.json");
    let dir = tempfile::Builder::new()
        .prefix("d")
        .tempdir_in("/tmp")
        .unwrap();
    let d = Daemon::start_env(
        dir,
        &["--budget", "2GiB"],
        &[("MLXSUP_CALIBRATION", store.to_str().unwrap())],
    );
    let out = d.cli(&gen_args("b", "The quick brown fox", "6"));
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, d.log());
    let events = out.events();
    let done = events.iter().find(|e| e["event"] == "done").unwrap();
    let used = done["context_used"].as_u64().unwrap();
    assert!(used > 6 && used < 512, "{done}");
    assert_eq!(done["planned_context"], 512);
    assert!(
        done["estimate_used_bytes"].as_u64().unwrap() < done["estimate_bytes"].as_u64().unwrap()
    );
    // The daemon writes the record off its actor's thread: wait for it.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !store.exists() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let recs = records(&store);
    assert_eq!(recs.len(), 1, "{}", d.log());
    assert_eq!(recs[0]["source"], "daemon");
    assert_eq!(recs[0]["context"].as_u64().unwrap(), used);
    assert_eq!(recs[0]["peak_bytes"], done["peak_bytes"]);
    // A worker's MLX peak counts its whole life: a later request is recorded only when it
    // raised it (then the peak is its own), never with an earlier request's peak. A tiny
    // request after a longer one cannot raise it.
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(6);
    let longer = d.cli(&gen_args("b", &long, "6"));
    assert_eq!(longer.code, Some(0), "{}", longer.stderr);
    let short = d.cli(&gen_args("b", "Hi", "2"));
    assert_eq!(short.code, Some(0), "{}", short.stderr);
    let peak = |o: &mlxsup_tests::daemon::Out| {
        o.events()
            .iter()
            .find(|e| e["event"] == "done")
            .and_then(|e| e["peak_bytes"].as_u64())
            .unwrap()
    };
    let first = recs[0]["peak_bytes"].as_u64().unwrap();
    assert!(peak(&longer) > first, "{} vs {first}", peak(&longer));
    assert_eq!(
        peak(&short),
        peak(&longer),
        "the worker's peak is its life's"
    );
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while records(&store).len() < 2 && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Let a (wrong) third record arrive if one were coming.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let recs = records(&store);
    assert_eq!(recs.len(), 2, "{}", d.log());
    assert_eq!(recs[1]["peak_bytes"].as_u64(), Some(peak(&longer)));
}

/// `calibrate --kv-bits 8` measures and records the quantized-KV runs (the store keeps
/// their bits) but leaves them out of the refit, which models the model-dtype cache.
#[test]
fn calibrate_with_quantized_kv_records_but_does_not_refit() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("calibration.json");
    let model = tmp.path().join("llama-hd64");
    let m = model.to_str().unwrap();
    let made = mlxsup_env(
        &[
            "make-model",
            m,
            "--arch",
            "llama",
            "--hidden",
            "256",
            "--layers",
            "2",
            "--heads",
            "4",
            "--kv-heads",
            "2",
            "--intermediate",
            "512",
            "--vocab",
            "512",
        ],
        &[],
    );
    assert_eq!(made.code, Some(0), "{}", made.stderr);
    let r = mlxsup_env(
        &[
            "calibrate",
            m,
            "--contexts",
            "64,128",
            "--kv-bits",
            "8",
            "--budget",
            "1GiB",
            "--json",
        ],
        &[("MLXSUP_CALIBRATION", store.to_str().unwrap())],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["kv_bits"], 8);
    assert_eq!(v["calibration_source"], "builtin", "{v:#}");
    let recs = records(&store);
    assert_eq!(recs.len(), 2);
    assert!(recs.iter().all(|r| r["kv_bits"] == 8), "{recs:#?}");
    let bad = mlxsup_env(&["calibrate", m, "--kv-bits", "3", "--json"], &[]);
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
}
