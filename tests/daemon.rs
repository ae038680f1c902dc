//! The daemon, end to end: a real `mlxsup serve`, real workers, real MLX, tiny models,
//! driven by the real CLI clients (and by raw protocol clients for the hostile cases).
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    process::Command,
    time::{Duration, Instant},
};

use mlxsup_tests::{
    bin,
    daemon::{estimate_at, gen_args, solo, wait_out, Daemon},
};

/// A generation that stalls at its second token and keeps `model` busy until cancelled.
fn stalled(d: &Daemon, model: &str) -> std::process::Child {
    let mut args = gen_args(model, "x", "4");
    args.extend_from_slice(&["--inject-fault", "stall@decode:2"]);
    d.cli_cmd(&args).spawn()
}

#[test]
fn generate_streams_like_run_and_ps_status_ls_answer() {
    let d = Daemon::start(&[]);
    let out = d.cli(&gen_args("a", "The quick brown fox", "8"));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for name in ["estimate", "loaded", "token", "telemetry", "done"] {
        assert!(
            !out.named(name).is_empty(),
            "no {name} event: {}",
            out.stdout
        );
    }
    assert_eq!(out.named("token").len(), 8);
    assert_eq!(out.text(), solo("a", "The quick brown fox", "8"));
    let m = d.model("a");
    assert_eq!(m["state"], "ready");
    assert_eq!(m["requests"], 1);
    assert!(m["pid"].as_u64().is_some());
    assert!(
        m["keep_alive_until"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{m:#}"
    );
    assert!(m["estimate_bytes"].as_u64().unwrap() > 0);
    let s = d.cli(&["status", "--json"]).json();
    assert_eq!(s["pid"], d.pid());
    assert_eq!(s["models"], 1);
    assert!(s["held_bytes"].as_u64().unwrap() > 0);
    let ls = d.cli(&["ls", "--json"]).json();
    let names: Vec<&str> = ls["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    assert!(ls["models"][0]["loaded"].as_bool().unwrap());
    assert_eq!(ls["models"][0]["verdict"], "fits");
    // An unknown model: exit 5, named.
    let bad = d.cli(&gen_args("nope", "x", "1"));
    assert_eq!(bad.code, Some(5));
    assert!(
        bad.stderr.contains("unknown model `nope`"),
        "{}",
        bad.stderr
    );
}

#[test]
fn no_daemon_is_one_line_naming_the_socket_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let out = Command::new(bin("mlxsup"))
        .args(["ps", "--socket", socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(socket.to_str().unwrap()) && err.contains("mlxsup serve"),
        "{err}"
    );
}

#[test]
fn lru_idle_model_is_evicted_and_busy_or_pinned_ones_never() {
    // Room for two tiny models at a long context, not three. (At this context the
    // estimate, mostly KV cache and activations, is far above a tiny worker's footprint,
    // so what admission counts is the estimate.)
    let budget = (estimate_at(32768) as f64 * 2.5) as u64;
    let d = Daemon::start(&["--budget", &budget.to_string()]);
    let load = |m: &str, extra: &[&str]| {
        let mut args = vec!["load", m, "--context", "32768", "--json"];
        args.extend_from_slice(extra);
        let out = d.cli(&args);
        assert_eq!(out.code, Some(0), "load {m}: {} {}", out.stdout, out.stderr);
        out.json()
    };
    load("a", &[]);
    load("b", &[]);
    // Use a, so b is the least recently used.
    assert_eq!(d.cli(&gen_args("a", "hi", "2")).code, Some(0));
    load("c", &[]);
    assert_eq!(d.model("b")["state"], "unloaded", "{:#?}", d.ps());
    assert_eq!(d.model("a")["state"], "ready");
    assert_eq!(d.model("c")["state"], "ready");

    // Pin a; keep c busy (a stalled generation); then b has nowhere to go. (Not d: behind
    // mistral's 4096-token sliding window its estimate at 32768 is a fraction of theirs.)
    load("a", &["--keep-alive", "-1"]);
    let busy = stalled(&d, "c");
    d.wait_state("c", "busy", Duration::from_secs(10));
    let refused = d.cli(&["load", "b", "--context", "32768", "--json"]);
    assert_eq!(
        refused.code,
        Some(3),
        "{} {}",
        refused.stdout,
        refused.stderr
    );
    let f = refused.json();
    assert_eq!(f["kind"], "insufficient_memory");
    let unload = f["remedy"]["unload"].as_array().unwrap();
    assert_eq!(unload.len(), 2, "{f:#}");
    assert_eq!(d.model("a")["state"], "ready");
    assert_eq!(d.model("c")["state"], "busy");
    let mut busy = busy;
    let _ = busy.kill();
    let _ = busy.wait();
}

#[test]
fn an_idle_worker_killed_from_outside_shows_failed_at_once_and_respawns() {
    let d = Daemon::start(&[]);
    assert_eq!(d.cli(&gen_args("a", "hi", "2")).code, Some(0));
    let pid = d.model("a")["pid"].as_i64().unwrap() as i32;
    let killed = Instant::now();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let m = d.wait_state("a", "failed", Duration::from_secs(5));
    let seen = killed.elapsed();
    eprintln!(
        "idle death → ps shows failed in {:.1} ms",
        seen.as_secs_f64() * 1e3
    );
    assert_eq!(m["last_failure"]["kind"], "killed_by_os", "{m:#}");
    assert_eq!(m["last_failure"]["phase"], "idle");
    assert!(m["pid"].is_null());
    // The next request respawns it (after a 1 s backoff) and succeeds.
    let out = d.cli(&gen_args("a", "hi", "2"));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let m = d.model("a");
    assert_eq!(m["state"], "ready");
    assert_ne!(m["pid"].as_i64().unwrap() as i32, pid);
}

#[test]
fn a_death_mid_generation_reaches_its_client_only() {
    let d = Daemon::start(&[]);
    let prompt = "Once upon a time";
    let expected = solo("b", prompt, "48");
    // Warm both, so the two requests overlap in time.
    assert_eq!(d.cli(&gen_args("a", "x", "1")).code, Some(0));
    assert_eq!(d.cli(&gen_args("b", "x", "1")).code, Some(0));
    let other = d.cli_cmd(&gen_args("b", prompt, "48")).spawn();
    let mut args = gen_args("a", prompt, "48");
    args.extend_from_slice(&["--inject-fault", "kill@decode:5"]);
    let dying = d.cli(&args);
    assert_eq!(dying.code, Some(4), "{}", dying.stderr);
    let f = &dying.named("failure")[0];
    assert_eq!(f["kind"], "killed_by_os");
    assert_eq!(f["phase"], "decode");
    assert_eq!(
        dying.named("token").len(),
        4,
        "every token before the death arrives"
    );
    let other = wait_out(other);
    assert_eq!(other.code, Some(0), "{}", other.stderr);
    assert_eq!(
        other.text(),
        expected,
        "the other model's stream is untouched"
    );
    assert_eq!(other.named("done")[0]["generated_tokens"], 48);
}

#[test]
fn three_crashes_quarantine_a_model_until_load_force() {
    let d = Daemon::start(&[]);
    let mut args = gen_args("a", "hi", "4");
    args.extend_from_slice(&["--inject-fault", "segv@decode:2"]);
    for i in 0..3 {
        let out = d.cli(&args);
        assert_eq!(out.code, Some(4), "crash {i}: {}", out.stderr);
        assert_eq!(out.named("failure")[0]["kind"], "crashed");
    }
    assert_eq!(d.model("a")["state"], "quarantined");
    let refused = d.cli(&gen_args("a", "hi", "2"));
    assert_eq!(refused.code, Some(4));
    let f = &refused.named("failure")[0];
    assert_eq!(f["kind"], "quarantined");
    assert!(f["message"].as_str().unwrap().contains("crashed"), "{f:#}");
    assert!(f["advice"].as_str().unwrap().contains("--force"), "{f:#}");
    assert_eq!(
        f["signal"], "SIGSEGV",
        "the last failure's evidence is kept"
    );
    let forced = d.cli(&["load", "a", "--force", "--context", "512", "--json"]);
    assert_eq!(forced.code, Some(0), "{}", forced.stderr);
    assert_eq!(d.cli(&gen_args("a", "hi", "2")).code, Some(0));
}

/// A worker that hangs (SIGSTOP) while its client goes away does not end the cancelled
/// request; the supervisor stops it after the cancel grace. That is the supervisor's own
/// decision: `unresponsive` in the phase it hung in, never `crashed`, and three in a row
/// do not quarantine the model.
#[test]
fn a_hung_worker_whose_client_leaves_is_unresponsive_and_never_quarantined() {
    let d = Daemon::start(&[]);
    for i in 0..3 {
        let mut child = d
            .cli_cmd(&[
                "generate",
                "a",
                "--json",
                "--prompt",
                "x",
                "--max-tokens",
                "32000",
                "--context",
                "32768",
            ])
            .spawn();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let line = lines.next().unwrap().unwrap();
            if line.contains("\"event\":\"token\"") {
                break;
            }
        }
        let pid = d.model("a")["pid"].as_i64().unwrap() as i32;
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        child.kill().unwrap();
        child.wait().unwrap();
        drop(lines);
        let m = d.wait_state("a", "failed", Duration::from_secs(30));
        let f = &m["last_failure"];
        assert_eq!(f["kind"], "unresponsive", "hang {i}: {m:#}");
        assert_eq!(f["phase"], "decode", "hang {i}: {m:#}");
        assert_eq!(f["signal"], "SIGKILL", "{f:#}");
        assert_eq!(f["signal_sent_by_supervisor"], true, "{f:#}");
        let advice = f["advice"].as_str().unwrap();
        assert!(
            advice.contains("cancelled request") && !advice.contains("bug"),
            "{advice}"
        );
        assert!(!d.workers().contains(&pid), "the hung worker is gone");
    }
    assert_eq!(d.model("a")["state"], "failed", "not quarantined");
    let out = d.cli(&gen_args("a", "hi", "4"));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.named("token").len(), 4);
    assert_eq!(d.model("a")["state"], "ready");
}

#[test]
fn a_memory_failure_at_load_is_retried_once_with_a_smaller_context() {
    let d = Daemon::start(&[]);
    let out = d.cli(&[
        "load",
        "a",
        "--context",
        "1024",
        "--json",
        "--inject-fault",
        "abort-metal-oom@load",
    ]);
    assert_eq!(out.code, Some(0), "{} {}", out.stdout, out.stderr);
    let m = out.json();
    assert_eq!(m["state"], "ready");
    assert_eq!(m["context"], 512);
    let note = m["note"].as_str().unwrap();
    assert!(
        note.contains("retried with context 512 after metal_out_of_memory during load"),
        "{note}"
    );
    assert_eq!(m["last_failure"]["kind"], "metal_out_of_memory");
    // A generation says so too.
    let g = d.cli(&gen_args("a", "hi", "2"));
    assert_eq!(g.named("done").len(), 1, "{}", g.stderr);
}

#[test]
fn sixteen_clients_on_two_models_each_get_the_solo_output() {
    let d = Daemon::start(&[]);
    let prompts = [
        "The quick brown fox",
        "Once upon a time",
        "Hello",
        "In 1905,",
    ];
    let mut expected = std::collections::HashMap::new();
    for m in ["a", "b"] {
        for p in prompts {
            expected.insert((m, p), solo(m, p, "16"));
        }
    }
    let mut clients = Vec::new();
    for i in 0..16 {
        let m = if i % 2 == 0 { "a" } else { "b" };
        let p = prompts[(i / 2) % prompts.len()];
        clients.push((m, p, d.cli_cmd(&gen_args(m, p, "16")).spawn()));
    }
    for (m, p, c) in clients {
        let out = wait_out(c);
        assert_eq!(out.code, Some(0), "{m} {p}: {}", out.stderr);
        assert_eq!(out.text(), expected[&(m, p)], "{m} {p}");
    }
    assert_eq!(d.model("a")["requests"], 8);
    assert_eq!(d.model("b")["requests"], 8);
}

#[test]
fn a_client_that_disconnects_cancels_its_request_only() {
    let d = Daemon::start(&[]);
    // A long generation, streamed; the client goes away after its first tokens.
    let mut child = d
        .cli_cmd(&[
            "generate",
            "a",
            "--json",
            "--prompt",
            "x",
            "--max-tokens",
            "32000",
            "--context",
            "32768",
        ])
        .spawn();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut tokens = 0;
    while tokens < 3 {
        let line = lines.next().unwrap().unwrap();
        if line.contains("\"event\":\"token\"") {
            tokens += 1;
        }
    }
    let gone = Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    drop(lines);
    let m = d.wait_state("a", "ready", Duration::from_secs(5));
    eprintln!(
        "disconnect → worker ready in {:.1} ms",
        gone.elapsed().as_secs_f64() * 1e3
    );
    assert!(m["last_failure"].is_null(), "a cancel is no failure: {m:#}");
    let out = d.cli(&gen_args("a", "hi", "4"));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.named("token").len(), 4);
}

