//! The feed-forward part of a block: a dense gated MLP (SwiGLU, or Gemma's tanh-GELU;
//! separate gate/up or Phi-3's fused `gate_up_proj`) or routed experts, with the
//! compiled activations mlx-lm uses.

use std::cell::RefCell;

use mlx_rs::{error::Exception, ops, transforms::compile::compile, Array};
use protocol::WorkerError;

use super::config::{Family, ModelConfig};
use super::layers::Linear;
use super::moe::MoeBlock;
use super::weights::WeightStore;

type R<T> = Result<T, Exception>;

type Compiled2 = Box<dyn for<'a> FnMut((&'a Array, &'a Array)) -> R<Array>>;
type Compiled1 = Box<dyn for<'a> FnMut(&'a Array) -> R<Array>>;

/// mlx-lm's compiled `swiglu`: `silu(gate) * x`, fused the same way.
fn swiglu_fn((gate, x): (&Array, &Array)) -> R<Array> {
    gate.multiply(ops::sigmoid(gate)?)?.multiply(x)
}

/// `mlx.nn.gelu_approx`, op for op, its constants in `x`'s dtype (Python's weak scalars;
/// mlx-rs' own `gelu_approximate` promotes a bf16 input to f32).
fn gelu_approx_fn(x: &Array) -> R<Array> {
    let c = |v: f64| Array::from_f32(v as f32).as_dtype(x.dtype());
    let inner = x.add(c(0.044715)?.multiply(x.power(c(3.0)?)?)?)?;
    let t = ops::tanh(c((2.0 / std::f64::consts::PI).sqrt())?.multiply(&inner)?)?;
    c(0.5)?.multiply(x)?.multiply(c(1.0)?.add(&t)?)
}

/// `mlx.nn.gelu` (the exact, erf one; Gemma 1), op for op, constants in `x`'s dtype.
fn gelu_fn(x: &Array) -> R<Array> {
    let c = |v: f64| Array::from_f32(v as f32).as_dtype(x.dtype());
    let e = ops::erf(x.divide(c(std::f64::consts::SQRT_2)?)?)?;
    x.multiply(c(1.0)?.add(&e)?)?.divide(c(2.0)?)
}

/// The compiled activations, kept for the model's lifetime so each is traced once.
pub struct Activations {
    swiglu: RefCell<Compiled2>,
    gelu: RefCell<Compiled1>,
    gelu_exact: RefCell<Compiled1>,
}

impl Activations {
    pub fn new() -> Activations {
        Activations {
            swiglu: RefCell::new(Box::new(compile(swiglu_fn, true))),
            gelu: RefCell::new(Box::new(compile(gelu_approx_fn, true))),
            gelu_exact: RefCell::new(Box::new(compile(gelu_fn, true))),
        }
    }

    pub fn swiglu(&self, gate: &Array, x: &Array) -> R<Array> {
        (self.swiglu.borrow_mut())((gate, x))
    }

    pub fn gelu_approx(&self, x: &Array) -> R<Array> {
        (self.gelu.borrow_mut())(x)
    }

    pub fn gelu(&self, x: &Array) -> R<Array> {
        (self.gelu_exact.borrow_mut())(x)
    }
}

enum GateUp {
    Split {
        gate: Linear,
        up: Linear,
    },
    /// Phi-3's `gate_up_proj`: gate first, then up.
    Fused(Linear),
}

/// The gate's activation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Act {
    Silu,
    /// Gemma 2/3: tanh-approximated GELU.
    GeluApprox,
    /// Gemma 1: the exact GELU.
    Gelu,
}

/// A dense gated MLP.
pub struct Mlp {
    gate_up: GateUp,
    down_proj: Linear,
    act: Act,
}

/// The feed-forward part of one block.
pub enum Ffn {
    Dense(Mlp),
    Moe(MoeBlock),
}

impl Ffn {
    /// The block's feed-forward: experts where the config routes, a dense MLP else.
    pub fn load(
        store: &mut WeightStore,
        layer: usize,
        cfg: &ModelConfig,
    ) -> Result<Ffn, WorkerError> {
        let p = format!("model.layers.{layer}");
        if let Some(moe) = cfg
            .moe
            .as_ref()
            .filter(|m| m.layers.get(layer) == Some(&true))
        {
            let at = match cfg.family {
                Family::Mixtral | Family::GraniteMoe => format!("{p}.block_sparse_moe"),
                _ => format!("{p}.mlp"),
            };
            return Ok(Ffn::Moe(MoeBlock::load(store, &at, cfg, moe)?));
        }
        let (d, i, b) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        let fused = format!("{p}.mlp.gate_up_proj");
        let gate_up = if store.has(&format!("{fused}.weight")) {
            GateUp::Fused(Linear::load(store, &fused, cfg, d, 2 * i, b)?)
        } else {
            GateUp::Split {
                gate: Linear::load(store, &format!("{p}.mlp.gate_proj"), cfg, d, i, b)?,
                up: Linear::load(store, &format!("{p}.mlp.up_proj"), cfg, d, i, b)?,
            }
        };
        Ok(Ffn::Dense(Mlp {
            gate_up,
            down_proj: Linear::load(store, &format!("{p}.mlp.down_proj"), cfg, i, d, b)?,
            act: match cfg.family {
                Family::Gemma => Act::Gelu,
                f if f.is_gemma() => Act::GeluApprox,
                _ => Act::Silu,
            },
        }))
    }

    pub fn forward(&self, x: &Array, act: &Activations) -> R<Array> {
        match self {
            Ffn::Moe(m) => m.forward(x, &mut |g, u| act.swiglu(g, u)),
            Ffn::Dense(m) => {
                let (gate, up) = match &m.gate_up {
                    GateUp::Split { gate, up } => (gate.forward(x)?, up.forward(x)?),
                    GateUp::Fused(l) => {
                        let mut parts = l.forward(x)?.split_equal(2, -1)?;
                        let up = parts.pop();
                        match (parts.pop(), up) {
                            (Some(g), Some(u)) => (g, u),
                            _ => return Err(Exception::custom("gate_up_proj split failed")),
                        }
                    }
                };
                let h = match m.act {
                    Act::GeluApprox => act.gelu_approx(&gate)?.multiply(&up)?,
                    Act::Gelu => act.gelu(&gate)?.multiply(&up)?,
                    Act::Silu => act.swiglu(&gate, &up)?,
                };
                m.down_proj.forward(&h)
            }
        }
    }

    pub fn nbytes(&self) -> usize {
        match self {
            Ffn::Moe(m) => m.nbytes(),
            Ffn::Dense(m) => {
                let gu = match &m.gate_up {
                    GateUp::Split { gate, up } => gate.nbytes() + up.nbytes(),
                    GateUp::Fused(l) => l.nbytes(),
                };
                gu + m.down_proj.nbytes()
            }
        }
    }

    pub fn is_quantized(&self) -> bool {
        match self {
            Ffn::Moe(m) => m.is_quantized(),
            Ffn::Dense(m) => m.down_proj.is_quantized(),
        }
    }
}
