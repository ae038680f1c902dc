//! The building blocks of the decoder — linear (dense or MLX-quantized), embedding and
//! RMS norm (rotary embeddings are in `rope.rs`) — each computed exactly as mlx-lm's
//! `mlx.nn` layers do.

use mlx_rs::{
    error::Exception,
    fast,
    ops::{self, indexing::take_axis},
    Array,
};
use protocol::WorkerError;

use super::config::{ModelConfig, QuantParams};
use super::error::{load_failed, MlxResultExt};
use super::parallel::{self, Lanes};
use super::weights::WeightStore;

type R<T> = Result<T, Exception>;

/// Elements per block when a quantized matrix is dequantized for f32 compute.
const DEQUANT_BLOCK_ELEMENTS: i64 = 1 << 16;

/// An affine-quantized matrix (`mx.quantize` layout: packed `uint32` weight, scales, biases).
#[derive(Clone)]
pub struct QuantMatrix {
    pub w: Array,
    pub scales: Array,
    pub biases: Option<Array>,
    pub params: QuantParams,
}

impl QuantMatrix {
    pub(super) fn take(
        store: &mut WeightStore,
        prefix: &str,
        cfg: &ModelConfig,
        in_dim: i32,
    ) -> Result<Option<QuantMatrix>, WorkerError> {
        let scales_name = format!("{prefix}.scales");
        let overridden = cfg
            .quantization_raw
            .as_ref()
            .is_some_and(|q| q.contains_key(prefix));
        let params = if overridden {
            cfg.quant_for(prefix)
        } else if let (Some(s), Some(w)) = (
            store.shape(&scales_name),
            store.shape(&format!("{prefix}.weight")),
        ) {
            // As mlx-lm's infer_quant_config: recover the packing from the shapes.
            let (s_cols, w_cols) = (*s.last().unwrap_or(&0), *w.last().unwrap_or(&0));
            if s_cols <= 0 || in_dim % s_cols != 0 || (w_cols * 32) % in_dim != 0 {
                return Err(load_failed(format!(
                    "{prefix}: quantized shapes weight {w:?} / scales {s:?} do not fit an input size of {in_dim} (in {})",
                    store.dir().display()
                )));
            }
            Some(QuantParams {
                group_size: in_dim / s_cols,
                bits: w_cols * 32 / in_dim,
            })
        } else {
            None
        };
        let Some(params) = params else {
            return Ok(None);
        };
        if !store.has(&scales_name) {
            return Err(load_failed(format!(
                "{prefix} is quantized per config.json but {scales_name} is missing (in {})",
                store.dir().display()
            )));
        }
        Ok(Some(QuantMatrix {
            w: store.take(&format!("{prefix}.weight"))?,
            scales: store.take(&scales_name)?,
            biases: store.take_opt(&format!("{prefix}.biases")),
            params,
        }))
    }

    /// The dense f32 matrix (MLX's own `dequantize`, then an upcast, as mlx-lm's
    /// `dequantize_model`), evaluated once, for f32 compute; `W^T` when `transpose`.
    ///
    /// Done in blocks of rows: MLX's CPU `dequantize` + upcast of a whole matrix peaks at
    /// 3.5× the f32 matrix (measured), so block by block the load's transient is the f32
    /// matrix once (the blocks, then their concatenation), as for a dense bf16 matrix's
    /// transpose — the figure the estimate plans (`estimate::compute`). Dequantization is
    /// elementwise within a row's groups: the blocks give the same values.
    pub(super) fn dequantized(&self, prefix: &str, transpose: bool) -> Result<Array, WorkerError> {
        let what = format!("dequantizing {prefix}");
        let rows = *self.w.shape().first().unwrap_or(&0);
        let cols = (self.w.shape().last().copied().unwrap_or(0) as i64 * 32
            / self.params.bits.max(1) as i64)
            .max(1);
        let block = ((DEQUANT_BLOCK_ELEMENTS / cols) as i32).max(1);
        let mut parts = Vec::new();
        let mut r = 0;
        while r < rows {
            let end = (r + block).min(rows);
            // MLX does not check the allocations of the dequantize and the copies: a
            // block's checkpoint-dtype, f32 and transposed copies.
            super::headroom::ensure((end - r) as u64 * cols as u64 * 12, &what)?;
            let q = self.rows((r, end)).ctx(&what)?;
            let w = ops::dequantize(
                &q.w,
                &q.scales,
                q.biases.as_ref(),
                q.params.group_size,
                q.params.bits,
            )
            .and_then(|w| w.as_dtype(mlx_rs::Dtype::Float32))
            .and_then(|w| if transpose { w.t().contiguous() } else { Ok(w) })
            .ctx(&what)?;
            w.eval().ctx(&what)?;
            parts.push(w);
            r = end;
        }
        super::headroom::ensure(rows.max(0) as u64 * cols as u64 * 4, &what)?;
        let w = ops::concatenate(&parts, if transpose { 1 } else { 0 }).ctx(&what)?;
        w.eval().ctx(&what)?;
        Ok(w)
    }

