//! `mlxsup demo`: the whole mission on an embedded default, with no downloads — make a
//! small model (cached), estimate it, run it in the sandbox with live telemetry, then
//! crash a worker the way Metal does when memory runs out and show that only the worker
//! died.

use std::{path::PathBuf, time::Instant};

use estimate::Bytes;
use protocol::{Fault, FaultAction, FaultPoint};

use crate::{
    exit::Exit,
    make_model::{self, MakeModelArgs},
    output::Output,
    prompt::PromptArgs,
    run::{self, Outcome, RunArgs},
};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where the demo model is kept [default: the user cache dir, mlxsup/demo-qwen3].
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Tokens to generate.
    #[arg(long, default_value_t = 48)]
    pub max_tokens: u32,
}

/// The embedded default: a small Qwen3-shaped model (~19M parameters, bf16).
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
        json: false,
    }
}

fn default_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("mlxsup")
        .join("demo-qwen3-v1")
}

fn run_args(model: PathBuf, max_tokens: u32) -> RunArgs {
    RunArgs {
        context: Some(2048),
        ..RunArgs::new(
            model,
            PromptArgs {
                // Random weights: greedy decoding repeats one token; seeded sampling shows
                // the streaming better, and is just as reproducible.
                temp: 0.9,
                top_p: 0.95,
                seed: Some(7),
                ..PromptArgs::text("Once upon a time", max_tokens)
            },
        )
    }
}

pub fn main(args: DemoArgs) -> Exit {
    crate::rt::block_on(demo(args))
}

async fn demo(args: DemoArgs) -> Exit {
    let dir = args.model_dir.unwrap_or_else(default_dir);
    println!("== 1. A model, made locally (no downloads) ==");
    if dir.join("config.json").is_file() {
        println!("using {}", dir.display());
    } else {
        let spec = demo_model(dir.clone());
        match make_model::make(&spec, &dir).await {
            Ok(bytes) => println!(
                "made {} ({} of bf16 weights, by MLX in a worker)",
                dir.display(),
                Bytes(bytes)
            ),
            Err((exit, msg)) => {
                eprintln!("mlxsup demo: making the model: {msg}");
                return exit;
            }
        }
    }

    println!("\n== 2. The estimate, before anything is loaded ==");
    let base = run_args(dir.clone(), args.max_tokens);
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
    println!("{}", crate::inspect::table(&est, &model, &budget, false));

    println!("\n== 3. Run it in a sandboxed worker, with live memory telemetry ==");
    println!("(random weights: the text is noise; the machinery around it is the point)");
    let mut out = Output::new(false);
    let outcome = run::execute(&base, &mut out).await;
    if !matches!(outcome, Outcome::Done) {
        eprintln!("mlxsup demo: the normal run did not succeed");
        return outcome.exit();
    }

    println!("\n== 4. A worker dies the way Metal kills it when memory runs out ==");
    println!("(injected: MLX's \"Insufficient Memory\" abort at the 4th generated token)");
    let mut crash = base.clone();
    crash.inject_fault = Some(Fault {
        action: FaultAction::AbortMetalOom,
        point: FaultPoint::Decode(4),
    });
    let started = Instant::now();
    let mut out = Output::new(false);
    let outcome = run::execute(&crash, &mut out).await;
    match outcome {
        Outcome::Failed(kind) => {
            println!(
                "\nThe supervisor survived (pid {}): the worker's death was contained and classified as `{kind}` in {} ms end to end; every other model would have kept running.",
                std::process::id(),
                started.elapsed().as_millis()
            );
            Exit::Ok
        }
        _ => {
            eprintln!("mlxsup demo: the injected crash was not reported as a failure");
            Exit::Internal
        }
    }
}
