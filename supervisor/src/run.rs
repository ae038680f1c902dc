//! `mlxsup run`: preflight, then load and generate in a sandboxed worker, streaming
//! tokens and telemetry, and turning any failure into a report and an exit code.

use std::{path::PathBuf, time::Duration};

use estimate::{Bytes, Estimate, Model, Verdict, DEFAULT_PREFILL_CHUNK};
use protocol::{
    ChatMessage, Event, Failure, FailureKind, Fault, FaultPoint, GenerateRequest, Limits,
    LoadRequest, Phase, Prompt, Reply, Request, Sampling, WorkerErrorKind,
};
use tokio::sync::watch;

use crate::{
    budget::budget,
    classify::{self, AdviceFacts},
    exit::Exit,
    output::Output,
    supervise::{self, runtime_dir, Options, SpawnError, Worker},
};

#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Model folder (Hugging Face / mlx-community layout).
    pub model: PathBuf,
    /// The prompt.
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
    /// Context tokens the estimate plans for [default: the model's maximum, capped].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub context: Option<u64>,
    /// Sampling temperature (finite, >= 0); 0 is greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = crate::args::parse_temperature)]
    pub temp: f32,
    /// Nucleus sampling threshold, in (0, 1].
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = crate::args::parse_top_p)]
    pub top_p: f32,
    /// Random seed for sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Render the prompt with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Stop when the text ends with this (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Load even when the preflight says it does not fit.
    #[arg(long)]
    pub force: bool,
    /// Memory the model may use [default: this machine's].
    #[arg(long)]
    pub budget: Option<Bytes>,
    /// Kill the worker when its footprint passes this [default: the budget].
    #[arg(long)]
    pub memory_ceiling: Option<Bytes>,
    /// JSON Lines events on stdout.
    #[arg(long)]
    pub json: bool,
    /// Prompt tokens per prefill step (>= 1).
    #[arg(long, default_value_t = DEFAULT_PREFILL_CHUNK, value_parser = clap::value_parser!(u64).range(1..=u64::from(u32::MAX)))]
    pub prefill_chunk: u64,
    /// Tests: make the worker fail on purpose (KIND@PHASE, see CONTRACT.md).
    #[arg(long, hide = true, value_parser = parse_fault)]
    pub inject_fault: Option<Fault>,
    /// Tests: milliseconds without a message before the worker is unresponsive.
    #[arg(long, hide = true, default_value_t = 10_000)]
    pub heartbeat_timeout_ms: u64,
    /// Tests: milliseconds without progress and CPU before a request is stalled.
    #[arg(long, hide = true, default_value_t = supervise::DEFAULT_STALL.as_millis() as u64)]
    pub stall_timeout_ms: u64,
    /// Telemetry interval in milliseconds.
    #[arg(long, hide = true, default_value_t = 100)]
    pub telemetry_ms: u32,
    /// Linux: run the worker under this address-space limit (RLIMIT_AS).
    #[arg(long, hide = true)]
    pub rlimit_as: Option<Bytes>,
}

fn parse_fault(s: &str) -> Result<Fault, String> {
    Fault::parse(s, |size| size.parse::<Bytes>().ok().map(|b| b.0))
}

/// How a run ended.
pub enum Outcome {
    Done,
    Refused,
    BadModel,
    /// A usage error found after argument parsing (an unreadable prompt file).
    Usage,
    Failed(FailureKind),
    Interrupted,
    Internal,
}

impl Outcome {
    pub fn exit(&self) -> Exit {
        match self {
            Outcome::Done => Exit::Ok,
            Outcome::Refused => Exit::Refused,
            Outcome::BadModel => Exit::BadModel,
            Outcome::Usage => Exit::Usage,
            Outcome::Failed(_) => Exit::WorkerFailed,
            Outcome::Interrupted => Exit::Interrupted,
            Outcome::Internal => Exit::Internal,
        }
    }
}

pub fn main(args: RunArgs) -> Exit {
    let mut out = Output::new(args.json);
    crate::rt::block_on(async { execute(&args, &mut out).await.exit() })
}

