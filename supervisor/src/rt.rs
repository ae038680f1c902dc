//! The async runtime each command runs on: one thread, so the worker is spawned from the
//! thread that lives as long as the command (Linux's PR_SET_PDEATHSIG follows the parent
//! thread, not the process); and the signals that stop a command or the daemon.

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::exit::Exit;

/// Runs `f` to completion on a current-thread runtime.
pub fn block_on(f: impl Future<Output = Exit>) -> Exit {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("mlxsup: cannot start the async runtime: {e}");
            Exit::Internal
        }
    }
}

/// Cancels `token` on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed before
/// this returns, so a signal that comes at once is caught too (a task installing them on
/// its first poll would leave a window in which SIGTERM still kills the process).
pub fn cancel_on_signal(token: CancellationToken) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::spawn(async move {
        tokio::select! {
            _ = recv(&mut int) => {}
            _ = recv(&mut term) => {}
        }
        token.cancel();
    })
}

/// The next delivery of `s`; never, without a handler.
async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
