//! Routed experts (Mixtral, Qwen3-MoE, Granite MoE) as mlx-lm 0.32.2's `SwitchGLU`
//! computes them:
//! top-k routing, MLX's `gather_mm` / `gather_qmm` over stacked expert matrices, tokens
//! sorted by expert when there are many. Loads both layouts: Hugging Face's per-expert
//! tensors (stacked here, as mlx-lm's `sanitize` does) and mlx-community's `switch_mlp`.

use mlx_rs::{
    error::Exception,
    ops::{self, indexing::take_along_axis, indexing::take_axis, indexing::TryIndexMutOp},
    Array, Dtype,
};
use protocol::WorkerError;

use super::config::{Family, ModelConfig};
pub use super::config::{MoeConfig, Routing};
use super::error::{load_failed, MlxResultExt};
use super::layers::{Linear, QuantMatrix};
use super::weights::WeightStore;

type R<T> = Result<T, Exception>;

/// One stacked expert projection, (experts, out, in).
enum SwitchLinear {
    Dense(Array),
    Quant(QuantMatrix),
}

/// The routed-experts block of one layer.
pub struct MoeBlock {
    gate: Linear,
    gate_proj: SwitchLinear,
    up_proj: SwitchLinear,
    down_proj: SwitchLinear,
    top_k: i32,
    experts: i32,
    routing: Routing,
}

/// Moves Hugging Face's per-expert tensors `{p}.experts.{e}.{hf}.{part}` into one stacked
/// `{p}.switch_mlp.{name}.{part}` (nothing to do for a folder already stacked).
fn stack_experts(
    store: &mut WeightStore,
    p: &str,
    hf: &str,
    name: &str,
    experts: i32,
) -> Result<(), WorkerError> {
    for part in ["weight", "scales", "biases"] {
        if !store.has(&format!("{p}.experts.0.{hf}.{part}")) {
            continue;
        }
        // One buffer, filled expert by expert: each (lazy) expert is read into it and
        // freed, so the projection never exists twice (an `mx.stack` of the parts holds
        // all of them and the result at once).
        let what = format!("stacking the experts of {p}.{hf}");
        let first = store.take(&format!("{p}.experts.0.{hf}.{part}"))?;
        let shape: Vec<i32> = std::iter::once(experts)
            .chain(first.shape().iter().copied())
            .collect();
        let mut stacked = ops::zeros_dtype(&shape, first.dtype()).ctx(&what)?;
        stacked.eval().ctx(&what)?;
        let mut next = Some(first);
        for e in 0..experts {
            let x = match next.take() {
                Some(x) => x,
                None => store.take(&format!("{p}.experts.{e}.{hf}.{part}"))?,
            };
            if x.shape() != &shape[1..] {
                return Err(load_failed(format!(
                    "{p}.experts.{e}.{hf}.{part} has shape {:?}, expert 0 has {:?} (in {})",
                    x.shape(),
                    &shape[1..],
                    store.dir().display()
                )));
            }
            stacked.try_index_mut(e, &x).ctx(&what)?;
            stacked.eval().ctx(&what)?;
        }
        store.insert(format!("{p}.switch_mlp.{name}.{part}"), stacked);
    }
    Ok(())
}

/// Granite MoE's Hugging Face layout, as mlx-lm's `granitemoe.py` sanitizes it:
/// `{p}.input_linear.weight` (experts, 2 × intermediate, hidden) split in two along its
/// rows into the gate and up projections, `{p}.output_linear.weight` the down one
/// (nothing to do for a folder already in mlx-community's `switch_mlp` layout).
fn split_granite_experts(store: &mut WeightStore, p: &str) -> Result<(), WorkerError> {
    let input = format!("{p}.input_linear.weight");
    if !store.has(&input) {
        return Ok(());
    }
    let what = format!("splitting {input}");
    let w = store.take(&input)?;
    let mut halves = w.split_equal(2, 1).ctx(&what)?;
    let (Some(up), Some(gate)) = (halves.pop(), halves.pop()) else {
        return Err(load_failed(format!("{what}: not two halves")));
    };
    store.insert(format!("{p}.switch_mlp.gate_proj.weight"), gate);
    store.insert(format!("{p}.switch_mlp.up_proj.weight"), up);
    let down = store.take(&format!("{p}.output_linear.weight"))?;
    store.insert(format!("{p}.switch_mlp.down_proj.weight"), down);
    Ok(())
}

