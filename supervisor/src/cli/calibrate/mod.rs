//! `mlxsup calibrate MODEL [--contexts 512,2048,8192] [--image-sizes WxH,…]`: runs the
//! model in a fresh worker at each context of a ladder (a prompt of context − 1 token ids,
//! one token generated), and for a vision-language model its tower on one generated image
//! of each size ([`towers`]); records every peak in the calibration store, and prints
//! predicted vs measured, before and after the refit (`--json`: one object).
mod towers;

use std::path::PathBuf;

use estimate::{calibration::relative_error, Bytes, Calibration, Estimate, DEFAULT_PREFILL_CHUNK};
use protocol::{ComputePolicy, Device, GenerateRequest, Prompt, Reply, Request, Sampling};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{
    budget::budget,
    calibration::{self, Record, Store},
    exit::Exit,
    plan::{self, PlanRequest},
    supervise::{End, SpawnError, WorkerHandle},
};

#[derive(clap::Args, Clone, Debug)]
pub struct CalibrateArgs {
    /// Model folder.
    pub model: PathBuf,
    /// Contexts to measure, in tokens, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [512u64, 2048, 8192], value_parser = clap::value_parser!(u64).range(2..))]
    pub contexts: Vec<u64>,
    /// Prompt tokens per prefill step.
    #[arg(long, default_value_t = DEFAULT_PREFILL_CHUNK, value_parser = clap::value_parser!(u64).range(1..=u64::from(u32::MAX)))]
    pub prefill_chunk: u64,
    /// Memory the model may use [default: this machine's].
    #[arg(long)]
    pub budget: Option<Bytes>,
    /// The compute dtype on the CPU: auto, native or f32 (as `run`).
    #[arg(long, default_value = "auto", value_parser = ComputePolicy::parse)]
    pub compute: ComputePolicy,
    /// The MLX device: gpu, cpu or default.
    #[arg(long, default_value = "default", value_parser = Device::parse)]
    pub device: Device,
    /// Quantize the KV cache to 4 or 8 bits (as `run`). Such runs are measured and
    /// recorded, but the refit leaves them out (it models the model-dtype cache).
    #[arg(long, value_parser = crate::cli::inspect::parse_kv_bits)]
    pub kv_bits: Option<u8>,
    /// One JSON object on stdout instead of the table.
    /// A vision-language model: also run its vision tower on one generated image of each
    /// size (`WxH`, comma-separated), so the vision term is refit too.
    #[arg(long = "image-sizes", value_delimiter = ',', value_parser = crate::cli::inspect::parse_image_size)]
    pub image_sizes: Vec<(u32, u32)>,
    #[arg(long)]
    pub json: bool,
}

/// One measured context.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// The context asked for.
    pub context: u64,
    /// Prompt + generated tokens.
    pub context_used: u64,
    /// MLX's measured peak.
    pub peak_bytes: u64,
    /// The estimate at `context_used` before the refit, and its error.
    pub predicted_before: u64,
    pub error_before_pct: f64,
    /// After the refit, with the floor of the measured peaks.
    pub predicted_after: u64,
    pub error_after_pct: f64,
    /// After the refit, without the floor (the coefficients alone).
    pub predicted_refit: u64,
    pub error_refit_pct: f64,
}

#[derive(Serialize)]
struct Report<'a> {
    model: String,
    prefill_chunk: u64,
    compute_f32: bool,
    kv_bits: Option<u8>,
    calibration_before: &'a str,
    calibration_after: &'a str,
    calibration_source: estimate::CalibrationSource,
    store: Option<String>,
    points: &'a [Point],
    /// The vision tower per image size (`--image-sizes`).
    towers: &'a [towers::TowerPoint],
}

pub fn main(args: CalibrateArgs) -> Exit {
    crate::rt::block_on(run(args))
}

fn pct(predicted: u64, measured: u64) -> f64 {
    relative_error(predicted, measured) * 100.0
}

