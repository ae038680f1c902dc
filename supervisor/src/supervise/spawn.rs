//! Starting a worker: a private socket, the process in its own group with a clean signal
//! mask, stderr captured, a reaper thread, and the worker's connection accepted.

use std::{
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use nix::unistd::Pid;
use protocol::client::{Connection, LocalStream, Server};
use tokio::sync::oneshot;

use super::{
    reap::{self, ExitInfo},
    runtime_dir, spawner,
    stderr_tail::{self, Tail},
    SpawnOptions,
};

static NEXT: AtomicU64 = AtomicU64::new(0);

pub struct Spawned {
    pub pid: Pid,
    pub conn: Connection<LocalStream>,
    pub exit_rx: oneshot::Receiver<ExitInfo>,
    pub stderr: Tail,
    pub stderr_done: oneshot::Receiver<()>,
}

/// What went wrong before a connection existed.
pub enum SpawnError {
    /// Our side: the socket directory, the socket, starting the binary.
    Setup(String),
    /// The worker ran but never connected.
    Died {
        message: String,
        stderr: String,
        exit: Option<ExitInfo>,
        /// The supervisor killed it: it did not connect in time.
        timed_out: bool,
    },
}

pub async fn spawn(opts: &SpawnOptions) -> Result<Spawned, SpawnError> {
    let plain = SpawnError::Setup;
    let dir = runtime_dir::ensure(&opts.runtime_dir).map_err(|e| plain(e.to_string()))?;
    let name = format!(
        "w-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let path = runtime_dir::socket_path(&dir, &name).map_err(|e| plain(e.to_string()))?;
    let _ = std::fs::remove_file(&path);
    let server = Server::bind(&path)
        .map_err(|e| plain(format!("cannot listen on {}: {e}", path.display())))?;

    let mut cmd = Command::new(&opts.worker_exe);
    cmd.arg("--socket")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let rlimit_as = opts.rlimit_as;
    // SAFETY: only async-signal-safe calls (sigprocmask, setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            if let Some(limit) = rlimit_as {
                let r = libc::rlimit {
                    rlim_cur: limit as libc::rlim_t,
                    rlim_max: limit as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = spawner::spawn(cmd).await.map_err(|e| {
        plain(format!(
            "cannot start the worker {}: {e}",
            opts.worker_exe.display()
        ))
    })?;
    let pid = Pid::from_raw(child.id() as i32);
    let tail = Tail::default();
    let (done_tx, mut stderr_done) = oneshot::channel();
    if let Some(pipe) = child.stderr.take() {
        stderr_tail::collect(pipe, tail.clone(), done_tx);
    }
    // The reaper owns the child's end from here on.
    drop(child);
    let (exit_tx, mut exit_rx) = oneshot::channel();
    std::thread::spawn(move || {
        let _ = exit_tx.send(reap::wait(pid.as_raw()));
    });

    let accepted = tokio::select! {
        conn = server.accept() => conn.map_err(|e| format!("accepting the worker's connection: {e}")),
        exit = &mut exit_rx => {
            let _ = tokio::time::timeout(Duration::from_millis(200), &mut stderr_done).await;
            let exit = exit.ok();
            let how = exit.as_ref().map_or("an unknown status".into(), ExitInfo::describe);
            return Err(SpawnError::Died {
                message: format!("the worker ended with {how} before connecting"),
                stderr: tail.text(),
                exit,
                timed_out: false,
            });
        }
        _ = tokio::time::sleep(opts.handshake_timeout) => {
            Err(format!("the worker did not connect within {:?}", opts.handshake_timeout))
        }
    };
    // The socket file goes as soon as the one expected peer is in (or never came).
    drop(server);
    match accepted {
        Ok(conn) => Ok(Spawned {
            pid,
            conn,
            exit_rx,
            stderr: tail,
            stderr_done,
        }),
        Err(msg) => {
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let exit = tokio::time::timeout(Duration::from_secs(2), exit_rx)
                .await
                .ok()
                .and_then(Result::ok);
            Err(SpawnError::Died {
                message: msg,
                stderr: tail.text(),
                exit,
                timed_out: true,
            })
        }
    }
}
