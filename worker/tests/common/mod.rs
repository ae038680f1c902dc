//! What the mlx-lm parity tests share: the token collector, the project's Python and the
//! reference scripts' JSON round trip.
#![allow(dead_code)] // Each test binary uses its part.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use protocol::{Phase, WorkerError};
use serde_json::Value;
use worker::engine::Hooks;

/// Collects the generated token ids.
pub struct Collect(pub Vec<u32>);

impl Hooks for Collect {
    fn before_step(&mut self, _: Phase, _: u32, _: u64) -> Result<(), WorkerError> {
        Ok(())
    }
    fn token(&mut self, id: u32, _: &str) {
        self.0.push(id);
    }
}

/// The project's Python (`.venv`, with mlx and mlx-lm).
pub fn python() -> PathBuf {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: the mlx-lm reference needs the project's Python environment; run make setup",
        py.display()
    );
    py
}

/// Runs `tests/{script}` with `jobs` as JSON on stdin; its JSON array of results.
pub fn run_python(script: &str, jobs: &Value) -> Vec<Value> {
    let mut child = Command::new(python())
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join(script),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the mlx-lm reference");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(jobs.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mlx-lm reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("reference output is JSON")
}

/// A JSON array of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}