#[test]
fn a_full_queue_is_busy_at_once() {
    let d = Daemon::start(&["--queue", "1"]);
    let stalled = stalled(&d, "a");
    d.wait_state("a", "busy", Duration::from_secs(10));
    let queued = d.cli_cmd(&gen_args("a", "x", "2")).spawn();
    let until = Instant::now() + Duration::from_secs(5);
    while d.model("a")["queued"] != 1 {
        assert!(Instant::now() < until, "never queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    let busy = d.cli(&gen_args("a", "x", "2"));
    assert!(t.elapsed() < Duration::from_secs(5), "busy must be at once");
    assert_eq!(busy.code, Some(4));
    let f = &busy.named("failure")[0];
    assert_eq!(f["kind"], "busy");
    assert!(
        f["advice"]
            .as_str()
            .unwrap()
            .contains("1 requests are queued"),
        "{f:#}"
    );
    for mut c in [stalled, queued] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Raw protocol peers: wrong version, garbage, oversized frames.
#[test]
fn bad_peers_lose_their_connection_and_the_daemon_serves_on() {
    use protocol::{
        control::{FromDaemon, ToDaemon},
        frame, handshake, Hello, Role, Version,
    };
    let d = Daemon::start(&[]);
    // A client from the future: the daemon's hello names its version; both sides refuse.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    let mut r = s.try_clone().unwrap();
    let future = Hello {
        version: Version { major: 9, minor: 0 },
        ..Hello::ours(Role::Client, "future")
    };
    let err =
        handshake::handshake_sync::<ToDaemon, FromDaemon>(&mut r, &mut s, future).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("9.0") && msg.contains("1.0"), "{msg}");
    let mut buf = [0u8; 64];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        r.read(&mut buf).unwrap_or(0),
        0,
        "the daemon closes the connection"
    );

    // Garbage after a good handshake.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    let mut r = s.try_clone().unwrap();
    let ours = Hello {
        version: protocol::control::version::CURRENT,
        ..Hello::ours(Role::Client, "test")
    };
    handshake::handshake_sync::<ToDaemon, FromDaemon>(&mut r, &mut s, ours.clone()).unwrap();
    s.write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).unwrap();
    r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(matches!(
        frame::read_sync::<FromDaemon>(&mut r),
        Ok(None) | Err(_)
    ));

    // An oversized frame is refused from its header, before anything is allocated.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    let mut r = s.try_clone().unwrap();
    handshake::handshake_sync::<ToDaemon, FromDaemon>(&mut r, &mut s, ours).unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(matches!(
        frame::read_sync::<FromDaemon>(&mut r),
        Ok(None) | Err(_)
    ));

    // Garbage before any handshake.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    drop(s);

    let st = d.cli(&["status", "--json"]);
    assert_eq!(st.code, Some(0), "still serving: {}", st.stderr);
    let log = d.wait_log("closing a client connection", Duration::from_secs(5));
    assert!(log.contains("closing a client connection"), "{log}");
}

