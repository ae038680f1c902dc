//! Real memory limits, real processes: `mlxsup` started under `ulimit -v` / `ulimit -d`
//! (inherited by its workers) plans within the room those limits leave, and a worker
//! that runs out of it comes back as a memory failure with its evidence, never as a
//! crash; the supervisor survives and nothing is left behind.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mlxsup_tests::{mlxsup, mlxsup_limited, tiny_model, Rlimit, Run};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// A 211 MiB bf16 llama (hidden 1024, 8 layers), the reproduction, made once.
fn llama_1024x8() -> &'static Path {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &MODEL
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let model = dir.path().join("llama-1024x8");
            let made = mlxsup(&[
                "make-model",
                model.to_str().unwrap(),
                "--arch",
                "llama",
                "--hidden",
                "1024",
                "--layers",
                "8",
                "--heads",
                "8",
                "--kv-heads",
                "4",
                "--intermediate",
                "2816",
                "--vocab",
                "8000",
            ]);
            assert_eq!(made.code, Some(0), "{}", made.stderr);
            (dir, model)
        })
        .1
}

fn json(run: &Run) -> Value {
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

/// `budget_limits`' entry named `source`.
fn limit<'a>(v: &'a Value, source: &str) -> &'a Value {
    v["budget_limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["source"] == source)
        .unwrap_or_else(|| panic!("no {source} in {v:#}"))
}

/// The failure event of a run, with the checks every contained failure passes.
fn contained(run: &Run) -> Value {
    let (_, f) = run
        .failure()
        .unwrap_or_else(|| panic!("no failure: {} {}", run.stdout, run.stderr));
    assert_eq!(run.code, Some(4), "the supervisor survives: {}", run.stderr);
    assert!(run.orphans().is_empty(), "worker processes left behind");
    assert!(run.leftover_sockets().is_empty(), "socket files left");
    assert!(f["advice"].as_str().is_some_and(|a| !a.is_empty()), "{f:#}");
    f.clone()
}

