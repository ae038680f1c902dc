//! Waiting for the worker to end, keeping how it ended and its peak memory (`wait4`).

use std::time::Instant;

use nix::sys::signal::Signal;

/// How a worker process ended.
#[derive(Clone, Debug)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<Signal>,
    pub core_dumped: bool,
    /// The largest resident set the kernel saw (`ru_maxrss`: KiB on Linux, bytes on macOS).
    pub max_rss_bytes: u64,
    /// When the supervisor learnt of the end.
    pub at: Instant,
}

impl ExitInfo {
    pub fn signal_name(&self) -> Option<String> {
        self.signal.map(|s| s.as_str().to_string())
    }

    /// A person's description: `exit code 3`, `signal SIGABRT (core dumped)`.
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (_, Some(s)) if self.core_dumped => format!("signal {} (core dumped)", s.as_str()),
            (_, Some(s)) => format!("signal {}", s.as_str()),
            (Some(c), None) => format!("exit code {c}"),
            (None, None) => "an unknown status".into(),
        }
    }
}

/// Blocks until `pid` ends and reaps it. Run on a thread of its own.
pub fn wait(pid: i32) -> ExitInfo {
    let mut status: libc::c_int = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals; pid is our own child.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            break;
        }
        if rc == -1 && nix::errno::Errno::last() == nix::errno::Errno::EINTR {
            continue;
        }
        // ECHILD: someone else reaped it; nothing more can be known.
        return ExitInfo {
            code: None,
            signal: None,
            core_dumped: false,
            max_rss_bytes: 0,
            at: Instant::now(),
        };
    }
    let at = Instant::now();
    let max_rss = usage.ru_maxrss.max(0) as u64;
    let max_rss_bytes = if cfg!(target_os = "macos") {
        max_rss
    } else {
        max_rss * 1024
    };
    let (code, signal, core_dumped) = if libc::WIFSIGNALED(status) {
        (
            None,
            Signal::try_from(libc::WTERMSIG(status)).ok(),
            libc::WCOREDUMP(status),
        )
    } else if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None, false)
    } else {
        (None, None, false)
    };
    ExitInfo {
        code,
        signal,
        core_dumped,
        max_rss_bytes,
        at,
    }
}