#[test]
fn another_user_is_refused_and_logged() {
    let d = Daemon::start(&[]);
    // uid 65534 with just enough capability to reach the private socket directory: the
    // daemon's own uid check is what must refuse it.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+dac_override",
            "--ambient-caps=+dac_override",
        ])
        .arg(bin("mlxsup"))
        .args(["status", "--socket", d.socket.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refused") && err.contains("uid 65534"),
        "{err}"
    );
    let log = d.wait_log(
        "refused a connection from another user",
        Duration::from_secs(5),
    );
    assert!(
        log.contains("refused a connection from another user"),
        "{log}"
    );
    assert_eq!(d.cli(&["status"]).code, Some(0));
}

#[test]
fn sigterm_exits_0_and_leaves_nothing_behind() {
    let mut d = Daemon::start(&[]);
    assert_eq!(d.cli(&gen_args("a", "hi", "2")).code, Some(0));
    assert_eq!(d.cli(&gen_args("b", "hi", "2")).code, Some(0));
    // A request in flight gets a clear shutting_down.
    let inflight = stalled(&d, "c");
    d.wait_state("c", "busy", Duration::from_secs(10));
    assert_eq!(d.workers().len(), 3, "{:?}", d.ps());
    let status = d.stop_with(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "{}", d.log());
    let out = wait_out(inflight);
    assert_eq!(out.code, Some(4), "{} {}", out.stdout, out.stderr);
    assert_eq!(out.named("failure")[0]["kind"], "shutting_down");
    assert!(!d.socket.exists(), "the socket is removed");
    assert!(d.workers().is_empty(), "workers left: {:?}", d.workers());
}

