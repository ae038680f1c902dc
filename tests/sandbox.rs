//! The sandbox, end to end: `mlxsup run` on a real model in a real worker, with faults
//! injected for real (abort, invalid write, SIGKILL, exit, hang, allocation, garbage) at
//! each phase. Every failure must come back classified, with the supervisor fine, the
//! worker's processes gone and no socket file left.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use mlxsup_tests::{fault_time, mlxsup, tiny_model, Run};

/// Runs the tiny model with `extra` arguments, JSON events on.
fn run(extra: &[&str]) -> Run {
    let model = tiny_model().to_str().unwrap().to_string();
    let mut args = vec!["run", model.as_str(), "--json"];
    for (flag, default) in [
        ("--prompt", "The quick brown fox"),
        ("--max-tokens", "8"),
        ("--context", "512"),
    ] {
        if !extra.contains(&flag) {
            args.extend_from_slice(&[flag, default]);
        }
    }
    args.extend_from_slice(extra);
    mlxsup(&args)
}

/// Asserts a contained failure of `kind` in `phase`, and returns its event.
fn assert_failure(run: &Run, kind: &str, phase: &str) -> serde_json::Value {
    let (_, f) = run.failure().unwrap_or_else(|| {
        panic!(
            "no failure event; stdout {} stderr {}",
            run.stdout, run.stderr
        )
    });
    assert_eq!(f["kind"], kind, "{f:#}");
    assert_eq!(f["phase"], phase, "{f:#}");
    // A text-only run: no stage narrower than the phase (`vision_tower` is for images).
    assert!(f["stage"].is_null(), "{f:#}");
    assert!(f["advice"].as_str().is_some_and(|a| !a.is_empty()), "{f:#}");
    assert_eq!(
        run.code,
        Some(4),
        "the supervisor must exit 4, not die: {:?} {}",
        run.signal,
        run.stderr
    );
    assert!(run.orphans().is_empty(), "worker processes left behind");
    assert!(
        run.leftover_sockets().is_empty(),
        "socket files left: {:?}",
        run.leftover_sockets()
    );
    f.clone()
}

/// Milliseconds from the worker's injected death to the failure event's arrival.
fn report_latency_ms(run: &Run) -> Option<f64> {
    let (arrived, f) = run.failure()?;
    let died = fault_time(f["stderr_tail"].as_str()?)?;
    Some(arrived.duration_since(died).ok()?.as_secs_f64() * 1e3)
}

const PHASES: [(&str, &str); 3] = [
    ("load", "load"),
    ("prefill", "prefill"),
    ("decode:3", "decode"),
];

fn matrix(kind_arg: &str, expected: &str, extra: &[&str]) -> Vec<f64> {
    let mut latencies = Vec::new();
    for (at, phase) in PHASES {
        let fault = format!("{kind_arg}@{at}");
        let mut args = vec!["--inject-fault", fault.as_str()];
        args.extend_from_slice(extra);
        let r = run(&args);
        let f = assert_failure(&r, expected, phase);
        if let Some(ms) = report_latency_ms(&r) {
            latencies.push(ms);
        }
        // What a person needs to see is there.
        assert!(
            f["stderr_tail"]
                .as_str()
                .unwrap()
                .contains("injecting fault"),
            "{f:#}"
        );
        if phase == "decode" {
            // `decode:3`: the worker dies once 2 tokens are delivered, and both arrive.
            assert_eq!(r.named("token").len(), 2, "tokens before {fault}");
        }
    }
    eprintln!("{kind_arg}: death → failure event {latencies:.1?} ms");
    latencies
}

#[test]
fn metal_oom_abort_is_classified_at_every_phase() {
    matrix("abort-metal-oom", "metal_out_of_memory", &[]);
    let r = run(&["--inject-fault", "abort-metal-oom@decode:2"]);
    let f = assert_failure(&r, "metal_out_of_memory", "decode");
    assert_eq!(f["signal"], "SIGABRT");
    assert!(f["stderr_tail"]
        .as_str()
        .unwrap()
        .contains("Insufficient Memory"));
}

