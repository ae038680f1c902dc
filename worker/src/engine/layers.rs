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
use super::weights::WeightStore;

type R<T> = Result<T, Exception>;

/// An affine-quantized matrix (`mx.quantize` layout: packed `uint32` weight, scales, biases).
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

    /// The dense matrix (MLX's own `dequantize`), evaluated once: for f32 compute.
    pub(super) fn dequantized(&self, prefix: &str) -> Result<Array, WorkerError> {
        let w = ops::dequantize(
            &self.w,
            &self.scales,
            self.biases.as_ref(),
            self.params.group_size,
            self.params.bits,
        )
        .and_then(|w| w.as_dtype(mlx_rs::Dtype::Float32))
        .ctx(&format!("dequantizing {prefix}"))?;
        w.eval().ctx(&format!("dequantizing {prefix}"))?;
        Ok(w)
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
                let wt = transposed(q.dequantized(prefix)?, prefix)?;
                return Ok(Linear::DenseT { wt, bias: b });
            }
            return Ok(Linear::Quant { q, bias: b });
        }
        let w = store.take_shaped(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        if store.f32() {
            return Ok(Linear::DenseT {
                wt: transposed(w, prefix)?,
                bias: b,
            });
        }
        Ok(Linear::Dense { w, bias: b })
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
        }
    }

    /// Whether the matrix is kept quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self, Linear::Quant { .. })
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
pub enum Embedding {
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
        if let Some(q) = QuantMatrix::take(store, prefix, cfg, cfg.hidden_size)? {
            if store.f32() {
                return Ok(Embedding::Dense(q.dequantized(prefix)?));
            }
            return Ok(Embedding::Quant(q));
        }
        Ok(Embedding::Dense(store.take_shaped(
            &format!("{prefix}.weight"),
            &[cfg.vocab_size, cfg.hidden_size],
        )?))
    }

    /// `weight[ids]` (dequantized for a quantized table).
    pub fn forward(&self, ids: &Array) -> R<Array> {
        match self {
            Embedding::Dense(w) => take_axis(w, ids, 0),
            Embedding::Quant(q) => ops::dequantize(
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
        match self {
            Embedding::Dense(w) => x.matmul(w.t()),
            Embedding::Quant(q) => q.matmul_t(x),
        }
    }

    /// The dtype of the embedded vectors.
    pub fn dtype(&self) -> mlx_rs::Dtype {
        match self {
            Embedding::Dense(w) => w.dtype(),
            Embedding::Quant(q) => q.scales.dtype(),
        }
    }

    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        match self {
            Embedding::Dense(w) => w.nbytes(),
            Embedding::Quant(q) => {
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
