//! `mlxsup`: the command line and (later) the daemon. It never links MLX.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod budget;
mod exit;
mod inspect;

use exit::Exit;

#[derive(Parser)]
#[command(
    name = "mlxsup",
    version,
    about = "Run MLX models safely: estimate before loading, load in a sandbox, contain every failure"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Estimate the memory a model needs and whether it fits, without loading it.
    Inspect(inspect::InspectArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            }
            .into();
        }
    };
    match cli.command {
        Command::Inspect(args) => inspect::run(args).into(),
    }
}
