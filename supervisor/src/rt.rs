//! The async runtime each command runs on: one thread, so the worker is spawned from the
//! thread that lives as long as the command (Linux's PR_SET_PDEATHSIG follows the parent
//! thread, not the process).

use std::future::Future;

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