#[test]
fn sigkill_leaves_no_orphan_and_a_new_daemon_takes_the_stale_socket() {
    let mut d = Daemon::start(&[]);
    assert_eq!(d.cli(&gen_args("a", "hi", "2")).code, Some(0));
    assert_eq!(d.workers().len(), 1);
    d.stop_with(libc::SIGKILL);
    let killed = Instant::now();
    while !d.workers().is_empty() {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "orphan workers: {:?}",
            d.workers()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "daemon SIGKILL → no worker in {:.1} ms",
        killed.elapsed().as_secs_f64() * 1e3
    );
    assert!(d.socket.exists(), "a killed daemon leaves its socket");
    // A new daemon replaces the stale socket and serves.
    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
    let d2 = Daemon::start_in(dir, &[]);
    assert_eq!(d2.cli(&["status"]).code, Some(0));
    // A second daemon on the same socket: exit 1 naming the running pid.
    let second = Command::new(bin("mlxsup"))
        .args(["serve", "--socket", d2.socket.to_str().unwrap()])
        .env("MLXSUP_RUNTIME_DIR", d2.dir.path().join("r"))
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains(&format!("pid {}", d2.pid())), "{err}");
    assert_eq!(
        d2.cli(&["status"]).code,
        Some(0),
        "the first one still serves"
    );
}