async fn run(args: CalibrateArgs) -> Exit {
    let model = match plan::open_runnable(&args.model) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("mlxsup: {e}");
            return Exit::BadModel;
        }
    };
    if let Err(exit) = towers::check(&model, &args) {
        return exit;
    }
    let budget = match budget(args.budget) {
        Ok(b) => b.bytes.0,
        Err(e) => {
            eprintln!("mlxsup: {e}");
            return Exit::Internal;
        }
    };
    let store = Store::default_store();
    let backend = calibration::planned_backend(args.device);
    let (records, warnings) = store
        .as_ref()
        .map_or((Vec::new(), Vec::new()), |s| s.load());
    for w in warnings {
        eprintln!("mlxsup: warning: {w}");
    }
    let facts = calibration::ModelFacts::of(&model);
    let host = calibration::host();
    let before = calibration::calibration_from(&records, &facts, &host, backend);
    let mut contexts = args.contexts.clone();
    contexts.sort_unstable();
    contexts.dedup();
    let request = |context: u64, calibration: Calibration| PlanRequest {
        context: Some(context),
        prefill_chunk: args.prefill_chunk,
        device: args.device,
        compute: args.compute,
        kv_bits: args.kv_bits,
        calibration,
        ..PlanRequest::new(budget)
    };
    let mut measured: Vec<(u64, Estimate, u64)> = Vec::new();
    let mut new_records: Vec<Record> = Vec::new();
    let mut compute_f32 = false;
    let vocab = model.activation.vocab.max(2);
    for (i, &context) in contexts.iter().enumerate() {
        let req = request(context, before.clone());
        let plan = plan::plan(&model, &req);
        compute_f32 = plan.estimate.weights.compute_f32;
        if !plan.fits() {
            eprintln!(
                "mlxsup: calibrate: context {context} does not fit the {} budget ({} needed); stopping the ladder here",
                Bytes(budget),
                Bytes(plan.estimate.total_bytes)
            );
            break;
        }
        eprintln!(
            "mlxsup: calibrate: context {context} ({}/{}): predicted {} ...",
            i + 1,
            contexts.len(),
            Bytes(plan.estimate.total_bytes)
        );
        let prompt: Vec<u32> = (0..context - 1)
            .map(|k| (1 + k % (vocab - 1)) as u32)
            .collect();
        let (done, info) = match measure(plan, prompt).await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("mlxsup: calibrate: context {context}: {e}");
                return Exit::WorkerFailed;
            }
        };
        let used = crate::plan::used_estimate(&model, &req, &done, compute_f32);
        eprintln!(
            "mlxsup: calibrate: context {context}: MLX peak {} vs predicted {} ({:+.1}%)",
            Bytes(done.peak_bytes),
            Bytes(used.total_bytes),
            pct(used.total_bytes, done.peak_bytes)
        );
        let machine = calibration::machine_of(&info);
        new_records.push(Record::new(
            machine.clone(),
            &model,
            &used,
            done.peak_bytes,
            "calibrate",
        ));
        for w in calibration::record(
            store.as_ref(),
            machine,
            &model,
            &used,
            done.peak_bytes,
            None,
            "calibrate",
        ) {
            eprintln!("mlxsup: warning: {w}");
        }
        measured.push((context, used, done.peak_bytes));
    }
    let towers = match towers::measure(&model, &args, budget, &before, store.as_ref()).await {
        Ok(t) => t,
        Err(exit) => return exit,
    };
    if measured.is_empty() && towers.is_empty() {
        eprintln!("mlxsup: calibrate: nothing was measured");
        return Exit::Refused;
    }
    let mut all = records;
    all.extend(new_records);
    all.extend(towers.iter().map(|t| t.record.clone()));
    let after = calibration::calibration_from(&all, &facts, &host, backend);
    let towers: Vec<towers::TowerPoint> =
        towers.into_iter().map(|t| t.point(&after.model)).collect();
    let refit_only = Calibration {
        floor: Vec::new(),
        ..after.clone()
    };
    let at = |c: u64, cal: &Calibration| {
        plan::estimate_for(&model, &request(c, cal.clone()), Some(c), compute_f32).total_bytes
    };
    let points: Vec<Point> = measured
        .iter()
        .map(|(context, used, peak)| {
            let c = used.kv_cache.context;
            let (a, r) = (at(c, &after), at(c, &refit_only));
            Point {
                context: *context,
                context_used: c,
                peak_bytes: *peak,
                predicted_before: used.total_bytes,
                error_before_pct: pct(used.total_bytes, *peak),
                predicted_after: a,
                error_after_pct: pct(a, *peak),
                predicted_refit: r,
                error_refit_pct: pct(r, *peak),
            }
        })
        .collect();
    let report = Report {
        model: model.dir.display().to_string(),
        prefill_chunk: args.prefill_chunk,
        compute_f32,
        kv_bits: args.kv_bits,
        calibration_before: &before.description,
        calibration_after: &after.description,
        calibration_source: after.source,
        store: store.as_ref().map(|s| s.path().display().to_string()),
        points: &points,
        towers: &towers,
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("mlxsup: {e}");
                return Exit::Internal;
            }
        }
    } else {
        println!("{}", table(&report));
    }
    Exit::Ok
}

