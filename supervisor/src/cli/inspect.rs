//! `mlxsup inspect`: the estimate of a model folder, for people (a breakdown table) and as
//! JSON (`--json`, the object of docs/CONTRACT.md). Exit 0 whatever the verdict, 5 when the
//! model cannot be read, 2 on usage errors (clap), 1 when the budget cannot be determined.
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use estimate::{estimate, Bytes, Estimate, Model, Request, Verdict, DEFAULT_PREFILL_CHUNK};

use crate::budget::{budget, Budget};
use crate::exit::Exit;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Model folder (Hugging Face / mlx-community layout).
    model: PathBuf,
    /// Context tokens [default: the model's maximum, capped at 32768].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    context: Option<u64>,
    /// Sequences generated together.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Quantize the KV cache to 4 or 8 bits.
    #[arg(long, value_parser = parse_kv_bits)]
    kv_bits: Option<u8>,
    /// Images in the prompt (VLMs).
    #[arg(long, default_value_t = 0)]
    images: u64,
    /// Their size WxH in pixels (Qwen2-VL family: the processor's resize of it decides
    /// the tokens and the vision activations) [default: 448x448].
    #[arg(long, value_parser = parse_image_size)]
    image_size: Option<(u32, u32)>,
    /// What if the weights were quantized to B bits (MLX affine, group 64)?
    #[arg(long, value_parser = parse_quant_bits)]
    quant_bits: Option<u8>,
    /// Memory the model may use (512MiB, 8GiB, 1.5GB, bytes) [default: this machine's].
    #[arg(long)]
    budget: Option<Bytes>,
    /// Prefill chunk in tokens.
    #[arg(long, default_value_t = DEFAULT_PREFILL_CHUNK, value_parser = clap::value_parser!(u64).range(1..))]
    prefill_chunk: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// The compute dtype planned for: auto (f32 on the CPU when it fits), native or f32.
    #[arg(long, default_value = "auto", value_parser = protocol::ComputePolicy::parse)]
    compute: protocol::ComputePolicy,
    /// The MLX device planned for: gpu, cpu or default.
    #[arg(long, default_value = "default", value_parser = protocol::Device::parse)]
    device: protocol::Device,
}

pub fn parse_kv_bits(s: &str) -> Result<u8, String> {
    match s {
        "4" => Ok(4),
        "8" => Ok(8),
        _ => Err(format!("`{s}` is not 4 or 8")),
    }
}

/// `WxH`, each side 1..=100000 pixels.
pub fn parse_image_size(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("`{s}` is not WxH in pixels (e.g. 1280x720)");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let side = |v: &str| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=100_000).contains(n))
    };
    match (side(w), side(h)) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => Err(bad()),
    }
}

fn parse_quant_bits(s: &str) -> Result<u8, String> {
    match s.parse::<u8>() {
        Ok(b @ (2 | 3 | 4 | 5 | 6 | 8)) => Ok(b),
        _ => Err(format!(
            "`{s}` is not one of 2, 3, 4, 5, 6, 8 (MLX affine bits)"
        )),
    }
}

pub fn run(args: InspectArgs) -> Exit {
    let model = match Model::open(&args.model) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("mlxsup: cannot read model: {e}");
            return Exit::BadModel;
        }
    };
    let budget = match budget(args.budget) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("mlxsup: {e}");
            return Exit::Internal;
        }
    };
    let (calibration, notes) = crate::calibration::calibration(
        crate::calibration::Store::default_store().as_ref(),
        &model,
        crate::calibration::planned_backend(args.device),
    );
    for n in &notes {
        eprintln!("mlxsup: warning: {n}");
    }
    let req = Request {
        calibration,
        context: args.context,
        batch: args.batch,
        kv_bits: args.kv_bits,
        images: args.images,
        image_size: args.image_size,
        quant_bits: args.quant_bits,
        prefill_chunk: args.prefill_chunk,
        budget: budget.bytes,
        ..Default::default()
    };
    // A --quant-bits what-if is about stored bytes: it is planned at the native dtype.
    let policy = match args.quant_bits {
        Some(_) => protocol::ComputePolicy::Native,
        None => args.compute,
    };
    let (_, est, note) = crate::compute::decide(&model, policy, args.device, |compute_f32| {
        estimate(
            &model,
            &Request {
                compute_f32,
                ..req.clone()
            },
        )
    });
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        json(&est, &budget, note.as_deref())
            .and_then(|s| writeln!(out, "{s}").map_err(|e| e.to_string()))
    } else {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let mut t = table(&est, &model, &budget, color);
        if let Some(n) = &note {
            t.push_str(&format!("\n{n}"));
        }
        writeln!(out, "{t}").map_err(|e| e.to_string())
    };
    match written {
        Ok(()) => Exit::Ok,
        Err(e) if e.contains("Broken pipe") => Exit::Ok,
        Err(e) => {
            eprintln!("mlxsup: cannot write the report: {e}");
            Exit::Internal
        }
    }
}

/// The docs/CONTRACT.md object, plus `budget_source`, `budget_limits` (every limit read,
/// with its room: the smallest is the budget), `compute_dtype` (`f32` or
/// `native`) and `compute_note` (why `auto` stayed native, or null).
fn json(est: &Estimate, budget: &Budget, note: Option<&str>) -> Result<String, String> {
    let mut v = serde_json::to_value(est).map_err(|e| e.to_string())?;
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "budget_source".into(),
            serde_json::Value::String(budget.source.clone()),
        );
        o.insert(
            "budget_limits".into(),
            serde_json::to_value(&budget.limits).map_err(|e| e.to_string())?,
        );
        let dtype = if est.weights.compute_f32 {
            "f32"
        } else {
            "native"
        };
        o.insert("compute_dtype".into(), dtype.into());
        o.insert("compute_note".into(), note.into());
    }
    serde_json::to_string_pretty(&v).map_err(|e| e.to_string())
}