#[test]
fn invalid_write_is_a_crash_at_every_phase() {
    matrix("segv", "crashed", &[]);
    let r = run(&["--inject-fault", "segv@prefill"]);
    let f = assert_failure(&r, "crashed", "prefill");
    assert_eq!(f["signal"], "SIGSEGV");
    // The worker's last words name the fault address.
    assert!(
        f["stderr_tail"]
            .as_str()
            .unwrap()
            .contains("fatal SIGSEGV addr=0x8"),
        "{f:#}"
    );
}

#[test]
fn sigkill_not_sent_by_us_is_killed_by_os_at_every_phase() {
    matrix("kill", "killed_by_os", &[]);
    let r = run(&["--inject-fault", "kill@load"]);
    let f = assert_failure(&r, "killed_by_os", "load");
    assert_eq!(f["signal"], "SIGKILL");
    assert_eq!(f["signal_sent_by_supervisor"], false);
}

#[test]
fn nonzero_exit_is_exited_at_every_phase() {
    matrix("exit:7", "exited", &[]);
    let r = run(&["--inject-fault", "exit:7@decode:1"]);
    let f = assert_failure(&r, "exited", "decode");
    assert_eq!(f["exit_code"], 7);
    assert!(f["signal"].is_null());
}

#[test]
fn hang_is_unresponsive_within_the_heartbeat_timeout_at_every_phase() {
    for (at, phase) in PHASES {
        let fault = format!("hang@{at}");
        let started = SystemTime::now();
        let r = run(&["--inject-fault", &fault, "--heartbeat-timeout-ms", "800"]);
        let f = assert_failure(&r, "unresponsive", phase);
        let took = started.elapsed().unwrap();
        assert!(f["signal_sent_by_supervisor"] == true, "{f:#}");
        // 800 ms of silence, then SIGTERM (a hung worker dies of it), plus start-up.
        assert!(took < Duration::from_secs(6), "took {took:?}");
    }
}

#[test]
fn allocation_over_the_ceiling_is_stopped_at_every_phase() {
    for (at, phase) in PHASES {
        let fault = format!("alloc:1GiB@{at}");
        let r = run(&[
            "--inject-fault",
            &fault,
            "--memory-ceiling",
            "400MiB",
            "--telemetry-ms",
            "20",
        ]);
        let f = assert_failure(&r, "memory_ceiling_exceeded", phase);
        assert_eq!(f["signal"], "SIGKILL");
        assert_eq!(f["signal_sent_by_supervisor"], true);
        // The climb is in the evidence: footprints rising toward the ceiling.
        let samples = f["last_telemetry"].as_array().unwrap();
        let fps: Vec<u64> = samples
            .iter()
            .map(|t| t["footprint_bytes"].as_u64().unwrap())
            .collect();
        assert!(fps.len() >= 2, "{fps:?}");
        assert!(
            fps.last().unwrap() > fps.first().unwrap(),
            "no climb in {fps:?}"
        );
        assert!(f["peak_bytes"].as_u64().unwrap() > 400 << 20, "{f:#}");
    }
}

