//! `mlxsup run`: preflight, then load and generate in a sandboxed worker, streaming
//! tokens and telemetry, and turning any failure into a report and an exit code.

use std::{path::PathBuf, time::Duration};

use estimate::{Bytes, Estimate, Verdict, DEFAULT_PREFILL_CHUNK};
use protocol::{
    ComputePolicy, Device, Event, Failure, FailureKind, Fault, FaultPoint, Reply, Request,
};
use tokio_util::sync::CancellationToken;

use crate::{
    budget::budget_for,
    calibration,
    cli::output::Output,
    cli::prompt::PromptArgs,
    exit::Exit,
    plan::{self, Plan, PlanRequest},
    supervise::{self, report, End, SpawnError, WorkerHandle},
};

#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Model folder (Hugging Face / mlx-community layout).
    pub model: PathBuf,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// An image for a vision-language model (repeatable): PNG or JPEG, placed before
    /// the prompt's text in one user message (the prompt is rendered with the chat
    /// template).
    #[arg(long = "image", value_name = "FILE")]
    pub images: Vec<PathBuf>,
    /// Context tokens the estimate plans for [default: the model's maximum, capped].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub context: Option<u64>,
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
    /// The MLX device: gpu, cpu or default (on a CPU-only build, gpu is the CPU).
    #[arg(long, default_value = "default", value_parser = Device::parse)]
    pub device: Device,
    /// The compute dtype on the CPU: auto (f32 when it fits the budget, else native),
    /// native, or f32 (upcast; quantized weights dequantized once at load).
    #[arg(long, default_value = "auto", value_parser = ComputePolicy::parse)]
    pub compute: ComputePolicy,
    /// Quantize the KV cache to 4 or 8 bits (group size 64, as mlx-lm's --kv-bits;
    /// sliding-window layers stay unquantized).
    #[arg(long, value_parser = crate::cli::inspect::parse_kv_bits)]
    pub kv_bits: Option<u8>,
    /// Tests: make the worker fail on purpose (KIND@PHASE, see docs/CONTRACT.md).
    #[arg(long, hide = true, value_parser = crate::fault::parse_fault)]
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

impl RunArgs {
    /// A run of `model` with `prompt` and every other setting at its default.
    pub fn new(model: PathBuf, prompt: PromptArgs) -> RunArgs {
        RunArgs {
            model,
            prompt,
            images: Vec::new(),
            context: None,
            force: false,
            budget: None,
            memory_ceiling: None,
            json: false,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            device: Device::Default,
            compute: ComputePolicy::Auto,
            kv_bits: None,
            inject_fault: None,
            heartbeat_timeout_ms: 10_000,
            stall_timeout_ms: supervise::DEFAULT_STALL.as_millis() as u64,
            telemetry_ms: 100,
            rlimit_as: None,
        }
    }

    /// The (load fault, generation fault) split of `--inject-fault`.
    pub fn faults(&self) -> (Option<Fault>, Option<Fault>) {
        match self.inject_fault {
            Some(f) if f.point == FaultPoint::Load => (Some(f), None),
            other => (None, other),
        }
    }
}

/// How a run ended.
pub enum Outcome {
    Done,
    /// A bad argument found after parsing (the prompt file).
    Usage,
    Refused,
    BadModel,
    Failed(FailureKind),
    Interrupted,
    Internal,
}