/// The human breakdown.
pub fn table(est: &Estimate, model: &Model, budget: &Budget, color: bool) -> String {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |k: &str, v: String, note: String| rows.push((k.to_string(), v, note));
    let w = &est.weights;
    let mut wnote = format!("{}, {}, {}", w.source.as_str(), model.dtype, w.quantization);
    if let Some(b) = w.quant_bits {
        wnote = format!("what-if {b}-bit (stored: {})", Bytes(w.stored_bytes));
    }
    if w.compute_f32 {
        wnote = format!(
            "{} ({}) → {} as f32 compute on the CPU; {wnote}",
            Bytes(w.native_bytes),
            crate::compute::native_name(model),
            Bytes(w.bytes)
        );
    } else if let Some(f) = w.f32_bytes.filter(|&f| f != w.bytes) {
        wnote = format!("{wnote}; as f32 compute: {}", Bytes(f));
    }
    row("weights", Bytes(w.bytes).to_string(), wnote);
    if let Some(p) = &w.analytic_parts {
        let check = match w.source {
            estimate::WeightSource::Config => String::new(),
            _ => format!(" (analytic {})", Bytes(p.total())),
        };
        row(
            "  layers",
            Bytes(p.layers).to_string(),
            format!("{} layers{check}", model.dims.layers),
        );
        row(
            "  embeddings",
            Bytes(p.embedding).to_string(),
            String::new(),
        );
        row(
            "  lm_head",
            Bytes(p.lm_head).to_string(),
            if p.lm_head == 0 {
                "tied".into()
            } else {
                String::new()
            },
        );
        if p.extra > 0 {
            row("  mtp/extra", Bytes(p.extra).to_string(), String::new());
        }
    }
    if w.vision_bytes > 0 {
        row(
            "  vision",
            Bytes(w.vision_bytes).to_string(),
            "tower + projector".into(),
        );
    }
    let kv = &est.kv_cache;
    let capped = if est.context_capped {
        format!(
            " (capped from {})",
            est.max_position_embeddings.unwrap_or(0)
        )
    } else {
        String::new()
    };
    let kvq = kv.kv_bits.map_or(String::new(), |b| format!(", {b}-bit"));
    row(
        "kv cache",
        Bytes(kv.bytes).to_string(),
        format!(
            "context {}{capped} × batch {}, {}/token{kvq}",
            kv.context,
            kv.batch,
            Bytes(kv.bytes_per_token)
        ),
    );
    row(
        "activations",
        // With images: the text's alone; the tower's come on the next row.
        Bytes(if est.vision.is_some() {
            est.activation.bytes
        } else {
            est.activation_bytes
        })
        .to_string(),
        format!(
            "prefill chunk {}: scores {}, mlp {}",
            est.activation.chunk,
            Bytes(est.activation.scores_bytes),
            Bytes(est.activation.mlp_bytes)
        ),
    );
    if let Some(v) = &est.vision {
        row(
            "  images",
            Bytes(v.activation_bytes).to_string(),
            match &v.image {
                Some(i) => format!(
                    "{} × {} tokens ({}x{} → {}x{}, {} patches each); their KV {}; the tower runs before the prefill: the total counts the larger ({})",
                    v.images,
                    v.tokens_per_image,
                    i.width,
                    i.height,
                    i.resized_width,
                    i.resized_height,
                    i.patches,
                    Bytes(v.kv_bytes),
                    v.peak_phase.replace('_', " ")
                ),
                None => format!("{} × {} tokens", v.images, v.tokens_per_image),
            },
        );
    }
    row(
        "overhead",
        Bytes(est.overhead_bytes).to_string(),
        "runtime".into(),
    );
    if est.floor_bytes > 0 {
        row(
            "  measured",
            Bytes(est.floor_bytes).to_string(),
            "a peak measured here for this model: the total is raised to it".into(),
        );
    }
    row("total", Bytes(est.total_bytes).to_string(), String::new());
    row(
        "budget",
        Bytes(est.budget_bytes).to_string(),
        budget.describe(),
    );

    let mut s = format!("{} ({})\n", est.model, est.architecture);
    let vw = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    for (k, v, note) in &rows {
        s.push_str(format!("  {k:<13} {v:>vw$}  {note}").trim_end());
        s.push('\n');
    }
    let pct = if est.budget_bytes > 0 {
        format!(
            " ({:.0}% of budget)",
            est.total_bytes as f64 / est.budget_bytes as f64 * 100.0
        )
    } else {
        String::new()
    };
    let verdict = est.verdict.as_str();
    let verdict = if color {
        let code = match est.verdict {
            Verdict::Fits => "32",
            Verdict::Tight => "33",
            Verdict::DoesNotFit => "31",
        };
        format!("\x1b[1;{code}m{verdict}\x1b[0m")
    } else {
        verdict.to_string()
    };
    s.push_str(&format!("  {:<13} {verdict}{pct}\n", "verdict"));
    s.push_str(&format!("  {:<13} {}\n", "calibration", est.calibration));
    s.push_str(&format!("  {:<13} {}", "advice", est.advice));
    if !est.worker_runs {
        s.push_str(&format!(
            "\n  note: the worker cannot run model_type `{}` (estimated only); it runs: {}",
            est.architecture,
            ::model::SUPPORTED.join(", ")
        ));
    }
    for w in &est.warnings {
        s.push_str(&format!("\n  warning: {w}"));
    }
    s
}
