//! `mlxsup import FILE.gguf DIR`: an MLX model folder from a GGUF file — config.json,
//! safetensors, tokenizer.json and tokenizer_config.json — that both mlxsup and mlx-lm
//! load. Blocks whose math is MLX's affine form are carried over as MLX quantized weights
//! (Q4_0, Q4_1, Q8_0 losslessly; Q4_K with its combined scales rounded to f16); the rest
//! are dequantized to `--dtype`. Llama-family Q/K rows, which llama.cpp stores permuted
//! for its RoPE, are put back in Hugging Face order. Plain Rust: no MLX, no worker.
pub mod convert;
pub mod dequant;
pub mod mlx_quant;
pub mod rope;
pub mod tokenizer;

use std::collections::HashMap;

use convert::{convert, unpermute_rows};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use estimate::gguf::{self, Arrays, GgufHeader, GgufTensor, Target};
use estimate::Dtype;
use safetensors::tensor::{Dtype as StDtype, TensorView};
use serde_json::{json, Value};

use crate::exit::Exit;

/// Largest safetensors shard written.
const SHARD_BYTES: u64 = 2 << 30;

/// What an import did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub dir: String,
    pub source: String,
    pub architecture: String,
    pub dtype: String,
    /// Bytes of the tensor data in the GGUF file.
    pub gguf_weight_bytes: u64,
    /// Bytes of tensors in the written safetensors.
    pub weight_bytes: u64,
    /// Tensors carried as MLX quantized weights with no rounding at all.
    pub carried_exact: u64,
    /// Tensors carried as MLX quantized weights with their scales rounded.
    pub carried_rounded: u64,
    /// Tensors dequantized (or converted) to `dtype`.
    pub dense: u64,
    /// Scales and biases the scale dtype could not hold exactly.
    pub rounded_scales: u64,
    /// Largest relative rounding error of a scale or bias.
    pub max_scale_rel_error: f64,
    /// Q/K projections put back in Hugging Face row order.
    pub unpermuted: u64,
    pub shards: usize,
    pub seconds: f64,
}

/// A failure, with the exit code it maps to.
pub type Failure = (Exit, String);

fn bad(path: &Path, reason: impl std::fmt::Display) -> Failure {
    (Exit::BadModel, format!("{}: {reason}", path.display()))
}

/// One output tensor: name, dtype, shape, bytes.
type Out = (String, StDtype, Vec<usize>, Vec<u8>);

/// How one GGUF tensor is written.
struct Plan<'a> {
    t: &'a GgufTensor,
    name: String,
    target: Target,
    /// Q/K heads whose rows to un-permute.
    unpermute: Option<u64>,
    out_bytes: u64,
}