    /// Rows `r` of the matrix (views of the packed weight, scales and biases).
    fn rows(&self, r: (i32, i32)) -> R<QuantMatrix> {
        Ok(QuantMatrix {
            w: parallel::rows(&self.w, r)?,
            scales: parallel::rows(&self.scales, r)?,
            biases: self
                .biases
                .as_ref()
                .map(|b| parallel::rows(b, r))
                .transpose()?,
            params: self.params,
        })
    }

    fn matmul_t(&self, x: &Array) -> R<Array> {
        ops::quantized_matmul(
            x,
            &self.w,
            &self.scales,
            self.biases.as_ref(),
            true,
            self.params.group_size,
            self.params.bits,
        )
    }
}

/// `nn.Linear` or `nn.QuantizedLinear`.
pub enum Linear {
    Dense {
        w: Array,
        bias: Option<Array>,
    },
    Quant {
        q: QuantMatrix,
        bias: Option<Array>,
    },
    /// f32 compute: `W^T` stored row-contiguous, so that `x @ W^T` is OpenBLAS' SGEMM
    /// without a transpose; with `W` transposed on the fly, OpenBLAS packs (copies) the
    /// whole weight matrix on every decode step (`sgemm_incopy`, 40% of a decode
    /// profile). Measured: generation +30% (BENCHMARKS.md §6).
    DenseT {
        wt: Array,
        bias: Option<Array>,
    },
    /// Native dtype on the CPU device: `Dense` or `Quant` parts, views of one matrix cut
    /// by output rows, run on one CPU stream each ([`parallel`]).
    Split {
        parts: Vec<Linear>,
        lanes: Lanes,
    },
}

impl Linear {
    /// Loads `{prefix}.weight` (+ `.scales`/`.biases` if quantized, `.bias` if `bias`).
    pub fn load(
        store: &mut WeightStore,
        prefix: &str,
        cfg: &ModelConfig,
        in_dim: i32,
        out_dim: i32,
        bias: bool,
    ) -> Result<Linear, WorkerError> {
        let b = if bias {
            Some(store.take_shaped(&format!("{prefix}.bias"), &[out_dim])?)
        } else {
            None
        };
        if let Some(q) = QuantMatrix::take(store, prefix, cfg, in_dim)? {
            if store.f32() {
                let wt = q.dequantized(prefix, true)?;
                return Ok(Linear::DenseT { wt, bias: b });
            }
            return Linear::Quant { q, bias: b }
                .split(store.lanes(), out_dim, in_dim)
                .ctx(&format!("splitting {prefix}"));
        }
        let w = store.take_shaped(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        if store.f32() {
            return Ok(Linear::DenseT {
                wt: transposed(w, prefix)?,
                bias: b,
            });
        }
        Linear::Dense { w, bias: b }
            .split(store.lanes(), out_dim, in_dim)
            .ctx(&format!("splitting {prefix}"))
    }

    /// A `Dense` or `Quant` matrix of `rows × cols`, cut for `lanes` when it is large
    /// enough (else unchanged).
    fn split(self, lanes: &Lanes, rows: i32, cols: i32) -> R<Linear> {
        let Some(ranges) = lanes.ranges(rows, cols) else {
            return Ok(self);
        };
        let bias_rows = |bias: &Option<Array>, r| bias.as_ref().map(|b| parallel::rows(b, r));
        let parts = match &self {
            Linear::Dense { w, bias } => ranges
                .iter()
                .map(|&r| {
                    Ok(Linear::Dense {
                        w: parallel::rows(w, r)?,
                        bias: bias_rows(bias, r).transpose()?,
                    })
                })
                .collect::<R<Vec<_>>>()?,
            Linear::Quant { q, bias } => ranges
                .iter()
                .map(|&r| {
                    Ok(Linear::Quant {
                        q: q.rows(r)?,
                        bias: bias_rows(bias, r).transpose()?,
                    })
                })
                .collect::<R<Vec<_>>>()?,
            _ => return Ok(self),
        };
        Ok(Linear::Split {
            parts,
            lanes: lanes.clone(),
        })
    }

    /// `x @ W.T + b`, as mlx.nn does it (`addmm` when there is a bias).
    pub fn forward(&self, x: &Array) -> R<Array> {
        match self {
            Linear::Dense { w, bias: Some(b) } => ops::addmm(b, x, w.t(), None, None),
            Linear::Dense { w, bias: None } => x.matmul(w.t()),
            Linear::DenseT { wt, bias: Some(b) } => ops::addmm(b, x, wt, None, None),
            Linear::DenseT { wt, bias: None } => x.matmul(wt),
            Linear::Quant { q, bias } => {
                let y = q.matmul_t(x)?;
                match bias {
                    Some(b) => y.add(b),
                    None => Ok(y),
                }
            }
            Linear::Split { parts, lanes } => lanes.run(parts.len(), |i| parts[i].forward(x)),
        }
    }

    /// Whether the matrix is kept quantized.
    pub fn is_quantized(&self) -> bool {
        match self {
            Linear::Quant { .. } => true,
            Linear::Split { parts, .. } => parts.iter().any(Linear::is_quantized),
            _ => false,
        }
    }

    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        match self {
            Linear::Dense { w, bias } | Linear::DenseT { wt: w, bias } => {
                w.nbytes() + bias.as_ref().map_or(0, Array::nbytes)
            }
            Linear::Quant { q, bias } => {
                q.w.nbytes()
                    + q.scales.nbytes()
                    + q.biases.as_ref().map_or(0, Array::nbytes)
                    + bias.as_ref().map_or(0, Array::nbytes)
            }
            Linear::Split { parts, .. } => parts.iter().map(Linear::nbytes).sum(),
        }
    }
}

