//! Helpers for the end-to-end tests: the real `mlxsup` and `mlxsup-worker` binaries from
//! this build, a tiny model made once per test binary, runs read as JSON Lines with the
//! time each line arrived, and checks that nothing was left behind.
#![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

#[path = "daemon_harness.rs"]
pub mod daemon;

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, SystemTime},
};

use serde_json::Value;

/// The directory holding this build's binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/<test>-<hash>
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// A binary of this build; fails with the command to run when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (make test does)",
        p.display()
    );
    p
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// One finished `mlxsup` run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// JSON Lines from stdout, each with the time it arrived.
    pub events: Vec<(SystemTime, Value)>,
    pub stdout: String,
    pub stderr: String,
    /// The private runtime dir the run used (kept until the Run is dropped).
    pub runtime_dir: tempfile::TempDir,
}

impl Run {
    /// The events named `name`.
    pub fn named(&self, name: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|(_, e)| e["event"] == name)
            .map(|(_, e)| e)
            .collect()
    }

    /// The one `failure` event and when it arrived.
    pub fn failure(&self) -> Option<(SystemTime, &Value)> {
        self.events
            .iter()
            .find(|(_, e)| e["event"] == "failure")
            .map(|(t, e)| (*t, e))
    }

    /// Socket files left in the runtime dir.
    pub fn leftover_sockets(&self) -> Vec<String> {
        std::fs::read_dir(self.runtime_dir.path().join("r"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Processes still alive whose command line names this run's runtime dir (its
    /// workers), after waiting up to a second for them to go.
    pub fn orphans(&self) -> Vec<i32> {
        let needle = self.runtime_dir.path().to_string_lossy().into_owned();
        for _ in 0..20 {
            let found = processes_mentioning(&needle);
            if found.is_empty() {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        processes_mentioning(&needle)
    }
}

/// Live (non-zombie) processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.filter_map(|e| e.ok()) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmd).contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// Runs `mlxsup ARGS` with a fresh private runtime dir; stdout lines that are JSON are
/// collected with their arrival time.
pub fn mlxsup(args: &[&str]) -> Run {
    mlxsup_env(args, &[])
}

/// `mlxsup ARGS` with a fresh private runtime dir (kept alive by the returned guard),
/// stdin closed, stdout and stderr piped.
fn mlxsup_command(args: &[&str]) -> (Command, tempfile::TempDir) {
    let runtime_dir = tempfile::Builder::new()
        .prefix("rt")
        .tempdir_in("/tmp")
        .unwrap();
    let mut cmd = Command::new(bin("mlxsup"));
    cmd.args(args)
        .env("MLXSUP_RUNTIME_DIR", runtime_dir.path().join("r"))
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    (cmd, runtime_dir)
}

pub fn mlxsup_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let (mut cmd, runtime_dir) = mlxsup_command(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    collect(cmd, runtime_dir)
}

/// A process limit, as `ulimit` sets it for a shell's children.
#[derive(Clone, Copy, Debug)]
pub enum Rlimit {
    /// `ulimit -v`: `RLIMIT_AS`, bytes.
    As(u64),
    /// `ulimit -d`: `RLIMIT_DATA`, bytes.
    Data(u64),
}

/// `mlxsup ARGS` run under `limit` (inherited by its workers, as after `ulimit -v`).
pub fn mlxsup_limited(args: &[&str], limit: Rlimit) -> Run {
    use std::os::unix::process::CommandExt;
    let (mut cmd, runtime_dir) = mlxsup_command(args);
    let (resource, bytes) = match limit {
        Rlimit::As(b) => (libc::RLIMIT_AS, b),
        Rlimit::Data(b) => (libc::RLIMIT_DATA, b),
    };
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(resource, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    collect(cmd, runtime_dir)
}

/// Runs `cmd` to its end, collecting its JSON stdout lines with their arrival time.
fn collect(mut cmd: Command, runtime_dir: tempfile::TempDir) -> Run {
    let mut child = cmd.spawn().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let mut events = Vec::new();
    let mut stdout = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let at = SystemTime::now();
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            events.push((at, v));
        }
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    Run {
        code: status.code(),
        signal: status.signal(),
        events,
        stdout,
        stderr: err_thread.join().unwrap(),
        runtime_dir,
    }
}

/// The shape of the tests' tiny models (`make-model` flags): ~0.3M parameters.
pub const TINY_SHAPE: [&str; 12] = [
    "--hidden",
    "64",
    "--layers",
    "2",
    "--heads",
    "4",
    "--kv-heads",
    "2",
    "--intermediate",
    "128",
    "--vocab",
    "512",
];

/// A tiny bf16 model (qwen3-shaped, ~0.3M parameters), made once per test binary with
/// `mlxsup make-model`.
pub fn tiny_model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = process_tempdir().join("tiny");
        let mut args = vec!["make-model", path.to_str().unwrap(), "--arch", "qwen3"];
        args.extend_from_slice(&TINY_SHAPE);
        let run = mlxsup(&args);
        assert_eq!(run.code, Some(0), "make-model failed: {}", run.stderr);
        path
    })
}

/// A temporary directory for what a test binary makes once (models, in statics, which
/// are never dropped): removed when the process exits, pass or fail (`atexit`), so runs
/// leave nothing in the temp dir.
pub fn process_tempdir() -> PathBuf {
    static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static REGISTER: std::sync::Once = std::sync::Once::new();
    extern "C" fn remove_all() {
        if let Ok(dirs) = DIRS.lock() {
            for d in dirs.iter() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    REGISTER.call_once(|| {
        // SAFETY: registers a plain function; it only touches the mutex above.
        unsafe { libc::atexit(remove_all) };
    });
    let dir = tempfile::tempdir().unwrap().keep();
    DIRS.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(dir.clone());
    dir
}

/// Starts the real worker on a socket of the test's own and handshakes with it, as a
/// supervisor would: (process, connected stream, the socket's directory, its hello).
pub fn start_worker() -> (
    std::process::Child,
    std::os::unix::net::UnixStream,
    tempfile::TempDir,
    protocol::Hello,
) {
    use protocol::{handshake, FromWorker, Hello, Role, ToWorker};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let child = Command::new(bin("mlxsup-worker"))
        .arg("--socket")
        .arg(&path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (mut stream, _) = listener.accept().unwrap();
    let mut reader = stream.try_clone().unwrap();
    let peer = handshake::handshake_sync::<ToWorker, FromWorker>(
        &mut reader,
        &mut stream,
        Hello::ours(Role::Supervisor, "test"),
    )
    .unwrap();
    (child, stream, dir, peer)
}

/// The `unix_us=` timestamp the worker writes when it injects a fault.
pub fn fault_time(stderr_tail: &str) -> Option<SystemTime> {
    let us: u64 = stderr_tail
        .lines()
        .find_map(|l| l.split("unix_us=").nth(1))?
        .trim()
        .parse()
        .ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_micros(us))
}

/// One `mlxsup` run under a hang guard, with its peak RSS.
#[derive(Debug)]
pub struct GuardedRun {
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Peak resident set of the process (and the children it waited for), from `wait4`.
    pub peak_rss_bytes: u64,
    /// Whether the guard had to kill it.
    pub timed_out: bool,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Runs `mlxsup ARGS` (with `env` added) in its own process group; after `limit` the
/// whole group is killed and `timed_out` is set. Peak RSS comes from `wait4`'s rusage.
#[allow(clippy::zombie_processes)] // Reaped by `wait4` below, not by `Child::wait`.
pub fn mlxsup_guarded(args: &[&str], env: &[(&str, &str)], limit: Duration) -> GuardedRun {
    use std::os::unix::process::CommandExt;
    let (mut cmd, _runtime_dir) = mlxsup_command(args);
    cmd.process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = std::time::Instant::now();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            // Bounded: a runaway writer cannot make the test itself grow without end.
            let _ = (&mut r).take(64 << 20).read_to_end(&mut v);
            let _ = std::io::copy(&mut r, &mut std::io::sink());
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    loop {
        // SAFETY: `pid` is our child; `status` and `usage` are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4: {}", std::io::Error::last_os_error());
        if start.elapsed() > limit && !timed_out {
            timed_out = true;
            // SAFETY: signalling our child's process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    // A worker left in the group would keep the pipes open: end it too.
    // SAFETY: signalling our child's (now empty or orphaned) process group.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else {
        (
            None,
            libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        )
    };
    GuardedRun {
        code,
        signal,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        // Linux reports kilobytes.
        peak_rss_bytes: (usage.ru_maxrss.max(0) as u64) * 1024,
        timed_out,
        elapsed,
    }
}
