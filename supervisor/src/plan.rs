//! One plan for every way a model is started — `run`, `demo`, the daemon's admission:
//! (model, request, budget) → the estimate, the worker's limits and load request, the
//! spawn options, and what a failure report needs.

use std::{path::Path, time::Duration};

use estimate::{Bytes, Estimate, Model, Verdict};
use protocol::{
    ComputeDtype, ComputePolicy, Device, Failure, FailureKind, Fault, Limits, LoadRequest, Remedy,
};

use crate::supervise::{self, report, runtime_dir, ReportContext, SpawnOptions};

/// Below this, a smaller context is no remedy.
const MIN_ADVISED_CONTEXT: u64 = 256;

/// What is asked of a model.
#[derive(Clone, Debug)]
pub struct PlanRequest {
    /// Context tokens to plan for; `None` is the model's default.
    pub context: Option<u64>,
    /// Prompt tokens per prefill step.
    pub prefill_chunk: u64,
    /// The memory this model may use.
    pub budget: u64,
    /// Kill the worker above this footprint [default: the budget].
    pub memory_ceiling: Option<u64>,
    /// Linux: the worker's `RLIMIT_AS`.
    pub rlimit_as: Option<u64>,
    pub heartbeat_timeout: Duration,
    pub stall_timeout: Duration,
    pub telemetry_ms: u32,
    /// Tests: a fault for the load.
    pub load_fault: Option<Fault>,
    /// The MLX device to run on.
    pub device: Device,
    /// `--compute`: the compute-dtype policy.
    pub compute: ComputePolicy,
    /// `--kv-bits`: the KV cache quantized to 4 or 8 bits.
    pub kv_bits: Option<u8>,
    /// `run --image`: the images to plan, all at `image_size` (the largest one's
    /// processed width × height).
    pub images: u64,
    pub image_size: Option<(u32, u32)>,
    /// The activation coefficients and measured floor (the calibration store's).
    pub calibration: estimate::Calibration,
    /// `--prefix-cache`: the worker's prefix cache ([`prefix_cache_bytes`]).
    pub prefix_cache: PrefixCache,
}

/// How large a worker's prefix cache is asked to be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrefixCache {
    /// No prefix cache (`run`, calibration: one request per worker).
    #[default]
    Off,
    /// The daemon's default: [`AUTO_PREFIX_SHARE`] of the headroom, at most
    /// [`AUTO_PREFIX_MAX`].
    Auto,
    /// `--prefix-cache BYTES` (within the headroom).
    Bytes(u64),
}

impl PrefixCache {
    /// The control protocol's `prefix_cache` (`None`: `default`, 0: off).
    pub fn from_wire(v: Option<u64>, default: PrefixCache) -> PrefixCache {
        match v {
            None => default,
            Some(0) => PrefixCache::Off,
            Some(n) => PrefixCache::Bytes(n),
        }
    }
}

/// The default prefix cache takes this share of the headroom (the budget left after the
/// estimate): the estimate already holds one request's KV at the full context, so the
/// cache only competes with the estimate's margin and with the daemon's other models;
/// a quarter leaves them three.
pub const AUTO_PREFIX_SHARE: u64 = 4;

/// ... and at most 2 GiB: about 40 two-thousand-token chats of a small model, or one
/// 8,000-token context of an 8B one, without holding memory the machine may need.
pub const AUTO_PREFIX_MAX: u64 = 2 << 30;

/// The bytes a worker's prefix cache may hold: within the budget left after the estimate
/// (the cache's bytes are planned before they are allocated; the worker's soft guard
/// empties the cache before it refuses a step). A quantized KV cache is not cached.
pub fn prefix_cache_bytes(
    setting: PrefixCache,
    budget: u64,
    estimate: u64,
    kv_bits: Option<u8>,
) -> u64 {
    let headroom = budget.saturating_sub(estimate);
    if kv_bits.is_some() {
        return 0;
    }
    match setting {
        PrefixCache::Off => 0,
        PrefixCache::Auto => (headroom / AUTO_PREFIX_SHARE).min(AUTO_PREFIX_MAX),
        PrefixCache::Bytes(n) => n.min(headroom),
    }
}