fn table(r: &Report) -> String {
    let mut s = format!(
        "{} (prefill chunk {}, {} compute)\nbefore: {}\nafter:  {}\n",
        r.model,
        r.prefill_chunk,
        if r.compute_f32 { "f32" } else { "native" },
        r.calibration_before,
        r.calibration_after
    );
    s.push_str("  context    measured   predicted before      after refit   (refit, no floor)\n");
    for p in r.points {
        s.push_str(&format!(
            "  {:>7} {:>11} {:>11} {:>+6.1}% {:>11} {:>+6.1}%   {:>11} {:>+6.1}%\n",
            p.context_used,
            Bytes(p.peak_bytes).to_string(),
            Bytes(p.predicted_before).to_string(),
            p.error_before_pct,
            Bytes(p.predicted_after).to_string(),
            p.error_after_pct,
            Bytes(p.predicted_refit).to_string(),
            p.error_refit_pct,
        ));
    }
    if !r.towers.is_empty() {
        s.push_str("  image        patches  tower measured   predicted before      after refit\n");
        for t in r.towers {
            s.push_str(&format!(
                "  {:>11} {:>8} {:>14} {:>11} {:>+6.1}% {:>11} {:>+6.1}%\n",
                format!("{}x{}", t.width, t.height),
                t.patches,
                Bytes(t.measured_bytes).to_string(),
                Bytes(t.predicted_before).to_string(),
                t.error_before_pct,
                Bytes(t.predicted_after).to_string(),
                t.error_after_pct,
            ));
        }
    }
    match &r.store {
        Some(p) => s.push_str(&format!("recorded in {p}")),
        None => s.push_str("not recorded (MLXSUP_CALIBRATION=off)"),
    }
    s
}

/// One fresh worker: load, generate one token after `prompt`, shut down.
async fn measure(
    plan: plan::Plan,
    prompt: Vec<u32>,
) -> Result<(protocol::DoneInfo, protocol::LoadInfo), String> {
    let gen = GenerateRequest {
        prompt: Prompt::Tokens(prompt),
        max_tokens: 1,
        sampling: Sampling::default(),
        stop: vec![],
        fault: None,
        images: Vec::new(),
    };
    measure_request(plan, gen)
        .await
        .map(|(done, info, _)| (done, info))
}

/// One fresh worker: load, run `gen`, shut down; with what its vision tower used.
async fn measure_request(
    plan: plan::Plan,
    gen: GenerateRequest,
) -> Result<
    (
        protocol::DoneInfo,
        protocol::LoadInfo,
        Option<protocol::VisionPeak>,
    ),
    String,
> {
    let never = CancellationToken::new();
    let worker = match WorkerHandle::spawn(plan.spawn, plan.report).await {
        Ok(w) => w,
        Err(SpawnError::Setup(m)) => return Err(m),
        Err(SpawnError::Failed(f)) => return Err(format!("the worker failed: {}", f.kind)),
    };
    let info = match worker
        .call(Request::Load(plan.load), never.clone(), |_| {})
        .await
    {
        End::Reply(Reply::Loaded(info)) => info,
        other => {
            worker.shutdown().await;
            return Err(format!("the load failed: {}", describe(&other)));
        }
    };
    let mut vision = None;
    let end = worker
        .call(Request::Generate(gen), never, |ev| {
            if let protocol::Event::Vision(v) = ev {
                vision = Some((**v).clone());
            }
        })
        .await;
    worker.shutdown().await;
    match end {
        End::Reply(Reply::Done(done)) => Ok((done, info, vision)),
        other => Err(format!("the generation failed: {}", describe(&other))),
    }
}

fn describe(end: &End) -> String {
    match end {
        End::Died(f) | End::Error { failure: f, .. } => format!(
            "{}{}",
            f.kind,
            f.message
                .as_deref()
                .map_or(String::new(), |m| format!(": {m}"))
        ),
        End::Cancelled => "cancelled".into(),
        End::Reply(r) => format!("unexpected reply {r:?}"),
    }
}
