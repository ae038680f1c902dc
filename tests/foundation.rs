//! The foundation: the worker really links MLX and runs without LD_LIBRARY_PATH, the
//! supervisor never links it, and the two talk: handshake, SystemInfo, a checked MLX
//! computation, clean exit on Shutdown and on socket EOF.
#![allow(clippy::unwrap_used)]

use std::{
    process::Command,
    time::{Duration, Instant},
};

use mlxsup_tests::{bin, mlxsup, start_worker};
use protocol::{frame, FromWorker, Reply, Request, Role, ToWorker};

#[test]
fn worker_reports_mlx_version_without_ld_library_path() {
    let out = Command::new(bin("mlxsup-worker"))
        .arg("--version")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("MLX 0.32.2"), "{text}");
}

fn needed_libs(path: &std::path::Path) -> String {
    let out = Command::new("ldd").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn only_the_worker_links_mlx() {
    let worker = needed_libs(&bin("mlxsup-worker"));
    assert!(worker.contains("libmlx.so"), "{worker}");
    assert!(!worker.contains("not found"), "{worker}");
    let supervisor = needed_libs(&bin("mlxsup"));
    assert!(
        !supervisor.contains("libmlx"),
        "the supervisor links MLX:\n{supervisor}"
    );
}

/// Σ(A·B) for the matrices of `Request::Matmul`, by the naive triple loop.
fn naive_sum(n: u64) -> f64 {
    let mut sum = 0u64;
    for i in 0..n {
        for j in 0..n {
            for k in 0..n {
                sum += ((i + 2 * k) % 7) * ((3 * k + j) % 5);
            }
        }
    }
    sum as f64
}

#[test]
fn info_round_trips_through_a_real_worker() {
    let run = mlxsup(&["info", "--json", "--matmul", "96"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["system"]["mlx_version"], "0.32.2");
    assert!(v["system"]["total_memory"].as_u64().unwrap() > 1 << 30);
    assert_eq!(v["matmul"]["sum"].as_f64().unwrap(), naive_sum(96));
    assert_eq!(v["matmul"]["ok"], true);
    assert!(run.leftover_sockets().is_empty());
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

#[test]
fn worker_answers_system_info_and_exits_on_shutdown() {
    let (mut child, mut stream, _dir, peer) = start_worker();
    assert_eq!(peer.role, Role::Worker);
    assert_eq!(peer.pid, child.id());
    frame::write_sync(
        &mut stream,
        &ToWorker::Request {
            id: 7,
            body: Request::SystemInfo,
        },
    )
    .unwrap();
    let reply = loop {
        match frame::read_sync::<FromWorker>(&mut stream)
            .unwrap()
            .unwrap()
        {
            FromWorker::Reply { id, body } => break (id, body),
            FromWorker::Event { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    match reply {
        (7, Reply::SystemInfo(info)) => {
            assert_eq!(info.mlx_version, "0.32.2");
            assert_eq!(info.device, "cpu");
            assert_eq!(info.pid, child.id());
        }
        other => panic!("unexpected reply {other:?}"),
    }
    frame::write_sync(&mut stream, &ToWorker::Shutdown).unwrap();
    let status =
        wait_exit(&mut child, Duration::from_secs(5)).expect("worker did not exit on Shutdown");
    assert!(status.success(), "{status:?}");
}

#[test]
fn worker_exits_when_its_supervisor_goes_away() {
    let (mut child, stream, _dir, _) = start_worker();
    drop(stream);
    let status = wait_exit(&mut child, Duration::from_secs(5)).expect("worker outlived its socket");
    assert!(status.success(), "{status:?}");
}

#[test]
fn worker_without_socket_is_a_usage_error() {
    let out = Command::new(bin("mlxsup-worker")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--socket"));
}