/// Parses `--prefix-cache`: a byte count (`512M`, `2G`, `1000000`) or `off`.
pub fn parse_prefix_cache(s: &str) -> Result<u64, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    s.parse::<Bytes>().map(|b| b.0).map_err(|e| {
        format!("`{s}` is not a prefix-cache size (a byte count like 512M, or off): {e}")
    })
}

impl PlanRequest {
    /// A request with the usual timeouts for `budget`.
    pub fn new(budget: u64) -> PlanRequest {
        PlanRequest {
            context: None,
            prefill_chunk: estimate::DEFAULT_PREFILL_CHUNK,
            budget,
            memory_ceiling: None,
            rlimit_as: None,
            heartbeat_timeout: Duration::from_secs(10),
            stall_timeout: supervise::DEFAULT_STALL,
            telemetry_ms: 100,
            load_fault: None,
            device: Device::Default,
            compute: ComputePolicy::Auto,
            kv_bits: None,
            images: 0,
            image_size: None,
            calibration: estimate::Calibration::default(),
            prefix_cache: PrefixCache::Off,
        }
    }
}

/// Everything needed to start the model in a worker.
#[derive(Clone, Debug)]
pub struct Plan {
    pub estimate: Estimate,
    pub spawn: SpawnOptions,
    pub report: ReportContext,
    pub load: LoadRequest,
    /// Why `auto` kept the native dtype on the CPU, in one line (None otherwise).
    pub compute_note: Option<String>,
}

impl Plan {
    /// Whether the preflight says it fits.
    pub fn fits(&self) -> bool {
        self.estimate.verdict != Verdict::DoesNotFit
    }
}

/// Reads a model folder; the error names what could not be read.
pub fn open(model: &Path) -> Result<Model, String> {
    Model::open(model).map_err(|e| format!("cannot read model: {e}"))
}

/// Reads a model to run it: a GGUF file is estimated by `inspect`, but a worker runs MLX
/// folders, so it is pointed at `mlxsup import`; a family the worker does not run is
/// refused by name with the list it runs, before any worker is spawned.
pub fn open_runnable(model: &Path) -> Result<Model, String> {
    let m = open(model)?;
    if m.weights.source == estimate::WeightSource::GgufHeader {
        return Err(format!(
            "{} is a GGUF checkpoint: workers run MLX folders; convert it once with `mlxsup import {} DIR`, then run DIR",
            model.display(),
            model.display()
        ));
    }
    if let Some(why) = m.config.description().unsupported() {
        return Err(format!(
            "cannot run model: {}: {why}",
            m.config.path().display()
        ));
    }
    Ok(m)
}

/// The estimate of `model` at `context` within `budget`, at the native dtype.
pub fn estimate(model: &Model, context: Option<u64>, prefill_chunk: u64, budget: u64) -> Estimate {
    estimate_at(model, context, prefill_chunk, budget, false)
}

/// [`estimate`], at f32 compute when `f32`.
pub fn estimate_at(
    model: &Model,
    context: Option<u64>,
    prefill_chunk: u64,
    budget: u64,
    f32: bool,
) -> Estimate {
    estimate::estimate(
        model,
        &estimate_request(context, prefill_chunk, budget, f32, None),
    )
}

/// The estimate for `req` at `context` (its own, or a wider one), at f32 compute when
/// `f32`, with its KV bits and calibration.
pub fn estimate_for(model: &Model, req: &PlanRequest, context: Option<u64>, f32: bool) -> Estimate {
    estimate::estimate(
        model,
        &with_images(
            estimate::Request {
                calibration: req.calibration.clone(),
                ..estimate_request(context, req.prefill_chunk, req.budget, f32, req.kv_bits)
            },
            req,
        ),
    )
}

