//! `mlxsup-worker`: the disposable process that loads and runs one model. It is started
//! by the supervisor with the path of a socket to connect to, and speaks only the worker
//! protocol there.
use std::{path::PathBuf, process::ExitCode};

use clap::Parser;

#[derive(Parser)]
#[command(name = "mlxsup-worker", disable_version_flag = true)]
struct Args {
    /// The supervisor's socket to connect to.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Print the worker and MLX versions and the backend, then exit.
    #[arg(long, short = 'V')]
    version: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.version {
        println!(
            "mlxsup-worker {} (MLX {}, {} backend, protocol {})",
            env!("CARGO_PKG_VERSION"),
            worker::mlx_info::mlx_version(),
            worker::mlx_info::BACKEND,
            protocol::version::CURRENT,
        );
        return ExitCode::SUCCESS;
    }
    let Some(socket) = args.socket else {
        eprintln!("mlxsup-worker is started by mlxsup; it needs --socket PATH");
        return ExitCode::from(2);
    };
    die_with_parent();
    worker::fatal_signal::install();
    let stream = match worker::serve::connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mlxsup-worker: connecting to {}: {e}", socket.display());
            return ExitCode::from(3);
        }
    };
    ExitCode::from(worker::serve::serve(stream).clamp(0, 255) as u8)
}

/// Linux: the kernel kills this process when the thread that spawned it exits, so a
/// worker never outlives its supervisor even if the socket's EOF is never read.
#[cfg(target_os = "linux")]
fn die_with_parent() {
    use nix::{sys::signal::Signal, unistd::getppid};
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_ok() && getppid().as_raw() == 1 {
        // The parent died before the call took effect.
        std::process::exit(0);
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent() {}