impl SwitchLinear {
    fn load(
        store: &mut WeightStore,
        prefix: &str,
        cfg: &ModelConfig,
        shape: [i32; 3],
    ) -> Result<SwitchLinear, WorkerError> {
        if let Some(q) = QuantMatrix::take(store, prefix, cfg, shape[2])? {
            if store.f32() {
                return Ok(SwitchLinear::Dense(q.dequantized(prefix, false)?));
            }
            return Ok(SwitchLinear::Quant(q));
        }
        let w = store.take_shaped(&format!("{prefix}.weight"), &shape)?;
        if w.dtype() != Dtype::Float32 && crate::mlx_info::device_name() == "cpu" {
            return Err(load_failed(format!(
                "{} ({}): the routed experts run on MLX's GatherMM, which on MLX 0.32.2's CPU backend supports only float32, and these experts are {}; compute in float32 (`--compute f32`, which `auto` picks on the CPU when it fits) or use a quantized folder",
                cfg.model_type,
                store.dir().display(),
                match w.dtype() {
                    Dtype::Bfloat16 => "bfloat16",
                    Dtype::Float16 => "float16",
                    _ => "not float32",
                }
            )));
        }
        Ok(SwitchLinear::Dense(w))
    }

    /// `SwitchLinear` / `QuantizedSwitchLinear`: `x @ W[idx].T`.
    fn forward(&self, x: &Array, idx: &Array, sorted: bool) -> R<Array> {
        match self {
            SwitchLinear::Dense(w) => ops::gather_mm(x, w.swap_axes(-1, -2)?, None, idx, sorted),
            SwitchLinear::Quant(q) => ops::gather_qmm(
                x,
                &q.w,
                &q.scales,
                q.biases.as_ref(),
                None,
                idx,
                true,
                q.params.group_size,
                q.params.bits,
                sorted,
            ),
        }
    }

    fn nbytes(&self) -> usize {
        match self {
            SwitchLinear::Dense(w) => w.nbytes(),
            SwitchLinear::Quant(q) => {
                q.w.nbytes() + q.scales.nbytes() + q.biases.as_ref().map_or(0, Array::nbytes)
            }
        }
    }
}

impl MoeBlock {
    /// Loads the router `{p}.gate` and the experts, in either layout. `p` is
    /// `model.layers.N.block_sparse_moe` (Mixtral) or `model.layers.N.mlp` (Qwen3-MoE).
    pub fn load(
        store: &mut WeightStore,
        p: &str,
        cfg: &ModelConfig,
        moe: &MoeConfig,
    ) -> Result<MoeBlock, WorkerError> {
        let (d, i, e) = (cfg.hidden_size, moe.intermediate, moe.experts);
        let names: [(&str, &str); 3] = match cfg.family {
            Family::Mixtral => [("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")],
            _ => [
                ("gate_proj", "gate_proj"),
                ("up_proj", "up_proj"),
                ("down_proj", "down_proj"),
            ],
        };
        for (hf, name) in names {
            stack_experts(store, p, hf, name, e)?;
        }
        if cfg.family == Family::GraniteMoe {
            split_granite_experts(store, p)?;
        }
        let router = match cfg.family {
            Family::GraniteMoe => format!("{p}.router.layer"),
            _ => format!("{p}.gate"),
        };
        let sw = |store: &mut WeightStore, name: &str, shape| {
            SwitchLinear::load(store, &format!("{p}.switch_mlp.{name}"), cfg, shape)
        };
        Ok(MoeBlock {
            gate: Linear::load(store, &router, cfg, d, e, false)?,
            gate_proj: sw(store, "gate_proj", [e, i, d])?,
            up_proj: sw(store, "up_proj", [e, i, d])?,
            down_proj: sw(store, "down_proj", [e, d, i])?,
            top_k: moe.top_k,
            experts: e,
            routing: moe.routing,
        })
    }

