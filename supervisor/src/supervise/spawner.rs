//! The one long-lived thread that starts every worker.
//!
//! Linux's `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not
//! the process. In a multi-threaded daemon a runtime or blocking thread may come and go,
//! so no worker is forked from one: they are all forked from this thread, which lives as
//! long as the process.

use std::{
    io,
    process::{Child, Command},
    sync::{mpsc, OnceLock},
};

type Job = (Command, tokio::sync::oneshot::Sender<io::Result<Child>>);

fn spawner() -> io::Result<&'static mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    if let Some(tx) = SPAWNER.get() {
        return Ok(tx);
    }
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("mlxsup-spawner".into())
        .spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        })?;
    // Two racing first callers: one thread's sender wins; the other thread ends at once.
    Ok(SPAWNER.get_or_init(|| tx))
}

/// Starts `cmd` from the spawner thread.
pub async fn spawn(cmd: Command) -> io::Result<Child> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner()?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    rx.await
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))?
}
