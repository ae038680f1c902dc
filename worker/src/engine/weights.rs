//! Reading the safetensors of a model folder (one file or shards) into MLX arrays.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype};
use protocol::WorkerError;

use super::error::load_failed;
use super::parallel::Lanes;

/// The weights of a model folder, taken out one by one as the model is built.
pub struct WeightStore {
    map: HashMap<String, Array>,
    dir: PathBuf,
    f32: bool,
    lanes: Lanes,
}

/// The safetensors files of `dir`: those the index names, else `model*.safetensors`,
/// else any `*.safetensors`. The index goes through the estimator's parser (capped read,
/// plain file names only) and every file's header is re-checked by the estimator's
/// reader (a regular file, a consistent header) before MLX is given it.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, WorkerError> {
    let files = listed_weight_files(dir)?;
    for f in &files {
        estimate::safetensors_header::read_shard(f).map_err(|e| load_failed(e.to_string()))?;
    }
    Ok(files)
}

fn listed_weight_files(dir: &Path) -> Result<Vec<PathBuf>, WorkerError> {
    let index = dir.join(estimate::index::INDEX_FILE);
    if estimate::fsread::present(&index) {
        let bytes = estimate::fsread::read_capped(
            &index,
            estimate::fsread::MAX_INDEX_BYTES,
            estimate::index::INDEX_FILE,
        )
        .map_err(|e| load_failed(e.to_string()))?;
        let parsed = estimate::index::ShardIndex::parse(&index, &bytes)
            .map_err(|e| load_failed(e.to_string()))?;
        if parsed.weight_map.is_empty() {
            return Err(load_failed(format!(
                "{} has no weight_map",
                index.display()
            )));
        }
        let files = parsed.shard_paths(dir);
        if let Some(missing) = files.iter().find(|f| !f.exists()) {
            return Err(load_failed(format!(
                "{} names {}, which is missing",
                index.display(),
                missing.display()
            )));
        }
        return Ok(files);
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| load_failed(format!("cannot read {}: {e}", dir.display())))?;
    let mut all: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    all.sort();
    let model: Vec<PathBuf> = all
        .iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("model"))
        })
        .cloned()
        .collect();
    let files = if model.is_empty() { all } else { model };
    if files.is_empty() {
        return Err(load_failed(format!(
            "no .safetensors files in {}",
            dir.display()
        )));
    }
    Ok(files)
}