#[test]
fn the_device_policy_retries_a_gpu_memory_failure_on_the_cpu() {
    // On this CPU-only build `gpu` is the CPU already; what is tested is the policy: the
    // retry asks the worker for the CPU device and keeps the context.
    let d = Daemon::start(&["--fallback-cpu"]);
    let out = d.cli(&[
        "load",
        "a",
        "--context",
        "1024",
        "--device",
        "gpu",
        "--json",
        "--inject-fault",
        "abort-metal-oom@load",
    ]);
    assert_eq!(out.code, Some(0), "{} {}", out.stdout, out.stderr);
    let m = out.json();
    assert_eq!(m["context"], 1024, "{m:#}");
    assert_eq!(m["device"], "cpu");
    assert!(
        m["note"]
            .as_str()
            .unwrap()
            .contains("retried on the CPU device after metal_out_of_memory during load"),
        "{m:#}"
    );
}

#[test]
fn a_prompt_longer_than_the_loaded_context_is_refused_and_the_model_serves_on() {
    let d = Daemon::start(&[]);
    assert_eq!(d.cli(&gen_args("a", "hi", "2")).code, Some(0));
    // Loaded at context 512: 600 tokens asked for do not fit.
    let out = d.cli(&gen_args("a", "hi", "600"));
    assert_eq!(out.code, Some(3), "{} {}", out.stdout, out.stderr);
    let f = &out.named("failure")[0];
    assert_eq!(f["kind"], "context_length_exceeded");
    assert!(f["remedy"]["min_context"].as_u64().unwrap() > 600, "{f:#}");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("over the context of 512"),
        "{f:#}"
    );
    let m = d.model("a");
    assert_eq!(m["state"], "ready");
    assert!(
        m["last_failure"].is_null(),
        "a refused request is no failure of the model"
    );
    assert_eq!(d.cli(&gen_args("a", "hi", "2")).code, Some(0));
}

