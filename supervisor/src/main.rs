//! `mlxsup`: parses the command line and hands each command to its module.
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mlxsup::{
    cli::{calibrate, client, demo, import, info, inspect, make_model, run, service},
    daemon,
    exit::Exit,
};

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
    /// Measure a model's MLX peak at a ladder of contexts, record it, refit the estimator.
    Calibrate(calibrate::CalibrateArgs),
    /// Write a deterministic random-weight model folder (for tests and benchmarks).
    MakeModel(make_model::MakeModelArgs),
    /// Convert a GGUF file into an MLX model folder (quantized blocks carried over).
    Import(import::ImportArgs),
    /// MLX version, device, memory and budget, checked by a real computation in a worker.
    Info(info::InfoArgs),
    /// Run the daemon: keep models loaded in sandboxed workers, serve clients on a socket.
    Serve(daemon::ServeArgs),
    /// The daemon's state: version, pid, uptime, budget, memory held.
    Status(client::ClientArgs),
    /// The daemon's models: state, worker, memory, keep-alive, last failure.
    Ps(client::ClientArgs),
    /// The models the daemon can see, with size and whether they fit.
    Ls(client::ClientArgs),
    /// Load a model in the daemon.
    Load(client::LoadArgs),
    /// Unload a model from the daemon (also clears a quarantine).
    Unload(client::UnloadArgs),
    /// Generate through the daemon: streams like `run`, same events and exit codes.
    Generate(client::GenerateArgs),
    /// Stop the daemon.
    Stop(client::ClientArgs),
    /// Install the daemon as a per-user service (launchd on macOS, systemd on Linux).
    Service(service::ServiceArgs),
}

fn main() -> ExitCode {
    let cli = Cli::try_parse();
    init_tracing(matches!(
        &cli,
        Ok(Cli {
            command: Command::Serve(_)
        })
    ));
    let cli = match cli {
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
        Command::Calibrate(args) => calibrate::main(args),
        Command::Info(args) => info::main(args),
        Command::Serve(args) => daemon::main(args),
        Command::Status(args) => client::status(args),
        Command::Ps(args) => client::ps(args),
        Command::Ls(args) => client::ls(args),
        Command::Load(args) => client::load(args),
        Command::Unload(args) => client::unload(args),
        Command::Generate(args) => client::generate(args),
        Command::Stop(args) => client::stop(args),
        Command::Service(args) => service::main(args),
        Command::Import(args) => import::main(args),
    }
    .into()
}

/// `MLXSUP_LOG` sets the filter (e.g. `mlxsup=debug`); logs go to stderr.
/// The daemon logs its lifecycle (info) by default; the other commands only warnings.
fn init_tracing(daemon: bool) {
    use std::io::IsTerminal;
    let default = if daemon { "mlxsup=info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MLXSUP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