#[test]
fn allocation_under_the_ceiling_is_held_and_the_run_completes() {
    let r = run(&[
        "--inject-fault",
        "alloc:64MiB@prefill",
        "--memory-ceiling",
        "2GiB",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let done = r.named("done");
    assert!(
        done[0]["max_footprint_bytes"].as_u64().unwrap() > 64 << 20,
        "{:#}",
        done[0]
    );
}

#[test]
fn garbage_on_the_socket_is_a_protocol_error() {
    for (at, phase) in [("load", "load"), ("decode:2", "decode")] {
        let fault = format!("garbage@{at}");
        let r = run(&["--inject-fault", &fault]);
        let f = assert_failure(&r, "protocol_error", phase);
        assert_eq!(f["signal_sent_by_supervisor"], true, "{f:#}");
    }
}

#[test]
fn a_normal_run_streams_tokens_telemetry_and_a_summary() {
    let r = run(&["--telemetry-ms", "10", "--max-tokens", "24"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let est = r.named("estimate");
    assert_eq!(est.len(), 1);
    assert_eq!(est[0]["architecture"], "qwen3");
    let loaded = r.named("loaded");
    assert!(loaded[0]["load_ms"].is_u64() && loaded[0]["peak_bytes"].is_u64());
    let tokens = r.named("token");
    let done = &r.named("done")[0];
    assert_eq!(
        done["generated_tokens"].as_u64().unwrap() as usize,
        tokens.len()
    );
    assert!(done["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(!r.named("telemetry").is_empty());
    for t in r.named("telemetry") {
        for k in [
            "t_ms",
            "active_bytes",
            "peak_bytes",
            "cache_bytes",
            "footprint_bytes",
        ] {
            assert!(t[k].is_u64(), "{k} in {t}");
        }
    }
    assert!(r.orphans().is_empty());
    assert!(r.leftover_sockets().is_empty());
}

#[test]
fn preflight_refuses_what_does_not_fit_and_force_overrides() {
    let r = run(&["--budget", "1MiB"]);
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    let (_, f) = r.failure().unwrap();
    assert_eq!(f["kind"], "insufficient_memory");
    assert!(f["advice"].as_str().unwrap().contains("--force"), "{f:#}");
    assert!(
        r.named("token").is_empty(),
        "nothing may run after a refusal"
    );

    // A budget that fits a short context but not the 100000 asked: the advice names the
    // largest context that fits, and following it is accepted.
    let r = run(&["--budget", "12MiB", "--context", "100000"]);
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    let advice = r.failure().unwrap().1["advice"]
        .as_str()
        .unwrap()
        .to_string();
    let n: u64 = advice
        .split("--context ")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no --context N in {advice}"));
    assert!(n > 0 && n < 100_000, "{advice}");
    let ctx = n.to_string();
    let r = run(&[
        "--budget",
        "12MiB",
        "--context",
        &ctx,
        "--memory-ceiling",
        "4GiB",
    ]);
    assert_eq!(
        r.code,
        Some(0),
        "the advised --context {n} must be accepted: {}",
        r.stderr
    );

    let r = run(&["--budget", "1MiB", "--force", "--memory-ceiling", "4GiB"]);
    assert_eq!(r.code, Some(0), "--force must load anyway: {}", r.stderr);
}

#[test]
fn real_exhaustion_under_rlimit_as_is_an_allocation_failure() {
    // A model larger than the worker's address-space headroom: the OS refuses MLX's
    // allocations while it loads the weights. How MLX's CPU backend then fails varies
    // (an error from the read into the refused buffer, SIGSEGV through it, an abort, a
    // deadlock): each is classified from its evidence, and none is a plain `exited`.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("f32-160m");
    let made = mlxsup(&[
        "make-model",
        model.to_str().unwrap(),
        "--arch",
        "llama",
        "--hidden",
        "768",
        "--layers",
        "4",
        "--heads",
        "8",
        "--kv-heads",
        "4",
        "--intermediate",
        "2048",
        "--vocab",
        "8000",
        "--dtype",
        "f32",
    ]);
    assert_eq!(made.code, Some(0), "{}", made.stderr);
    let r = mlxsup(&[
        "run",
        model.to_str().unwrap(),
        "--json",
        "--max-tokens",
        "2",
        "--context",
        "256",
        "--force",
        "--rlimit-as",
        "330MiB",
        "--memory-ceiling",
        "8GiB",
        "--stall-timeout-ms",
        "3000",
    ]);
    let f = assert_failure(&r, "allocation_failed", "load");
    let evidence = format!("{} {}", f["message"], f["stderr_tail"]);
    assert!(
        evidence.contains("RLIMIT_AS")
            || evidence.contains("fatal SIG")
            || evidence.contains("memory allocation"),
        "no memory evidence in {f:#}"
    );
}

#[test]
fn a_stall_behind_a_live_heartbeat_is_detected() {
    // The main thread blocks while telemetry keeps flowing: only the absence of progress
    // and of CPU use shows it.
    let started = SystemTime::now();
    let r = run(&[
        "--inject-fault",
        "stall@decode:2",
        "--stall-timeout-ms",
        "1000",
    ]);
    let f = assert_failure(&r, "unresponsive", "decode");
    assert!(f["message"].as_str().unwrap().contains("stalled"), "{f:#}");
    assert!(r.named("telemetry").len() > 5, "the heartbeat kept going");
    assert!(started.elapsed().unwrap() < Duration::from_secs(8));
}

#[test]
fn bad_models_exit_5_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    let r = mlxsup(&["run", dir.path().to_str().unwrap(), "--json"]);
    assert_eq!(r.code, Some(5), "{}", r.stderr);
    assert!(r.stderr.contains("config.json"), "{}", r.stderr);
    let r = mlxsup(&["run", "/nonexistent/model"]);
    assert_eq!(r.code, Some(5), "{}", r.stderr);
    let r = mlxsup(&["run"]);
    assert_eq!(r.code, Some(2));
    let r = run(&["--inject-fault", "explode@load"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
}

/// Issue 21: a family the worker cannot run is refused by the preflight, before any
/// worker runs (exit 5, naming it and the supported list); it used to pass the
/// preflight and fail in the worker (`load_failed`, exit 4).
#[test]
fn an_unsupported_architecture_is_refused_before_a_worker_runs() {
    let src = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let cfg = cfg.replace("\"qwen3\"", "\"mamba\"");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    let r = mlxsup(&[
        "run",
        dir.path().to_str().unwrap(),
        "--json",
        "--max-tokens",
        "2",
        "--context",
        "256",
    ]);
    assert_eq!(r.code, Some(5), "{} {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("\"mamba\""), "{}", r.stderr);
    assert!(
        r.stderr.contains("supported: llama, mistral"),
        "{}",
        r.stderr
    );
    // No worker ran: nothing was admitted, loaded or failed.
    assert!(
        r.events
            .iter()
            .all(|(_, e)| !["estimate", "loaded", "failure"]
                .contains(&e["event"].as_str().unwrap_or(""))),
        "{}",
        r.stdout
    );
}

#[test]
fn ctrl_c_cancels_stops_the_worker_and_exits_130() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let rt = tempfile::tempdir().unwrap();
    let rt_dir = rt.path().join("r");
    let mut child = Command::new(mlxsup_tests::bin("mlxsup"))
        .args([
            "run",
            tiny_model().to_str().unwrap(),
            "--json",
            "--max-tokens",
            "32000",
            "--context",
            "32768",
        ])
        .env("MLXSUP_RUNTIME_DIR", &rt_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Wait for generation to be under way, then interrupt as a terminal would.
    for line in lines.by_ref() {
        if line.unwrap().contains("\"event\":\"token\"") {
            break;
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    for _ in lines {}
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(mlxsup_tests::processes_mentioning(rt_dir.to_str().unwrap()).is_empty());
    assert_eq!(
        std::fs::read_dir(&rt_dir).unwrap().count(),
        0,
        "socket files left"
    );
}

/// `KIND@decode:N` kills the worker once N-1 tokens are delivered, and every one of them
/// reaches the client: the worker writes each token through to the socket before it goes
/// on, and the supervisor drains the socket after the death before it reports.
#[test]
fn every_token_before_a_death_is_delivered() {
    for kind in ["kill", "segv", "abort-metal-oom", "exit:3"] {
        for n in [1u32, 2, 5, 8] {
            let fault = format!("{kind}@decode:{n}");
            let r = run(&["--inject-fault", fault.as_str()]);
            assert_eq!(r.code, Some(4), "{fault}: {}", r.stderr);
            let tokens = r.named("token").len();
            assert_eq!(tokens, (n - 1) as usize, "{fault}: {}", r.stdout);
            assert!(r.named("done").is_empty(), "{fault}");
        }
    }
}

/// The prompt is tokenized before any worker runs: with the tokens asked for, it must fit
/// the context the estimate was made for, else the run is refused with what would fit.
#[test]
fn a_prompt_longer_than_the_context_is_refused_before_a_worker_runs() {
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(20);
    let r = run(&["--context", "16", "--max-tokens", "8", "--prompt", &long]);
    assert_eq!(r.code, Some(3), "{} {}", r.stdout, r.stderr);
    let (_, f) = r.failure().unwrap();
    assert_eq!(f["kind"], "context_length_exceeded");
    let needed = f["remedy"]["min_context"].as_u64().unwrap();
    assert!(needed > 16 + 8, "{f:#}");
    let advice = f["advice"].as_str().unwrap();
    assert!(
        advice.contains(&format!("--context {needed} fits")),
        "{advice}"
    );
    assert!(r.named("loaded").is_empty(), "no worker ran");
    // The advised context is accepted.
    let ok = run(&[
        "--context",
        &needed.to_string(),
        "--max-tokens",
        "8",
        "--prompt",
        &long,
    ]);
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
}