/// The request's images on an estimate request (`inspect --images N --image-size WxH`'s
/// planning, the same estimator call).
fn with_images(r: estimate::Request, req: &PlanRequest) -> estimate::Request {
    estimate::Request {
        images: req.images,
        image_size: req.image_size,
        ..r
    }
}

fn estimate_request(
    context: Option<u64>,
    prefill_chunk: u64,
    budget: u64,
    compute_f32: bool,
    kv_bits: Option<u8>,
) -> estimate::Request {
    estimate::Request {
        context,
        prefill_chunk,
        budget: Bytes(budget),
        compute_f32,
        kv_bits,
        ..Default::default()
    }
}

/// Plans `model` for `req`.
pub fn plan(model: &Model, req: &PlanRequest) -> Plan {
    let (compute, est, compute_note) = crate::compute::choose(model, req);
    let context = est.kv_cache.context;
    let budget = est.budget_bytes;
    let remedy = Remedy {
        max_context: if est.verdict == Verdict::DoesNotFit {
            largest_context(model, &est, req)
        } else {
            // After a memory failure at a context that was estimated to fit, half of it.
            Some((context / 2).max(MIN_ADVISED_CONTEXT)).filter(|&c| c < context)
        },
        force: est.verdict == Verdict::DoesNotFit,
        ..Remedy::default()
    };
    let spawn = SpawnOptions {
        worker_exe: supervise::default_worker_exe(),
        runtime_dir: runtime_dir::default_path(),
        handshake_timeout: Duration::from_secs(10),
        heartbeat_timeout: req.heartbeat_timeout.max(Duration::from_millis(1)),
        stall_timeout: req.stall_timeout.max(Duration::from_millis(1)),
        sample_interval: Duration::from_millis(50),
        memory_ceiling: Some(req.memory_ceiling.unwrap_or(budget)),
        rlimit_as: req.rlimit_as,
    };
    let report = ReportContext {
        model: Some(model.dir.display().to_string()),
        estimate_bytes: Some(est.total_bytes),
        budget_bytes: Some(budget),
        context: Some(context),
        remedy,
        compute_f32: compute == ComputeDtype::F32,
    };
    let load = LoadRequest {
        model_dir: model.dir.display().to_string(),
        limits: Limits {
            memory_limit: Some(budget),
            cache_limit: Some(cache_limit(budget, est.total_bytes)),
            wired_limit: Some(est.total_bytes.min(budget)),
            soft_budget: Some(budget),
        },
        prefill_chunk: u32::try_from(req.prefill_chunk).unwrap_or(u32::MAX),
        telemetry_interval_ms: req.telemetry_ms.max(1),
        fault: req.load_fault,
        device: req.device,
        compute,
        kv_bits: req.kv_bits,
        activation: Some(Box::new(wire_activation(&est.activation_model))),
        prefix_cache: prefix_cache_bytes(req.prefix_cache, budget, est.total_bytes, req.kv_bits),
    };
    Plan {
        estimate: est,
        spawn,
        report,
        load,
        compute_note,
    }
}

/// The largest context whose estimate fits `req.budget`, if a useful one does.
pub fn largest_context(model: &Model, est: &Estimate, req: &PlanRequest) -> Option<u64> {
    estimate::request::largest_context_within(
        model,
        &with_images(
            estimate::Request {
                calibration: req.calibration.clone(),
                ..estimate_request(
                    None,
                    req.prefill_chunk,
                    req.budget,
                    est.weights.compute_f32,
                    req.kv_bits,
                )
            },
            req,
        ),
        est.weights.bytes,
        est.kv_cache.context,
        req.budget,
    )
    .filter(|&c| c >= MIN_ADVISED_CONTEXT)
}

