//! Hostile and careless input against the real binaries: implausible numbers in the
//! config, files that are FIFOs, devices, directories, oversized or garbage, index
//! entries escaping the folder, runaway templates, bad sampling arguments.
//!
//! Every case asserts the documented exit code and a message naming the problem, no
//! "panicked" text, an end within a generous hang guard (not a timing test) and a peak
//! RSS under a bound (from `wait4`). Cases the preflight must catch run with
//! `MLXSUP_WORKER` pointing nowhere: were a worker spawned, the exit code would differ.
#![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use mlxsup_tests::{mlxsup_guarded, tiny_model, GuardedRun};

#[path = "hostile/args.rs"]
mod args;
#[path = "hostile/files.rs"]
mod files;
#[path = "hostile/missing.rs"]
mod missing;
#[path = "hostile/numbers.rs"]
mod numbers;
#[path = "hostile/templates.rs"]
mod templates;
#[path = "hostile/worker.rs"]
mod worker;
use serde_json::Value;

/// The hang guard: far above any case's real duration.
pub(crate) const HANG_GUARD: Duration = Duration::from_secs(60);
/// Peak RSS allowed to any case.
pub(crate) const RSS_BOUND: u64 = 200 << 20;
/// A worker path that does not exist: a case that spawns one cannot end in exit 5.
pub(crate) const NO_WORKER: (&str, &str) = ("MLXSUP_WORKER", "/nonexistent/mlxsup-worker");

/// A fresh copy of the tiny model, to be damaged.
pub(crate) fn model() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m");
    std::fs::create_dir(&m).unwrap();
    for e in std::fs::read_dir(tiny_model()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), m.join(e.file_name())).unwrap();
    }
    (d, m)
}

pub(crate) fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

pub(crate) fn config(m: &Path, field: &str, value: Value) {
    edit_json(&m.join("config.json"), |c| c[field] = value);
}

pub(crate) fn replace_with_fifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

pub(crate) fn replace_with_link(path: &Path, target: &str) {
    let _ = std::fs::remove_file(path);
    std::os::unix::fs::symlink(target, path).unwrap();
}

pub(crate) fn replace_with_dir(path: &Path) {
    let _ = std::fs::remove_file(path);
    std::fs::create_dir(path).unwrap();
}

/// A sparse file of `len` bytes (never written, never read by a correct reader).
pub(crate) fn replace_with_sparse(path: &Path, len: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
}

pub(crate) fn garbage(path: &Path) {
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(path, bytes).unwrap();
}

/// Runs `mlxsup ARGS` under the guard and checks what every case must hold.
pub(crate) fn check(args: &[&str], env: &[(&str, &str)], code: i32, needle: &str) -> GuardedRun {
    let r = mlxsup_guarded(args, env, HANG_GUARD);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(!r.timed_out, "{args:?} hung; killed after {:?}", r.elapsed);
    assert!(!all.contains("panicked"), "{args:?} panicked:\n{all}");
    assert_eq!(r.code, Some(code), "{args:?}:\n{all}");
    assert!(
        r.peak_rss_bytes < RSS_BOUND,
        "{args:?}: peak RSS {} bytes",
        r.peak_rss_bytes
    );
    assert!(all.contains(needle), "{args:?}: no {needle:?} in:\n{all}");
    r
}

/// `inspect` of the damaged model.
pub(crate) fn inspect(m: &Path, code: i32, needle: &str) {
    check(&["inspect", m.to_str().unwrap()], &[], code, needle);
}

/// `run` of the damaged model, which the preflight must refuse: no worker exists.
pub(crate) fn run_refused(m: &Path, extra: &[&str], code: i32, needle: &str) {
    let mut args = vec!["run", m.to_str().unwrap(), "--max-tokens", "1"];
    args.extend_from_slice(extra);
    check(&args, &[NO_WORKER], code, needle);
}

/// `run` with a real worker.
pub(crate) fn run_real(m: &Path, extra: &[&str], code: i32, needle: &str) {
    let mut args = vec!["run", m.to_str().unwrap(), "--max-tokens", "1"];
    args.extend_from_slice(extra);
    let r = check(&args, &[], code, needle);
    // The RSS bound means something only if the measurement does.
    assert!(
        r.peak_rss_bytes > 1 << 20,
        "peak RSS {} bytes",
        r.peak_rss_bytes
    );
}

/// One hostile case: a fresh copy of the tiny model as `m`, damaged by the body.
macro_rules! case {
    ($name:ident, |$m:ident| $body:block) => {
        #[test]
        fn $name() {
            let (_keep, $m) = model();
            let $m: &Path = &$m;
            $body
        }
    };
}
pub(crate) use case;

pub(crate) const U64_MAX: u64 = u64::MAX;

/// The guard itself can fail a case: a worker told to hang, with the supervisor's own
/// timeouts set far away, is killed by the guard and reported as timed out.
#[test]
fn the_hang_guard_kills_a_hang() {
    let m = tiny_model().to_str().unwrap();
    let r = mlxsup_guarded(
        &[
            "run",
            m,
            "--max-tokens",
            "1",
            "--inject-fault",
            "hang@load",
            "--heartbeat-timeout-ms",
            "600000",
            "--stall-timeout-ms",
            "600000",
        ],
        &[],
        Duration::from_secs(3),
    );
    assert!(r.timed_out, "{r:?}");
    assert_eq!(r.signal, Some(libc::SIGKILL), "{r:?}");
}