/// A request whose memory failure repeats (here: it allocates more than its worker may
/// hold, every time) is retried once with a smaller context, then fails to its client;
/// the model is not retried into quarantine, and the next request is served.
#[test]
fn a_repeating_memory_failure_is_retried_once_then_reported() {
    let d = Daemon::start(&["--budget", "512MiB"]);
    let mut args = gen_args("a", "hi", "4");
    args.extend_from_slice(&["--inject-fault", "alloc:1GiB@prefill"]);
    let out = d.cli(&args);
    assert_eq!(out.code, Some(4), "{} {}", out.stdout, out.stderr);
    assert_eq!(out.named("failure")[0]["kind"], "memory_ceiling_exceeded");
    let notes = out.named("note");
    assert_eq!(notes.len(), 1, "one retry: {notes:?}");
    assert!(
        notes[0]["text"]
            .as_str()
            .unwrap()
            .contains("retried with context 256"),
        "{notes:?}"
    );
    assert_eq!(d.model("a")["state"], "failed");
    let next = d.cli(&gen_args("a", "hi", "4"));
    assert_eq!(next.code, Some(0), "{}", next.stderr);
}

/// A client naming a hostile folder (its config a FIFO) gets an error at once; the
/// daemon neither blocks on it nor spawns a worker for it.
#[test]
fn a_hostile_folder_is_an_error_and_the_daemon_never_blocks_on_it() {
    let d = Daemon::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("config.json");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let t = Instant::now();
    let out = d.cli(&gen_args(dir.path().to_str().unwrap(), "hi", "2"));
    assert!(t.elapsed() < Duration::from_secs(30), "blocked on the FIFO");
    assert_eq!(out.code, Some(5), "{} {}", out.stdout, out.stderr);
    assert!(out.stderr.contains("FIFO"), "{}", out.stderr);
    assert!(
        d.workers().is_empty(),
        "no worker for a model that cannot be read"
    );
    assert_eq!(d.cli(&["status"]).code, Some(0));
}

