//! A real `mlxsup serve` for the end-to-end tests: its own private runtime dir, the CLI
//! clients pointed at it, JSON-lines output read back, four tiny models made once.

use std::{
    io::{BufRead, BufReader, Read},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{bin, processes_mentioning, TINY_SHAPE};

/// A running daemon with its own private runtime dir; killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    pid: i32,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    pub fn start(extra: &[&str]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("d")
            .tempdir_in("/tmp")
            .unwrap();
        Daemon::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Daemon {
        Daemon::start_env(dir, extra, &[])
    }

    /// [`Daemon::start_in`] with extra environment variables for the daemon.
    pub fn start_env(dir: tempfile::TempDir, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let socket = dir.path().join("r/mlxsup.sock");
        let mut cmd = Command::new(bin("mlxsup"));
        cmd.envs(env.iter().copied());
        cmd.arg("serve")
            .arg("--models")
            .arg(models_dir())
            .args(extra)
            .env("MLXSUP_RUNTIME_DIR", dir.path().join("r"))
            .env("MLXSUP_SOCKET", &socket)
            .env("MLXSUP_LOG", "mlxsup=info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let d = Daemon {
            pid: child.id() as i32,
            child: Some(child),
            dir,
            socket,
            stderr,
        };
        d.wait_ready();
        d
    }

    pub fn wait_ready(&self) {
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the daemon did not listen: {}", self.log());
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The log once it contains `needle` (or as it is after `within`): the daemon's
    /// stderr reaches it through a reader thread, a moment after the daemon wrote it.
    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        let until = Instant::now() + within;
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() > until {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The base URL of the HTTP front (`serve --http`), as the daemon announced it.
    pub fn http_base(&self) -> Option<String> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if let Some(rest) = log.split("HTTP (OpenAI API) on ").nth(1) {
                return rest.split_whitespace().next().map(str::to_string);
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Runs an `mlxsup` client command against this daemon.
    pub fn cli(&self, args: &[&str]) -> Out {
        self.cli_cmd(args).run()
    }

    pub fn cli_cmd(&self, args: &[&str]) -> Cmd {
        let mut cmd = Command::new(bin("mlxsup"));
        cmd.args(args)
            .env("MLXSUP_RUNTIME_DIR", self.dir.path().join("r"))
            .env("MLXSUP_SOCKET", &self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Cmd(cmd)
    }

    pub fn ps(&self) -> Vec<Value> {
        let out = self.cli(&["ps", "--json"]);
        assert_eq!(out.code, Some(0), "ps: {}", out.stderr);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        v["models"].as_array().unwrap().clone()
    }

    pub fn model(&self, name: &str) -> Value {
        self.ps()
            .into_iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not in ps: {:?}", self.ps()))
    }

    pub fn wait_state(&self, name: &str, state: &str, within: Duration) -> Value {
        let until = Instant::now() + within;
        loop {
            let m = self
                .ps()
                .into_iter()
                .find(|m| m["name"] == name)
                .unwrap_or(Value::Null);
            if m["state"] == state {
                return m;
            }
            assert!(Instant::now() < until, "{name} never became {state}: {m:#}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Workers of this daemon still alive.
    pub fn workers(&self) -> Vec<i32> {
        processes_mentioning(&self.dir.path().to_string_lossy())
            .into_iter()
            .filter(|&p| p != self.pid())
            .collect()
    }

    pub fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Cmd(pub Command);

pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn named(&self, name: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }

    pub fn text(&self) -> String {
        self.named("token")
            .iter()
            .map(|t| t["text"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.stdout, self.stderr))
    }
}

impl Cmd {
    pub fn run(mut self) -> Out {
        let o = self.0.output().unwrap();
        Out {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn spawn(mut self) -> Child {
        self.0.spawn().unwrap()
    }
}

pub fn wait_out(mut child: Child) -> Out {
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    Out {
        code: status.code(),
        stdout,
        stderr,
    }
}

/// Four tiny models (a–d, two families), made once per test binary.
pub fn models_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = crate::process_tempdir();
        for (name, arch) in [
            ("a", "qwen3"),
            ("b", "llama"),
            ("c", "qwen2"),
            ("d", "mistral"),
        ] {
            let out = Command::new(bin("mlxsup"))
                .args(["make-model"])
                .arg(dir.join(name))
                .args(["--arch", arch])
                .args(TINY_SHAPE)
                .env("MLXSUP_RUNTIME_DIR", dir.join("rt"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        dir
    })
}

pub fn model_path(name: &str) -> String {
    models_dir().join(name).display().to_string()
}

/// The estimate of a tiny model at `context`, from `inspect`.
pub fn estimate_at(context: u64) -> u64 {
    let out = Command::new(bin("mlxsup"))
        .args([
            "inspect",
            &model_path("a"),
            "--json",
            "--context",
            &context.to_string(),
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["total_bytes"].as_u64().unwrap()
}

pub fn gen_args<'a>(model: &'a str, prompt: &'a str, tokens: &'a str) -> Vec<&'a str> {
    vec![
        "generate",
        model,
        "--json",
        "--prompt",
        prompt,
        "--max-tokens",
        tokens,
        "--context",
        "512",
    ]
}

/// A greedy run of `model` through `mlxsup run` alone: the reference output.
pub fn solo(model: &str, prompt: &str, tokens: &str) -> String {
    let model = model_path(model);
    let mut args = gen_args(&model, prompt, tokens);
    args[0] = "run";
    let out = Command::new(bin("mlxsup"))
        .args(&args)
        .env("MLXSUP_RUNTIME_DIR", models_dir().join("rt"))
        .output()
        .unwrap();
    let o = Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    o.text()
}

/// Runs a scenario of tests/http_client.py (the real `openai` client) against `base`; its
/// JSON observations.
pub fn openai(base: &str, scenario: &str, args: &[&str]) -> serde_json::Value {
    let py = crate::repo().join(".venv/bin/python");
    let out = std::process::Command::new(&py)
        .arg(crate::repo().join("tests/http_client.py"))
        .arg(base)
        .arg(scenario)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (make setup installs it)", py.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{scenario}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{scenario}: not JSON ({e}): {stdout}"))
}

/// A daemon serving HTTP on a free loopback port too, and its `/v1` base URL.
pub fn http(extra: &[&str]) -> (Daemon, String) {
    let mut args = vec!["--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let d = Daemon::start(&args);
    let base = d
        .http_base()
        .unwrap_or_else(|| panic!("the daemon names no HTTP address"));
    (d, base)
}
