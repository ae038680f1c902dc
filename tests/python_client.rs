//! The Python client (clients/python, standard library only) against a real daemon: its
//! unittest suite runs status, ps, load, a streaming generate, a cancel and failures.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use mlxsup_tests::{daemon::Daemon, repo};

#[test]
fn the_python_client_passes_its_tests_against_a_real_daemon() {
    let d = Daemon::start(&[]);
    let out = Command::new("python3")
        .args(["-m", "unittest", "-v", "test_mlxsup_client"])
        .current_dir(repo().join("clients/python"))
        .env("MLXSUP_SOCKET", &d.socket)
        .env("MLXSUP_TEST_MODELS", "a,b,c")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}\n--- daemon ---\n{}", d.log());
    // Every test ran against the daemon: none was skipped for want of it.
    assert!(!log.contains("skipped"), "{log}");
    assert!(log.contains("Ran 9 tests"), "{log}");
}