/// `w.T`, materialized row-contiguous (the original is freed).
fn transposed(w: Array, prefix: &str) -> Result<Array, WorkerError> {
    let wt = w.t().contiguous().ctx(&format!("transposing {prefix}"))?;
    wt.eval().ctx(&format!("transposing {prefix}"))?;
    Ok(wt)
}

/// `nn.Embedding` or `nn.QuantizedEmbedding`.
pub struct Embedding {
    table: Table,
    /// The tied output projection cut for the CPU lanes: views of the table.
    head: Option<Linear>,
}

enum Table {
    Dense(Array),
    Quant(QuantMatrix),
}

impl Embedding {
    /// Loads `{prefix}.weight` (+ quantization).
    pub fn load(
        store: &mut WeightStore,
        prefix: &str,
        cfg: &ModelConfig,
    ) -> Result<Embedding, WorkerError> {
        let (vocab, hidden) = (cfg.vocab_size, cfg.hidden_size);
        let table = if let Some(q) = QuantMatrix::take(store, prefix, cfg, hidden)? {
            if store.f32() {
                Table::Dense(q.dequantized(prefix, false)?)
            } else {
                Table::Quant(q)
            }
        } else {
            Table::Dense(store.take_shaped(&format!("{prefix}.weight"), &[vocab, hidden])?)
        };
        // The head's parts are views: they cost no memory, used or not.
        let head = match &table {
            Table::Dense(w) if store.f32() || w.dtype() == mlx_rs::Dtype::Float32 => None,
            Table::Dense(w) => Some(Linear::Dense {
                w: w.clone(),
                bias: None,
            }),
            Table::Quant(q) => Some(Linear::Quant {
                q: q.clone(),
                bias: None,
            }),
        }
        .map(|l| l.split(store.lanes(), vocab, hidden))
        .transpose()
        .ctx(&format!("splitting {prefix}"))?
        .filter(|l| matches!(l, Linear::Split { .. }));
        Ok(Embedding { table, head })
    }

    /// `weight[ids]` (dequantized for a quantized table).
    pub fn forward(&self, ids: &Array) -> R<Array> {
        match &self.table {
            Table::Dense(w) => take_axis(w, ids, 0),
            Table::Quant(q) => ops::dequantize(
                take_axis(&q.w, ids, 0)?,
                take_axis(&q.scales, ids, 0)?,
                q.biases
                    .as_ref()
                    .map(|b| take_axis(b, ids, 0))
                    .transpose()?
                    .as_ref(),
                q.params.group_size,
                q.params.bits,
            ),
        }
    }

    /// The tied output projection, `x @ weight.T`.
    pub fn as_linear(&self, x: &Array) -> R<Array> {
        match (&self.head, &self.table) {
            (Some(head), _) => head.forward(x),
            (None, Table::Dense(w)) => x.matmul(w.t()),
            (None, Table::Quant(q)) => q.matmul_t(x),
        }
    }

    /// Whether the table is kept quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self.table, Table::Quant(_))
    }

    /// The dtype of the embedded vectors.
    pub fn dtype(&self) -> mlx_rs::Dtype {
        match &self.table {
            Table::Dense(w) => w.dtype(),
            Table::Quant(q) => q.scales.dtype(),
        }
    }

    /// Bytes held (the head's views share the table's).
    pub fn nbytes(&self) -> usize {
        match &self.table {
            Table::Dense(w) => w.nbytes(),
            Table::Quant(q) => {
                q.w.nbytes() + q.scales.nbytes() + q.biases.as_ref().map_or(0, Array::nbytes)
            }
        }
    }
}

/// `nn.RMSNorm`.
pub struct RmsNorm {
    pub weight: Array,
    pub eps: f32,
}

impl RmsNorm {
    pub fn load(
        store: &mut WeightStore,
        name: &str,
        dim: i32,
        eps: f32,
    ) -> Result<RmsNorm, WorkerError> {
        Ok(RmsNorm {
            weight: store.take_shaped(name, &[dim])?,
            eps,
        })
    }

    pub fn forward(&self, x: &Array) -> R<Array> {
        fast::rms_norm(x, Some(&self.weight), self.eps)
    }
}
