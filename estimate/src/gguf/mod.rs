//! GGUF files (llama.cpp's format): the header read without touching tensor data, and
//! the estimator's [`Model`] built from it — the same estimate as for a safetensors
//! folder, with exact weight bytes from every tensor's ggml type and shape.
pub mod arch;
pub mod header;
pub mod meta;
pub mod types;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

pub use arch::{architecture, default_dtype, hf_config, hf_name, target, Arch, Target};
pub use header::{parse_header, read_header, Arrays, GgufHeader, GgufTensor, MetaValue};
pub use types::GgmlType;

use crate::config::Config;
use crate::dtype::Dtype;
use crate::error::EstimateError;
use crate::model::Model;
use crate::safetensors_header::{ShardHeader, TensorInfo};

/// Whether `path` names a GGUF file by its extension.
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The GGUF file `path` stands for: itself when it is a `.gguf` file, or the one `.gguf`
/// file of a folder that has no `config.json`. `None` when it is neither.
pub fn locate(path: &Path) -> Result<Option<PathBuf>, EstimateError> {
    let Ok(meta) = fs::metadata(path) else {
        return Ok(None);
    };
    if meta.is_file() {
        return Ok(is_gguf(path).then(|| path.to_path_buf()));
    }
    if !meta.is_dir() || path.join("config.json").exists() {
        return Ok(None);
    }
    let entries = fs::read_dir(path).map_err(|source| EstimateError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_gguf(p) && p.is_file())
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        n => Err(EstimateError::Gguf {
            path: path.to_path_buf(),
            reason: format!(
                "holds {n} .gguf files ({}); name the one to use",
                found
                    .iter()
                    .filter_map(|p| p.file_name().and_then(|f| f.to_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// The estimator's model of a GGUF file, from its header alone: the config its metadata
/// implies (as an import would write it) and one "shard" listing every tensor with its
/// MLX name, shape and exact data size.
pub fn open_model(path: &Path) -> Result<Model, EstimateError> {
    let header = read_header(path, Arrays::Skip)?;
    let dtype = default_dtype(&header);
    let config_map = hf_config(&header, dtype, true)?;
    let text = serde_json::to_vec(&config_map).map_err(|e| EstimateError::Gguf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let config = Config::parse(path, &text)?;
    let tensors = header
        .tensors
        .iter()
        .filter(|t| !arch::is_dropped(&t.name))
        .map(|t| TensorInfo {
            name: hf_name(&t.name).unwrap_or_else(|| t.name.clone()),
            dtype: match t.ty {
                GgmlType::F32 => Dtype::F32,
                GgmlType::F16 => Dtype::F16,
                GgmlType::Bf16 => Dtype::Bf16,
                _ => Dtype::U8,
            },
            shape: t.shape(),
            bytes: t.bytes,
        })
        .collect();
    let metadata: BTreeMap<String, String> = header
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("general."))
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
        .collect();
    let shard = ShardHeader {
        path: path.to_path_buf(),
        tensors,
        header_bytes: header.bytes_read,
        tensor_bytes: header.tensor_bytes(),
        file_bytes: header.file_bytes,
        metadata,
    };
    let mut warnings = Vec::new();
    if header.tensors.iter().any(|t| arch::is_dropped(&t.name)) {
        warnings.push("rope_freqs.weight is not counted: MLX recomputes RoPE frequencies".into());
    }
    let mut model = Model::build(path, config, None, vec![shard], warnings, header.bytes_read)?;
    model.weights.source = crate::model::WeightSource::GgufHeader;
    // The analytic figure describes the folder an import writes (dense tensors at
    // `dtype`), not this file: say so instead of calling it a disagreement.
    model
        .warnings
        .retain(|w| !w.starts_with("safetensors_header says"));
    if let Some(a) = model.weights.analytic_bytes {
        let b = model.weights.bytes;
        if a.abs_diff(b) as f64 > crate::model::DISAGREEMENT_WARNING * b as f64 {
            model.warnings.push(format!(
                "imported into MLX the weights take about {a} bytes ({:+.1}%): tensors without an MLX quantized form are dequantized to {dtype}",
                (a as f64 - b as f64) / b.max(1) as f64 * 100.0
            ));
        }
    }
    Ok(model)
}