/// Issue 21: a client that stops reading its stream is dropped with an error. Its request
/// is cancelled, not served to the end (the daemon holds at most a bounded buffer for
/// it, and its worker does not wait on it); the model serves the next client; the error
/// is there when the slow client reads again.
#[test]
fn a_client_that_stops_reading_is_dropped_with_an_error_and_others_are_served() {
    use protocol::{
        control::{
            ControlEvent, ControlReply, ControlRequest, FromDaemon, GenerateModel, ToDaemon,
        },
        frame, handshake, ComputePolicy, Device, Event, FailureKind, GenerateRequest, Hello,
        Prompt, Role, Sampling,
    };
    let d = Daemon::start(&[]);
    let mut s = UnixStream::connect(&d.socket).unwrap();
    let mut r = s.try_clone().unwrap();
    let ours = Hello {
        version: protocol::control::version::CURRENT,
        ..Hello::ours(Role::Client, "slow")
    };
    let theirs =
        handshake::handshake_sync::<ToDaemon, FromDaemon>(&mut r, &mut s, ours.clone()).unwrap();
    let wire = protocol::wire::Wire::negotiate(
        ours.version,
        theirs.version,
        protocol::wire::Proto::Control,
    );
    let max_tokens = 4000;
    let body = ControlRequest::Generate(GenerateModel {
        model: "a".into(),
        request: GenerateRequest {
            prompt: Prompt::Text("Once upon a time".into()),
            max_tokens,
            sampling: Sampling::default(),
            stop: Vec::new(),
            fault: None,
            images: Vec::new(),
        },
        context: Some(8192),
        keep_alive: None,
        force: false,
        device: Device::Default,
        compute: ComputePolicy::Auto,
        kv_bits: None,
    });
    frame::write_sync_at(&mut s, &ToDaemon::Request { id: 1, body }, wire).unwrap();
    // It reads nothing from now on.
    let log = d.wait_log("does not read its stream", Duration::from_secs(120));
    assert!(log.contains("does not read its stream"), "{log}");
    d.wait_state("a", "ready", Duration::from_secs(30));
    let out = d.cli(&gen_args("a", "hi", "2"));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        d.model("a")["requests"],
        1,
        "the slow client's request was cancelled, not served"
    );
    // Reading again: what was buffered, then the error.
    r.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut tokens = 0;
    let reply = loop {
        match frame::read_sync_at::<FromDaemon>(&mut r, wire).unwrap() {
            Some(FromDaemon::Event {
                event: ControlEvent::Worker(Event::Token { .. }),
                ..
            }) => tokens += 1,
            Some(FromDaemon::Reply { id: 1, body }) => break body,
            Some(_) => {}
            None => panic!("the connection closed before the reply"),
        }
    };
    match reply {
        ControlReply::Failed(f) => assert_eq!(f.kind, FailureKind::SlowClient, "{f:?}"),
        other => panic!("not the slow_client failure: {other:?}"),
    }
    assert!(tokens < max_tokens, "{tokens} tokens: nothing was cut");
}

/// Issue 21: `unload` during a load abandons it: the load's client gets `unloaded` at
/// once, the worker that was loading (stalled here, so it would never finish) is
/// stopped, and the model is unloaded and loads again on the next request.
#[test]
fn unload_during_a_load_abandons_it_and_stops_its_worker() {
    let d = Daemon::start(&[]);
    let load = d
        .cli_cmd(&["load", "a", "--json", "--inject-fault", "stall@load"])
        .spawn();
    d.wait_state("a", "loading", Duration::from_secs(30));
    let un = d.cli(&["unload", "a", "--json"]);
    assert_eq!(un.code, Some(0), "{}", un.stderr);
    assert_eq!(un.json()["state"], "unloaded");
    let out = wait_out(load);
    assert_eq!(out.code, Some(4), "{} {}", out.stdout, out.stderr);
    let f = &out.named("failure")[0];
    assert_eq!(f["kind"], "unloaded", "{f:#}");
    let until = Instant::now() + Duration::from_secs(60);
    while !d.workers().is_empty() {
        assert!(Instant::now() < until, "the loading worker was not stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.model("a")["state"], "unloaded");
    let again = d.cli(&gen_args("a", "hi", "2"));
    assert_eq!(again.code, Some(0), "{}", again.stderr);
}