/// The preflight: read the model and estimate it against the budget.
pub fn preflight(args: &RunArgs) -> Result<Estimate, (Outcome, String)> {
    let model = Model::open(&args.model)
        .map_err(|e| (Outcome::BadModel, format!("mlxsup: cannot read model: {e}")))?;
    // Everything a worker would load that can be checked without MLX: shards, tokenizer,
    // tokenizer config, generation config, chat template.
    text::check_loadable(&model)
        .map_err(|e| (Outcome::BadModel, format!("mlxsup: cannot read model: {e}")))?;
    let budget = budget(args.budget).map_err(|e| (Outcome::Internal, format!("mlxsup: {e}")))?;
    let req = estimate::Request {
        context: args.context,
        prefill_chunk: args.prefill_chunk,
        budget: budget.bytes,
        ..Default::default()
    };
    Ok(estimate::estimate(&model, &req))
}

fn prompt(args: &RunArgs) -> Result<Prompt, String> {
    let text = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        // A regular file of at most 16 MiB: never a FIFO that blocks or /dev/zero.
        (None, Some(f)) => text::read_prompt_file(f).map_err(|e| format!("mlxsup: {e}"))?,
        (None, None) => "Hello! Who are you?".to_string(),
    };
    Ok(if args.chat {
        Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: text,
        }])
    } else {
        Prompt::Text(text)
    })
}

/// Runs the whole thing; every outcome has been reported through `out` when it returns.
pub async fn execute(args: &RunArgs, out: &mut Output) -> Outcome {
    let prompt = match prompt(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Outcome::Usage;
        }
    };
    let est = match preflight(args) {
        Ok(e) => e,
        Err((outcome, msg)) => {
            eprintln!("{msg}");
            return outcome;
        }
    };
    out.estimate(&est);
    match est.verdict {
        Verdict::DoesNotFit if !args.force => {
            out.failure(&refusal(&est));
            return Outcome::Refused;
        }
        Verdict::DoesNotFit => {
            out.note("mlxsup: warning: it does not fit; loading anyway (--force)")
        }
        Verdict::Tight => out.note(&format!(
            "mlxsup: warning: tight: over {:.0}% of the budget; expect swapping or slowness",
            est.tight_fraction * 100.0
        )),
        Verdict::Fits => {}
    }

    let budget = est.budget_bytes;
    let ceiling = args.memory_ceiling.map(|b| b.0).unwrap_or(budget);
    let opts = Options {
        worker_exe: supervise::default_worker_exe(),
        runtime_dir: runtime_dir::default_path(),
        handshake_timeout: Duration::from_secs(10),
        heartbeat_timeout: Duration::from_millis(args.heartbeat_timeout_ms.max(1)),
        stall_timeout: Duration::from_millis(args.stall_timeout_ms.max(1)),
        sample_interval: Duration::from_millis(50),
        memory_ceiling: Some(ceiling),
        rlimit_as: args.rlimit_as.map(|b| b.0),
        model: Some(args.model.display().to_string()),
        estimate_bytes: Some(est.total_bytes),
        budget_bytes: Some(budget),
        context: Some(est.kv_cache.context),
    };

    let (int_tx, int_rx) = watch::channel(false);
    let listener = tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        let _ = int_tx.send(true);
    });
    let outcome = drive(args, out, opts, &est, prompt, int_rx.clone()).await;
    listener.abort();
    if *int_rx.borrow() {
        out.note("mlxsup: interrupted; the worker was stopped");
        return Outcome::Interrupted;
    }
    outcome
}

fn refusal(est: &Estimate) -> Failure {
    let facts = AdviceFacts {
        estimate_bytes: Some(est.total_bytes),
        budget_bytes: Some(est.budget_bytes),
        context: Some(est.kv_cache.context),
        ..Default::default()
    };
    let generic = classify::advice(FailureKind::InsufficientMemory, &facts);
    Failure {
        kind: FailureKind::InsufficientMemory,
        phase: Phase::Spawn,
        model: Some(est.model.clone()),
        exit_code: None,
        signal: None,
        core_dumped: false,
        signal_sent_by_supervisor: false,
        peak_bytes: None,
        last_telemetry: vec![],
        estimate_bytes: Some(est.total_bytes),
        budget_bytes: Some(est.budget_bytes),
        message: Some(format!(
            "needs {} but the budget is {}",
            Bytes(est.total_bytes),
            Bytes(est.budget_bytes)
        )),
        stderr_tail: String::new(),
        duration_ms: 0,
        // The estimator's advice names the context or quantization that fits.
        advice: if est.advice.is_empty() {
            generic
        } else {
            format!("{} (--force loads anyway)", est.advice)
        },
    }
}