/// Under each process limit the budget is the limit's room (the limit less a fresh
/// worker's use of it), named as the budget's source, with the others listed.
#[test]
fn the_budget_under_a_process_limit_is_its_room() {
    let model = tiny_model().to_str().unwrap();
    for (limit_of, source) in [
        (Rlimit::As(3 << 30), "RLIMIT_AS"),
        (Rlimit::Data(3 << 30), "RLIMIT_DATA"),
    ] {
        let v = json(&mlxsup_limited(&["inspect", model, "--json"], limit_of));
        assert_eq!(v["budget_source"], source, "{v:#}");
        let l = limit(&v, source);
        assert_eq!(l["limit_bytes"], 3u64 << 30);
        let used = l["used_bytes"].as_u64().unwrap();
        assert!(used > 0 && used < 1 << 30, "a worker's own use: {l:#}");
        assert_eq!(l["room_bytes"].as_u64(), Some((3 << 30) - used));
        assert_eq!(v["budget_bytes"], l["room_bytes"], "{v:#}");
        assert!(limit(&v, "MemAvailable")["room_bytes"].as_u64().unwrap() > 0);
    }
    // Without a limit, none is listed; `info` (a worker started under the limit) names it.
    let v = json(&mlxsup(&["inspect", model, "--json"]));
    assert!(v["budget_limits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["source"] != "RLIMIT_AS"));
    let v = json(&mlxsup_limited(&["info", "--json"], Rlimit::As(3 << 30)));
    assert_eq!(v["budget_source"], "RLIMIT_AS", "{v:#}");
    assert_eq!(limit(&v, "RLIMIT_AS")["limit_bytes"], 3u64 << 30);
}

/// The run: `ulimit -v 700000`, a 1024×8 llama. The preflight refuses it with
/// advice; forced, `auto` plans the native dtype (f32 is over the room) and whatever
/// happens is no crash; f32 forced fails at its upcast as `allocation_failed` with the
/// worker alive (the step checked its allocation), never a SIGSEGV.
#[test]
fn a_run_under_ulimit_v_is_planned_native_or_refused_never_crashed() {
    let model = llama_1024x8().to_str().unwrap();
    let limit = Rlimit::As(700_000 * 1024);
    let base = [
        "run",
        model,
        "--json",
        "--prompt",
        "hello there",
        "--max-tokens",
        "4",
        "--context",
        "2048",
    ];
    let refused = mlxsup_limited(&base, limit);
    assert_eq!(refused.code, Some(3), "{}", refused.stderr);
    let f = refused.failure().unwrap().1.clone();
    assert_eq!(f["kind"], "insufficient_memory", "{f:#}");
    assert!(f["advice"].as_str().unwrap().contains("--context"), "{f:#}");

    let mut forced = base.to_vec();
    forced.push("--force");
    let auto = mlxsup_limited(&forced, limit);
    assert!(
        auto.stderr.contains("compute: native") || auto.stdout.contains("compute: native"),
        "auto keeps the native dtype under the limit: {}",
        auto.stderr
    );
    if auto.code != Some(0) {
        let f = contained(&auto);
        assert_ne!(f["kind"], "crashed", "{f:#}");
        assert_eq!(f["kind"], "allocation_failed", "{f:#}");
    }

    forced.extend_from_slice(&["--compute", "f32"]);
    let f32 = mlxsup_limited(&forced, limit);
    let f = contained(&f32);
    assert_eq!(f["kind"], "allocation_failed", "{f:#}");
    assert_eq!(f["phase"], "load", "{f:#}");
    assert!(f["signal"].is_null(), "the worker was alive: {f:#}");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("to f32: failed to allocate"),
        "{f:#}"
    );
    assert!(
        f["advice"].as_str().unwrap().contains("--compute native"),
        "{f:#}"
    );
    assert!(!f["evidence"].is_null(), "{f:#}");
}

/// The matrix: `RLIMIT_AS` at 60%, 90% and 110% of the plan (a fresh worker's address
/// space plus the estimate) × `--compute auto` and `native`, forced past the preflight,
/// a long prompt so that a death may come in the load, the prefill or the decode: every
/// run completes or ends in a memory kind with its phase and advice, none is `crashed`,
/// the supervisor survives and nothing is left behind.
#[test]
fn every_death_under_rlimit_as_is_a_memory_failure() {
    let model = llama_1024x8().to_str().unwrap();
    let prompt = vec!["word"; 700].join(" ");
    let est = json(&mlxsup(&[
        "inspect",
        model,
        "--json",
        "--context",
        "2048",
        "--compute",
        "native",
    ]));
    let total = est["total_bytes"].as_u64().unwrap();
    // The room a worker needs under RLIMIT_AS: its own address space, then the model's.
    let probe = json(&mlxsup_limited(
        &["inspect", model, "--json"],
        Rlimit::As(4 << 30),
    ));
    let worker_as = limit(&probe, "RLIMIT_AS")["used_bytes"].as_u64().unwrap();
    for pct in [60u64, 90, 110] {
        let bytes = worker_as + total * pct / 100;
        for compute in ["auto", "native"] {
            let run = mlxsup_limited(
                &[
                    "run",
                    model,
                    "--json",
                    "--prompt",
                    &prompt,
                    "--max-tokens",
                    "8",
                    "--context",
                    "2048",
                    "--force",
                    "--compute",
                    compute,
                    "--stall-timeout-ms",
                    "5000",
                ],
                Rlimit::As(bytes),
            );
            let at = format!(
                "RLIMIT_AS {} MiB ({pct}% of the plan), --compute {compute}",
                bytes / MIB
            );
            if run.code == Some(0) {
                eprintln!("{at}: completed");
                continue;
            }
            let f = contained(&run);
            eprintln!("{at}: {} during {}", f["kind"], f["phase"]);
            let kind = f["kind"].as_str().unwrap();
            assert!(
                matches!(
                    kind,
                    "allocation_failed" | "memory_budget_exceeded" | "memory_ceiling_exceeded"
                ),
                "{at}: {f:#}"
            );
            assert!(
                matches!(f["phase"].as_str(), Some("load" | "prefill" | "decode")),
                "{at}: {f:#}"
            );
        }
    }
}