impl Outcome {
    pub fn exit(&self) -> Exit {
        match self {
            Outcome::Done => Exit::Ok,
            Outcome::Usage => Exit::Usage,
            Outcome::Refused => Exit::Refused,
            Outcome::BadModel => Exit::BadModel,
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

/// What the preflight read and decided.
pub struct Preflight {
    pub model: estimate::Model,
    pub plan: Plan,
    pub request: PlanRequest,
    /// The tokenizer and template, checked: the prompt's length is counted with them.
    pub text: text::TextFiles,
    /// Warnings from the calibration store, for a person.
    pub notes: Vec<String>,
}

/// The preflight: read the model and plan it against the budget.
pub fn preflight(args: &RunArgs) -> Result<Preflight, (Outcome, String)> {
    preflight_with(args, None)
}

/// [`preflight`] with a prompt's images planned too.
pub fn preflight_with(
    args: &RunArgs,
    images: Option<&crate::images::Images>,
) -> Result<Preflight, (Outcome, String)> {
    let model = plan::open_runnable(&args.model)
        .map_err(|e| (Outcome::BadModel, format!("mlxsup: {e}")))?;
    if images.is_some_and(|i| !i.inputs.is_empty()) && model.vision.is_none() {
        return Err((
            Outcome::Usage,
            format!(
                "mlxsup: {}: {} is not a vision-language model (no vision tower): --image needs one",
                args.model.display(),
                model.architecture
            ),
        ));
    }
    // Everything a worker would load that can be checked without MLX: shards, tokenizer,
    // tokenizer config, generation config, chat template.
    let text = text::check_loadable(&model)
        .map_err(|e| (Outcome::BadModel, format!("mlxsup: cannot read model: {e}")))?;
    let budget = budget_for(args.budget, args.rlimit_as.map(|b| b.0))
        .map_err(|e| (Outcome::Internal, format!("mlxsup: {e}")))?;
    let (calibration, notes) = calibration::calibration(
        calibration::Store::default_store().as_ref(),
        &model,
        calibration::planned_backend(args.device),
    );
    let req = PlanRequest {
        context: args.context,
        prefill_chunk: args.prefill_chunk,
        memory_ceiling: args.memory_ceiling.map(|b| b.0),
        rlimit_as: args.rlimit_as.map(|b| b.0),
        heartbeat_timeout: Duration::from_millis(args.heartbeat_timeout_ms),
        stall_timeout: Duration::from_millis(args.stall_timeout_ms),
        telemetry_ms: args.telemetry_ms,
        load_fault: args.faults().0,
        device: args.device,
        compute: args.compute,
        kv_bits: args.kv_bits,
        images: images.map_or(0, |i| i.inputs.len() as u64),
        image_size: images.and_then(|i| i.largest),
        calibration,
        ..PlanRequest::new(budget.bytes.0)
    };
    Ok(Preflight {
        plan: plan::plan(&model, &req),
        model,
        request: req,
        text,
        notes,
    })
}

/// Reports the preflight's verdict; false when it refuses.
pub fn admit(
    est: &Estimate,
    force: bool,
    refusal: impl FnOnce() -> Failure,
    out: &mut Output,
) -> bool {
    match est.verdict {
        Verdict::DoesNotFit if !force => {
            out.failure(&refusal());
            return false;
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
    true
}

/// Runs the whole thing; every outcome has been reported through `out` when it returns.
pub async fn execute(args: &RunArgs, out: &mut Output) -> Outcome {
    let prompt = match args.prompt.prompt() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Outcome::Usage;
        }
    };
    let images = if args.images.is_empty() {
        None
    } else {
        match crate::images::read(&args.model, &args.images, 0) {
            Ok(i) => Some(i),
            Err(crate::images::ImagesError::Model(m)) => {
                eprintln!("{m}");
                return Outcome::BadModel;
            }
            Err(crate::images::ImagesError::Image(m)) => {
                eprintln!("{m}");
                return Outcome::Usage;
            }
        }
    };
    // Images go in a chat message: a plain prompt becomes the one user message.
    let prompt = match (prompt, &images) {
        (protocol::Prompt::Text(t), Some(_)) => {
            protocol::Prompt::Chat(vec![protocol::ChatMessage {
                role: "user".into(),
                content: t,
            }])
        }
        (p, _) => p,
    };
    let Preflight {
        model,
        plan,
        request,
        text,
        notes,
    } = match preflight_with(args, images.as_ref()) {
        Ok(p) => p,
        Err((outcome, msg)) => {
            eprintln!("{msg}");
            return outcome;
        }
    };
    for n in &notes {
        out.note_event(&format!("warning: {n}"));
    }
    out.estimate(&plan.estimate);
    if let Some(n) = &plan.compute_note {
        out.note_event(n);
    }
    // The prompt, tokenized as the worker will: with what is asked, it must fit the
    // context the estimate was made for.
    let prompt_tokens = match text.count_prompt_tokens(&prompt) {
        Ok(n) => n as u64,
        Err(e) => {
            eprintln!("mlxsup: {e}");
            return Outcome::BadModel;
        }
    };
    let max_tokens = u64::from(args.prompt.max_tokens);
    if let Err(f) = plan::check_length(&model, &plan.estimate, &request, prompt_tokens, max_tokens)
    {
        out.failure(&f);
        return Outcome::Refused;
    }
    let refusal = || report::refusal(&plan.estimate, plan.report.remedy.clone());
    if !admit(&plan.estimate, args.force, refusal, out) {
        return Outcome::Refused;
    }

    let interrupt = CancellationToken::new();
    let listener = crate::rt::cancel_on_signal(interrupt.clone());
    let mut gen = args.prompt.request(prompt, args.faults().1);
    gen.images = images.map(|i| i.inputs).unwrap_or_default();
    let outcome = drive(out, &model, &request, plan, gen, &interrupt).await;
    listener.abort();
    if interrupt.is_cancelled() {
        out.note("mlxsup: interrupted; the worker was stopped");
        return Outcome::Interrupted;
    }
    outcome
}

async fn drive(
    out: &mut Output,
    model: &estimate::Model,
    request: &PlanRequest,
    plan: Plan,
    gen: protocol::GenerateRequest,
    interrupt: &CancellationToken,
) -> Outcome {
    let estimate_bytes = plan.estimate.total_bytes;
    let compute_f32 = plan.estimate.weights.compute_f32;
    let worker = match WorkerHandle::spawn(plan.spawn, plan.report).await {
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
    let end = worker
        .call(Request::Load(plan.load), interrupt.clone(), |ev| {
            on_event(out, ev)
        })
        .await;
    let info = match end {
        End::Reply(Reply::Loaded(info)) => {
            out.loaded(&info);
            info
        }
        other => return finish(out, worker, other, interrupt).await,
    };
    let end = worker
        .call(Request::Generate(gen), interrupt.clone(), |ev| {
            on_event(out, ev)
        })
        .await;
    match end {
        End::Reply(Reply::Done(done)) => {
            let used = plan::used_estimate(model, request, &done, compute_f32);
            out.done(
                &done,
                estimate_bytes,
                Some(crate::cli::output::UsedEstimate {
                    context_used: used.kv_cache.context,
                    estimate_used_bytes: used.total_bytes,
                }),
            );
            worker.shutdown().await;
            // A run with images is recorded with its tower's measurement (none came: not
            // recorded, its peak cannot be told apart).
            let vision = out.vision.clone();
            let store = calibration::Store::default_store()
                .filter(|_| request.images == 0 || vision.is_some());
            let machine = calibration::machine_of(&info);
            for w in calibration::record(
                store.as_ref(),
                machine,
                model,
                &used,
                done.peak_bytes,
                vision.as_ref(),
                "run",
            ) {
                out.note_event(&format!("warning: {w}"));
            }
            Outcome::Done
        }
        other => finish(out, worker, other, interrupt).await,
    }
}

/// An end that is not the expected reply: report it, stop the worker.
async fn finish(
    out: &mut Output,
    worker: WorkerHandle,
    end: End,
    interrupt: &CancellationToken,
) -> Outcome {
    let outcome = match end {
        // Interrupted: whatever the worker did after that was asked for.
        _ if interrupt.is_cancelled() => Outcome::Interrupted,
        End::Cancelled => Outcome::Interrupted,
        End::Died(f) | End::Error { failure: f, .. } => {
            out.failure(&f);
            Outcome::Failed(f.kind)
        }
        End::Reply(other) => {
            eprintln!("mlxsup: unexpected reply from the worker: {other:?}");
            Outcome::Internal
        }
    };
    worker.shutdown().await;
    outcome
}

pub fn on_event(out: &mut Output, ev: &Event) {
    match ev {
        Event::Telemetry(t) => out.telemetry(t),
        Event::Token { id, text } => out.token(*id, text),
        Event::Progress { done, total } => out.progress(*done, *total),
        Event::Phase(_) => {}
        Event::Vision(v) => out.vision(v),
    }
}