/// Imports `gguf` (a file, or a folder holding one) into `dir`; `carry`: keep quantized
/// blocks as MLX quantized weights where the math allows (else dequantize everything).
pub fn import(
    gguf: &Path,
    dir: &Path,
    dtype: Option<&str>,
    carry: bool,
    progress: bool,
) -> Result<Report, Failure> {
    let started = Instant::now();
    let src = estimate::gguf::locate(gguf)
        .map_err(|e| (Exit::BadModel, e.to_string()))?
        .ok_or_else(|| bad(gguf, "not a .gguf file, nor a folder holding one"))?;
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err((
                Exit::Usage,
                format!(
                    "{} exists and is not empty; nothing was written (choose another folder or remove it)",
                    dir.display()
                ),
            ));
        }
    }
    let h = gguf::read_header(&src, Arrays::Keep).map_err(|e| (Exit::BadModel, e.to_string()))?;
    let arch = gguf::architecture(&h).map_err(|e| (Exit::BadModel, e.to_string()))?;
    let dtype = match dtype {
        Some("f32") => Dtype::F32,
        Some("f16") => Dtype::F16,
        Some(_) => Dtype::Bf16,
        None if !carry => Dtype::Bf16,
        None => match gguf::default_dtype(&h) {
            Dtype::F16 if cpu_backend() => Dtype::F32,
            d => d,
        },
    };
    let mut config =
        gguf::hf_config(&h, dtype, carry).map_err(|e| (Exit::BadModel, e.to_string()))?;
    if let Some(t) = h.tensors.iter().find(|t| t.name == "rope_freqs.weight") {
        if let Some(scaling) = rope_scaling(&src, &h, t, &config)? {
            config.insert("rope_scaling".into(), scaling);
        }
    }
    let (tok, tok_cfg) = tokenizer::tokenizer_files(&h).map_err(|e| bad(&src, e))?;
    let plans = plan(&h, &arch, dtype, carry, &config)?;

    // Write into a sibling temporary folder, renamed into place at the end.
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let internal = |what: String| move |e: std::io::Error| (Exit::Internal, format!("{what}: {e}"));
    std::fs::create_dir_all(parent)
        .map_err(internal(format!("cannot create {}", parent.display())))?;
    let tmp = tempfile::Builder::new()
        .prefix(".mlxsup-import-")
        .tempdir_in(parent)
        .map_err(internal(format!(
            "cannot create a folder in {}",
            parent.display()
        )))?;
    let write_json = |name: &str, v: &Value| {
        let text = serde_json::to_string_pretty(v).unwrap_or_default();
        std::fs::write(tmp.path().join(name), text)
            .map_err(internal(format!("cannot write {name}")))
    };
    write_json("config.json", &Value::Object(config))?;
    write_json("tokenizer.json", &tok)?;
    write_json("tokenizer_config.json", &tok_cfg)?;

    // Shards of at most SHARD_BYTES, planned before writing so their names are final.
    let mut shards: Vec<Vec<&Plan>> = vec![Vec::new()];
    let mut size = 0;
    for p in &plans {
        if size > 0 && size + p.out_bytes > SHARD_BYTES {
            shards.push(Vec::new());
            size = 0;
        }
        size += p.out_bytes;
        if let Some(last) = shards.last_mut() {
            last.push(p);
        }
    }
    let n = shards.len();
    let shard_name = |i: usize| {
        if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", i + 1)
        }
    };
    let file = File::open(&src).map_err(|e| bad(&src, format!("cannot open: {e}")))?;
    let bar = progress.then(|| {
        let b = indicatif::ProgressBar::new(h.tensor_bytes());
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "importing {bar:30} {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut report = Report {
        dir: dir.display().to_string(),
        source: src.display().to_string(),
        architecture: arch.model_type.to_string(),
        dtype: estimate::gguf::arch::torch_name(dtype).to_string(),
        gguf_weight_bytes: h.tensor_bytes(),
        weight_bytes: 0,
        carried_exact: 0,
        carried_rounded: 0,
        dense: 0,
        rounded_scales: 0,
        max_scale_rel_error: 0.0,
        unpermuted: 0,
        shards: n,
        seconds: 0.0,
    };
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let mut outs: Vec<Out> = Vec::new();
        for p in shard {
            let mut raw = vec![0u8; p.t.bytes as usize];
            file.read_exact_at(&mut raw, h.data_offset + p.t.offset)
                .map_err(|e| bad(&src, format!("cannot read tensor {}: {e}", p.t.name)))?;
            if let Some(heads) = p.unpermute {
                raw = unpermute_rows(&raw, p.t, heads).ok_or_else(|| {
                    bad(
                        &src,
                        format!("tensor {} does not split into {heads} heads", p.t.name),
                    )
                })?;
                report.unpermuted += 1;
            }
            convert(p, &raw, dtype, &mut outs, &mut report).map_err(|e| bad(&src, e))?;
            if let Some(b) = &bar {
                b.inc(p.t.bytes);
                b.set_message(p.t.name.clone());
            }
        }
        let name = shard_name(i);
        let views: Vec<(String, TensorView)> = outs
            .iter()
            .map(|(k, dt, shape, data)| {
                TensorView::new(*dt, shape.clone(), data)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| (Exit::Internal, format!("tensor {k}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        for (k, _) in &views {
            weight_map.insert(k.clone(), json!(name));
        }
        report.weight_bytes += outs.iter().map(|o| o.3.len() as u64).sum::<u64>();
        let meta = HashMap::from([("format".to_string(), "mlx".to_string())]);
        let path = tmp.path().join(&name);
        safetensors::tensor::serialize_to_file(views, Some(meta), &path)
            .map_err(|e| (Exit::Internal, format!("cannot write {name}: {e}")))?;
        // Readable like the JSON files beside it (the writer creates it 0600).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .map_err(internal(format!("cannot set the permissions of {name}")))?;
    }
    if n > 1 {
        write_json(
            "model.safetensors.index.json",
            &json!({"metadata": {"total_size": report.weight_bytes}, "weight_map": weight_map}),
        )?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    crate::model_dir::move_into_place(tmp, dir)?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The Llama 3 `rope_scaling` behind a `rope_freqs.weight` tensor (read from the file).
fn rope_scaling(
    src: &Path,
    h: &GgufHeader,
    t: &GgufTensor,
    config: &serde_json::Map<String, Value>,
) -> Result<Option<Value>, Failure> {
    if t.ty != estimate::gguf::GgmlType::F32 || t.dims.len() != 1 {
        return Err(bad(
            src,
            format!("rope_freqs.weight is {} {:?}, not F32 [n]", t.ty, t.dims),
        ));
    }
    let mut raw = vec![0u8; t.bytes as usize];
    File::open(src)
        .and_then(|f| f.read_exact_at(&mut raw, h.data_offset + t.offset))
        .map_err(|e| bad(src, format!("cannot read rope_freqs.weight: {e}")))?;
    let factors: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let num = |k: &str| config.get(k).and_then(Value::as_f64);
    let dims = h
        .get(&format!(
            "{}.rope.dimension_count",
            gguf::architecture(h).map(|a| a.gguf).unwrap_or_default()
        ))
        .and_then(estimate::gguf::MetaValue::as_u64)
        .or(config.get("head_dim").and_then(Value::as_u64))
        .unwrap_or(0) as usize;
    rope::recover(&factors, num("rope_theta").unwrap_or(10_000.0), dims).map_err(|e| bad(src, e))
}

/// Whether the worker's MLX runs on its CPU backend (Linux without `MLX_BACKEND=cuda`).
pub fn cpu_backend() -> bool {
    !cfg!(target_os = "macos") && std::env::var("MLX_BACKEND").map_or(true, |b| b != "cuda")
}

fn plan<'a>(
    h: &'a GgufHeader,
    arch: &gguf::Arch,
    dtype: Dtype,
    carry: bool,
    config: &serde_json::Map<String, Value>,
) -> Result<Vec<Plan<'a>>, Failure> {
    let heads = config
        .get("num_attention_heads")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let kv_heads = config
        .get("num_key_value_heads")
        .and_then(Value::as_u64)
        .unwrap_or(heads);
    let dt_bytes = dtype.bits() / 8;
    let mut plans = Vec::new();
    for t in &h.tensors {
        if gguf::arch::is_dropped(&t.name) {
            continue;
        }
        let name = gguf::hf_name(&t.name).ok_or_else(|| {
            bad(
                &h.path,
                format!(
                    "tensor {} has no MLX equivalent in a {} model",
                    t.name, arch.model_type
                ),
            )
        })?;
        let target = if t.dims.len() == 2 {
            match gguf::target(t.ty) {
                Target::Quant { .. } if !carry => Target::Dense,
                other => other,
            }
        } else if t.ty.is_float() || gguf::target(t.ty) != Target::Unsupported {
            Target::Dense
        } else {
            Target::Unsupported
        };
        let elements = t.elements();
        let out_bytes = match target {
            Target::Quant { bits, group, .. } => {
                elements * u64::from(bits) / 8 + 2 * (elements / u64::from(group)) * dt_bytes
            }
            Target::Dense => elements * dt_bytes,
            Target::Unsupported => {
                return Err(bad(
                    &h.path,
                    format!(
                        "tensor {} has type {}, which import does not support yet",
                        t.name, t.ty
                    ),
                ))
            }
        };
        let unpermute = if arch.permuted_qk {
            if t.name.ends_with("attn_q.weight") || t.name.ends_with("attn_q.bias") {
                Some(heads)
            } else if t.name.ends_with("attn_k.weight") || t.name.ends_with("attn_k.bias") {
                Some(kv_heads)
            } else {
                None
            }
        } else {
            None
        };
        plans.push(Plan {
            t,
            name,
            target,
            unpermute,
            out_bytes,
        });
    }
    Ok(plans)
}