impl WeightStore {
    /// Opens every weight file of `dir`; `progress(done, total)` is told the bytes read.
    /// With `f32`, f16 and bf16 tensors are upcast as they are read (one tensor at a
    /// time, largest first), and [`WeightStore::f32`]
    /// tells the layers to dequantize quantized matrices.
    /// With `prefix`, only the tensors under it are kept, named without it (the others,
    /// e.g. a vision tower, are never read).
    pub fn open(
        dir: &Path,
        f32: bool,
        prefix: Option<&str>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<WeightStore, WorkerError> {
        Self::open_keeping(dir, f32, prefix, None, None, &[], progress)
    }

    /// [`WeightStore::open`], keeping the tensors under `keep` too, under their own names
    /// (a vision-language model's `vision_tower.`), each name first put through `rename`
    /// (a Hugging Face checkpoint's names made mlx-community's, the first Qwen's made the
    /// decoder's); a tensor whose name (as stored) starts with one of `skip` is never
    /// read (MiMo's multi-token-prediction layers).
    pub fn open_keeping(
        dir: &Path,
        f32: bool,
        prefix: Option<&str>,
        keep: Option<&str>,
        rename: Option<fn(&str) -> Option<String>>,
        skip: &[String],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<WeightStore, WorkerError> {
        let files = weight_files(dir)?;
        let sizes: Vec<u64> = files
            .iter()
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .collect();
        let total: u64 = sizes.iter().sum();
        let mut done = 0;
        let mut map = HashMap::new();
        progress(0, total);
        for (file, size) in files.iter().zip(sizes) {
            let arrays = Array::load_safetensors(file).map_err(|e| {
                load_failed(format!("cannot read weights from {}: {e}", file.display()))
            })?;
            // Largest first: while a tensor is upcast its stored copy is held too, so the
            // load peaks at the f32 weights read so far plus one tensor in both dtypes; in
            // this order the tensor read last, on top of nearly all the f32 weights, is the
            // smallest. The order is the estimate's (`estimate::compute`), so the peak is
            // planned exactly (a HashMap's order differs from run to run).
            let mut arrays: Vec<(String, Array)> = arrays.into_iter().collect();
            arrays.sort_by(|(an, a), (bn, b)| b.nbytes().cmp(&a.nbytes()).then_with(|| an.cmp(bn)));
            for (name, array) in arrays {
                if skip.iter().any(|s| name.starts_with(s.as_str())) {
                    continue;
                }
                let name = match rename.and_then(|r| r(&name)) {
                    Some(renamed) => renamed,
                    None => name,
                };
                let name = match prefix {
                    Some(p) => match name.strip_prefix(p) {
                        Some(rest) => rest.to_string(),
                        None if keep.is_some_and(|k| name.starts_with(k)) => name,
                        None => continue,
                    },
                    None => name,
                };
                // Scales and biases of quantized matrices stay as stored: `dequantize` gives
                // the checkpoint's dtype, then upcast, as mlx-lm's `dequantize_model`.
                let quant_part = name.ends_with(".scales") || name.ends_with(".biases");
                let array = if f32
                    && !quant_part
                    && matches!(array.dtype(), Dtype::Float16 | Dtype::Bfloat16)
                {
                    // The read and the copy into f32 both allocate; the copy's is not
                    // checked by MLX.
                    let f32_bytes = array.size() as u64 * 4;
                    super::headroom::ensure(
                        array.nbytes() as u64 + f32_bytes,
                        &format!("upcasting tensor {name} to f32"),
                    )?;
                    array.as_dtype(Dtype::Float32).map_err(|e| {
                        load_failed(format!("cannot upcast tensor {name} to f32: {e}"))
                    })?
                } else {
                    array
                };
                // Per-expert MoE tensors stay lazy: the experts' stacking (moe.rs) reads
                // them one at a time into the stacked buffer, so the per-expert copies
                // never all exist next to it. Every other tensor is read here.
                if !name.contains(".experts.") {
                    array.eval().map_err(|e| {
                        load_failed(format!(
                            "cannot read tensor {name} of {}: {e}",
                            file.display()
                        ))
                    })?;
                }
                map.insert(name, array);
            }
            done += size;
            progress(done, total);
        }
        Ok(WeightStore {
            map,
            dir: dir.to_path_buf(),
            f32,
            lanes: Lanes::single(),
        })
    }

    /// The CPU streams native-dtype matmuls are split over ([`Lanes`]).
    pub fn with_lanes(mut self, lanes: Lanes) -> WeightStore {
        self.lanes = lanes;
        self
    }

    /// See [`WeightStore::with_lanes`].
    pub fn lanes(&self) -> &Lanes {
        &self.lanes
    }

    /// Whether the model is built for f32 compute (quantized matrices dequantized).
    pub fn f32(&self) -> bool {
        self.f32
    }

    /// True if the tensor is present.
    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// The shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<i32>> {
        self.map.get(name).map(|a| a.shape().to_vec())
    }

    /// Takes a tensor out; a missing one is a `load_failed` naming it.
    pub fn take(&mut self, name: &str) -> Result<Array, WorkerError> {
        self.map.remove(name).ok_or_else(|| {
            load_failed(format!(
                "tensor {name} is missing from the weights in {}",
                self.dir.display()
            ))
        })
    }

    /// Puts a tensor in (one built from others, e.g. stacked experts).
    pub fn insert(&mut self, name: String, array: Array) {
        self.map.insert(name, array);
    }

    /// Takes out every tensor whose name starts with `prefix`, names unchanged.
    pub fn take_prefixed(&mut self, prefix: &str) -> HashMap<String, Array> {
        let names: Vec<String> = self
            .map
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect();
        names
            .into_iter()
            .filter_map(|n| self.map.remove(&n).map(|a| (n, a)))
            .collect()
    }

    /// Takes a tensor out if present.
    pub fn take_opt(&mut self, name: &str) -> Option<Array> {
        self.map.remove(name)
    }

    /// Takes a tensor and checks its shape.
    pub fn take_shaped(&mut self, name: &str, shape: &[i32]) -> Result<Array, WorkerError> {
        let a = self.take(name)?;
        if a.shape() != shape {
            return Err(load_failed(format!(
                "tensor {name} in {} has shape {:?}, the config implies {shape:?}",
                self.dir.display(),
                a.shape()
            )));
        }
        Ok(a)
    }

    /// The folder the weights came from, for messages.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