    /// Routes each token of `x` (B, L, D) to its experts and mixes their outputs.
    pub fn forward(
        &self,
        x: &Array,
        swiglu: &mut dyn FnMut(&Array, &Array) -> R<Array>,
    ) -> R<Array> {
        let k = self.top_k;
        let gates = self.gate.forward(x)?;
        let (inds, scores) = match self.routing {
            Routing::TopKSoftmax => {
                let part = ops::argpartition_axis(gates.negative()?, k - 1, -1)?;
                let inds = ops::split_at_indices(&part, &[k], -1)?.swap_remove(0);
                let scores = take_along_axis(&gates, &inds, -1)?;
                (inds, ops::softmax_axis(&scores, -1, true)?)
            }
            Routing::TopKSoftmaxF32 => {
                let part = ops::argpartition_axis(&gates, -k, -1)?;
                let inds = ops::split_at_indices(&part, &[self.experts - k], -1)?.swap_remove(1);
                let scores = take_along_axis(&gates, &inds, -1)?;
                (
                    inds,
                    ops::softmax_axis(&scores.as_dtype(Dtype::Float32)?, -1, false)?,
                )
            }
            Routing::SoftmaxTopK { norm } => {
                let gates = ops::softmax_axis(&gates, -1, true)?;
                let part = ops::argpartition_axis(&gates, -k, -1)?;
                let inds = ops::split_at_indices(&part, &[self.experts - k], -1)?.swap_remove(1);
                let scores = take_along_axis(&gates, &inds, -1)?;
                let scores = if norm {
                    scores.divide(scores.sum_axis(-1, true)?)?
                } else {
                    scores
                };
                (inds, scores)
            }
        };
        let y = self.switch_glu(x, &inds, swiglu)?;
        let y_dtype = y.dtype();
        let y = y.multiply(scores.expand_dims(-1)?)?.sum_axis(-2, None)?;
        match self.routing {
            Routing::SoftmaxTopK { .. } | Routing::TopKSoftmaxF32 => y.as_dtype(y_dtype),
            Routing::TopKSoftmax => Ok(y),
        }
    }

    /// `SwitchGLU`: (B, L, D) and indices (B, L, k) → (B, L, k, D).
    fn switch_glu(
        &self,
        x: &Array,
        indices: &Array,
        swiglu: &mut dyn FnMut(&Array, &Array) -> R<Array>,
    ) -> R<Array> {
        let x = x.expand_dims_axes(&[-2, -3])?;
        let shape = indices.shape().to_vec();
        let m = *shape.last().unwrap_or(&1);
        let do_sort = indices.size() >= 64;
        let (x, idx, inv) = if do_sort {
            let flat = indices.flatten(None, None)?;
            let order = ops::argsort_axis(&flat, 0)?;
            let inv = ops::argsort_axis(&order, 0)?;
            let rows = order.floor_divide(Array::from_int(m).as_dtype(order.dtype())?)?;
            let xs = take_axis(x.flatten(0, -3)?, &rows, 0)?;
            (xs, take_axis(&flat, &order, 0)?, Some(inv))
        } else {
            (x, indices.clone(), None)
        };
        let up = self.up_proj.forward(&x, &idx, do_sort)?;
        let gate = self.gate_proj.forward(&x, &idx, do_sort)?;
        let h = swiglu(&gate, &up)?;
        let out = self.down_proj.forward(&h, &idx, do_sort)?;
        let out = match inv {
            Some(inv) => {
                let out = take_axis(&out, &inv, 0)?;
                let mut full = shape.clone();
                full.extend_from_slice(&out.shape()[1..]);
                out.reshape(&full)?
            }
            None => out,
        };
        out.squeeze_axes(&[-2])
    }

    /// Whether the experts are kept quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self.down_proj, SwitchLinear::Quant(_))
    }

    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        self.gate.nbytes()
            + self.gate_proj.nbytes()
            + self.up_proj.nbytes()
            + self.down_proj.nbytes()
    }
}