/// Checks that the prompt and the tokens asked for fit the context the model was planned
/// for; the refusal (`context_length_exceeded`, with `remedy.min_context`), with what
/// would fit, when they do not. (The estimate at a larger
/// context is re-checked: the advice names a context only if it fits the budget.)
pub fn check_length(
    model: &Model,
    est: &Estimate,
    req: &PlanRequest,
    prompt_tokens: u64,
    max_tokens: u64,
) -> Result<(), Box<Failure>> {
    let needed = prompt_tokens.saturating_add(max_tokens);
    let planned = est.kv_cache.context;
    if needed <= planned {
        return Ok(());
    }
    let asked = format!(
        "the prompt is {prompt_tokens} tokens and {max_tokens} more are asked for: {needed} in all"
    );
    let (message, advice) = match model.max_position_embeddings {
        Some(max) if needed > max => (
            format!("{asked}, over the model's maximum of {max}"),
            format!(
                "shorten the prompt, or ask for at most {} tokens (--max-tokens)",
                max.saturating_sub(prompt_tokens)
            ),
        ),
        _ => {
            let wider = estimate_for(model, req, Some(needed), est.weights.compute_f32);
            let advice = if wider.verdict == Verdict::DoesNotFit {
                format!(
                    "at context {needed} it needs {} of the {} budget: shorten the prompt or --max-tokens",
                    Bytes(wider.total_bytes),
                    Bytes(wider.budget_bytes)
                )
            } else {
                format!(
                    "--context {needed} fits ({} of {})",
                    Bytes(wider.total_bytes),
                    Bytes(wider.budget_bytes)
                )
            };
            (
                format!("{asked}, over the context of {planned} it was planned for"),
                advice,
            )
        }
    };
    let mut f = report::plain(
        FailureKind::ContextLengthExceeded,
        Some(model.dir.display().to_string()),
        advice,
        Remedy {
            min_context: Some(needed),
            ..Remedy::default()
        },
    );
    f.message = Some(message);
    f.estimate_bytes = Some(est.total_bytes);
    f.budget_bytes = Some(est.budget_bytes);
    Err(Box::new(f))
}

/// The activation coefficients as the worker protocol carries them.
pub fn wire_activation(m: &estimate::ActivationModel) -> protocol::ActivationModel {
    let k = |c: &estimate::Coefficients| protocol::ActivationCoefficients {
        score_bytes: c.score_bytes,
        mlp_bytes: c.mlp_bytes,
        mask_bytes: c.mask_bytes,
        overhead_bytes: c.overhead_bytes,
    };
    let v = |c: &estimate::vision_activation::VisionCoefficients| protocol::VisionCoefficients {
        score_bytes: c.score_bytes,
        width_bytes: c.width_bytes,
        mlp_bytes: c.mlp_bytes,
        full_width_bytes: c.full_width_bytes,
        pixel_bytes: c.pixel_bytes,
    };
    protocol::ActivationModel {
        half: k(&m.half),
        full: k(&m.full),
        vision: Some([v(&m.vision.half), v(&m.vision.full)]),
    }
}

/// MLX's buffer cache: what the budget leaves beyond the estimate, within 64 MiB..1/4.
fn cache_limit(budget: u64, estimate: u64) -> u64 {
    budget
        .saturating_sub(estimate)
        .clamp(64 << 20, (budget / 4).max(64 << 20))
}

/// The estimate at the context a generation used (prompt + generated tokens), at the
/// compute dtype it ran in, with the plan's calibration.
pub fn used_estimate(
    model: &estimate::Model,
    request: &PlanRequest,
    done: &protocol::DoneInfo,
    compute_f32: bool,
) -> Estimate {
    let used = u64::from(done.prompt_tokens) + u64::from(done.generated_tokens);
    let est = estimate_for(model, request, Some(used.max(1)), compute_f32);
    // The prompt's image tokens are counted by the estimate on top of the context.
    match est.vision.as_ref().map_or(0, |v| v.image_tokens) {
        0 => est,
        images => estimate_for(
            model,
            request,
            Some(used.saturating_sub(images).max(1)),
            compute_f32,
        ),
    }
}