async fn drive(
    args: &RunArgs,
    out: &mut Output,
    opts: Options,
    est: &Estimate,
    prompt: Prompt,
    interrupt: watch::Receiver<bool>,
) -> Outcome {
    let budget = est.budget_bytes;
    let mut worker = match Worker::spawn(opts).await {
        Ok(w) => w,
        Err(SpawnError::Setup(m)) => {
            eprintln!("mlxsup: {m}");
            return Outcome::Internal;
        }
        Err(SpawnError::Failed(f)) => {
            out.failure(&f);
            return Outcome::Failed(f.kind);
        }
    };
    worker.set_interrupt(interrupt);
    let (load_fault, gen_fault) = match args.inject_fault {
        Some(f) if f.point == FaultPoint::Load => (Some(f), None),
        other => (None, other),
    };
    let load = LoadRequest {
        model_dir: args.model.display().to_string(),
        limits: Limits {
            memory_limit: Some(budget),
            cache_limit: Some(cache_limit(budget, est.total_bytes)),
            wired_limit: Some(est.total_bytes.min(budget)),
            soft_budget: Some(budget),
        },
        prefill_chunk: u32::try_from(args.prefill_chunk).unwrap_or(u32::MAX),
        telemetry_interval_ms: args.telemetry_ms.max(1),
        fault: load_fault,
    };
    let reply = worker
        .request(Request::Load(load), |ev| on_event(out, ev))
        .await;
    match reply {
        Ok(Reply::Loaded(info)) => out.loaded(&info),
        other => return end(out, worker, other).await,
    }
    let gen = GenerateRequest {
        prompt,
        max_tokens: args.max_tokens,
        sampling: Sampling {
            temperature: args.temp,
            top_p: args.top_p,
            seed: args.seed,
        },
        stop: args.stop.clone(),
        fault: gen_fault,
    };
    let reply = worker
        .request(Request::Generate(gen), |ev| on_event(out, ev))
        .await;
    match reply {
        Ok(Reply::Done(done)) => {
            out.done(&done, est.total_bytes);
            worker.shutdown().await;
            Outcome::Done
        }
        other => end(out, worker, other).await,
    }
}

/// A reply that is not the expected one: report it, stop the worker.
async fn end(out: &mut Output, mut worker: Worker, reply: Result<Reply, Box<Failure>>) -> Outcome {
    match reply {
        Err(f) => {
            out.failure(&f);
            Outcome::Failed(f.kind)
        }
        Ok(Reply::Error(e)) if e.kind == WorkerErrorKind::Cancelled => {
            worker.shutdown().await;
            Outcome::Interrupted
        }
        Ok(Reply::Error(e)) => {
            let f = worker.failure_from_error(&e);
            worker.shutdown().await;
            out.failure(&f);
            Outcome::Failed(f.kind)
        }
        Ok(other) => {
            eprintln!("mlxsup: unexpected reply from the worker: {other:?}");
            worker.shutdown().await;
            Outcome::Internal
        }
    }
}

fn on_event(out: &mut Output, ev: &Event) {
    match ev {
        Event::Telemetry(t) => out.telemetry(t),
        Event::Token { id, text } => out.token(*id, text),
        Event::Progress { done, total } => out.progress(*done, *total),
        Event::Phase(_) => {}
    }
}

/// MLX's buffer cache: what the budget leaves beyond the estimate, within 64 MiB..1/4.
fn cache_limit(budget: u64, estimate: u64) -> u64 {
    budget
        .saturating_sub(estimate)
        .clamp(64 << 20, (budget / 4).max(64 << 20))
}
