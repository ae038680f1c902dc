//! Benchmark of our engine on one model folder: prompt tokens/s, generation tokens/s and
//! MLX peak memory, for a given prompt length and generated count (eos ignored).
//! `scripts/bench_mlx_lm.py` measures mlx-lm the same way (same prompt ids, same clocks).
//!
//! cargo run --release -p mlxsup-worker --example bench_generate -- MODEL_DIR \
//!     [--prompt 128] [--gen 128] [--runs 3] [--prefill-chunk 2048] [--f32]
//!
//! Prints one JSON object per run, then a summary with the medians. With `--make ARCH`
//! (and `--hidden`, `--layers`, … as `mlxsup make-model`) it first writes the model.

use std::path::PathBuf;

use clap::Parser;
use protocol::{GenerateRequest, Phase, Prompt, Sampling, WorkerError};
use worker::engine::{Engine, GenerateOptions, Hooks, LoadOptions};

#[derive(Parser)]
struct Args {
    /// The model folder.
    model: PathBuf,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// Tokens to generate.
    #[arg(long, default_value_t = 128)]
    gen: u32,
    /// Measured runs (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Prompt tokens per prefill step (mlx-lm's default is 2048).
    #[arg(long, default_value_t = 2048)]
    prefill_chunk: usize,
    /// First write a random-weight model of this architecture into MODEL (if absent).
    #[arg(long)]
    make: Option<String>,
    #[arg(long, default_value_t = 1024)]
    hidden: u32,
    #[arg(long, default_value_t = 16)]
    layers: u32,
    #[arg(long, default_value_t = 16)]
    heads: u32,
    #[arg(long, default_value_t = 4)]
    kv_heads: u32,
    #[arg(long, default_value_t = 2816)]
    intermediate: u32,
    #[arg(long, default_value_t = 32000)]
    vocab: u32,
    #[arg(long, default_value = "bf16")]
    dtype: String,
    #[arg(long)]
    quant_bits: Option<u32>,
    #[arg(long, default_value_t = 64)]
    group_size: u32,
    /// Compute in f32 (weights upcast, quantized ones dequantized at load).
    #[arg(long)]
    f32: bool,
}

struct Quiet;

impl Hooks for Quiet {
    fn before_step(&mut self, _: Phase, _: u32, _: u64) -> Result<(), WorkerError> {
        Ok(())
    }
    fn token(&mut self, _: u32, _: &str) {}
}

/// The benchmark prompt: the same ids as scripts/bench_mlx_lm.py.
fn prompt_ids(n: usize, vocab: u32) -> Vec<u32> {
    let span = (vocab / 2).max(1) as u64;
    (0..n as u64)
        .map(|i| ((i * 7919 + 13) % span) as u32)
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let (Some(arch), false) = (&args.make, args.model.join("config.json").exists()) {
        let spec = protocol::ModelSpec {
            dir: args.model.display().to_string(),
            arch: arch.clone(),
            hidden: args.hidden,
            layers: args.layers,
            heads: args.heads,
            kv_heads: args.kv_heads,
            intermediate: args.intermediate,
            vocab: args.vocab,
            dtype: args.dtype.clone(),
            quant_bits: args.quant_bits,
            group_size: args.group_size,
            seed: 0,
            options: Default::default(),
        };
        let bytes = worker::make_model::make_model(&spec)?;
        eprintln!("wrote {} ({bytes} bytes of weights)", args.model.display());
    }
    let started = std::time::Instant::now();
    let mut engine = Engine::load(
        &args.model,
        &LoadOptions {
            prefill_chunk: args.prefill_chunk,
            f32: args.f32,
            matmul_lanes: 0,
            kv_bits: None,
            prefix_cache: 0,
        },
        &mut Quiet,
    )?;
    let load_s = started.elapsed().as_secs_f64();
    let req = GenerateRequest {
        prompt: Prompt::Tokens(prompt_ids(args.prompt, engine.vocab_size())),
        max_tokens: args.gen,
        sampling: Sampling::default(),
        stop: vec![],
        fault: None,
        images: Vec::new(),
    };
    let opts = GenerateOptions {
        ignore_eos: true,
        keep_first_logprobs: false,
    };
    engine.generate_with(&req, &opts, &mut Quiet)?;
    let (mut p, mut g, mut peaks) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        mlx_rs::memory::reset_peak_memory()?;
        let done = engine.generate_with(&req, &opts, &mut Quiet)?;
        let peak = mlx_rs::memory::peak_memory()? as u64;
        println!(
            "{}",
            serde_json::json!({"engine": "mlxsup", "run": run, "prompt_tokens": done.prompt_tokens,
                "generated_tokens": done.generated_tokens, "prompt_tps": done.prompt_tps,
                "generation_tps": done.generation_tps, "peak_bytes": peak})
        );
        p.push(done.prompt_tps);
        g.push(done.generation_tps);
        peaks.push(peak as f64);
    }
    println!(
        "{}",
        serde_json::json!({"engine": "mlxsup", "summary": true, "model": args.model, "architecture": engine.architecture(),
            "weight_bytes": engine.weight_bytes(), "load_s": load_s, "prompt": args.prompt, "gen": args.gen,
            "runs": args.runs, "prompt_tps": median(p), "generation_tps": median(g), "peak_bytes": median(peaks)})
    );
    Ok(())
}
