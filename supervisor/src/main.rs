//! `mlxsup`: parses the command line and hands each command to its module.
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mlxsup::{demo, exit::Exit, import, info, inspect, make_model, run};

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
    /// Load a model in a sandboxed worker and generate, with live memory telemetry.
    Run(run::RunArgs),
    /// Import a real model (SmolLM2-135M GGUF, fetched once), ask it a question, show a contained crash.
    Demo(demo::DemoArgs),
    /// Write a deterministic random-weight model folder (for tests and benchmarks).
    MakeModel(make_model::MakeModelArgs),
    /// Convert a GGUF file into an MLX model folder (quantized blocks carried over).
    Import(import::ImportArgs),
    /// MLX version, device, memory and budget, checked by a real computation in a worker.
    Info(info::InfoArgs),
}

fn main() -> ExitCode {
    init_tracing();
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
        Command::Inspect(args) => inspect::run(args),
        Command::Run(args) => run::main(args),
        Command::Demo(args) => demo::main(args),
        Command::MakeModel(args) => make_model::main(args),
        Command::Info(args) => info::main(args),
        Command::Import(args) => import::main(args),
    }
    .into()
}

/// `MLXSUP_LOG` sets the filter (e.g. `mlxsup=debug`); logs go to stderr.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MLXSUP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
