//! Self-attention of every family: separate or fused (Phi-3) q/k/v projections, optional
//! q/k RMSNorm (Qwen3 before the head transpose, Gemma 3 after), RoPE, the KV cache, and
//! one attention core ([`attend`]): MLX's fused SDPA, or Gemma 2's soft-capped scores.

use mlx_rs::{
    error::Exception,
    fast::{self, ScaledDotProductAttentionMask},
    ops, Array, Dtype,
};
use protocol::WorkerError;

use super::cache::{LayerCache, Mask};
use super::config::{Family, ModelConfig};
use super::error::MlxResultExt;
use super::layers::{Linear, RmsNorm};
use super::rope::Rope;
use super::vision::mrope::Tables;
use super::weights::WeightStore;

type R<T> = Result<T, Exception>;

/// How one forward pass rotates queries and keys: a RoPE at the cache's offset, or the
/// multimodal RoPE's tables for this pass's positions (Qwen2-VL).
pub enum Rotary<'a> {
    Rope(&'a Rope),
    Tables(&'a Tables),
    /// No rotation (SmolLM3's NoPE layers).
    None,
}

impl Rotary<'_> {
    fn apply(&self, x: &Array, offset: i32) -> R<Array> {
        match self {
            Rotary::Rope(r) => r.forward(x, offset),
            Rotary::Tables(t) => t.apply(x),
            Rotary::None => Ok(x.clone()),
        }
    }
}

enum Qkv {
    Split {
        q: Linear,
        k: Linear,
        v: Linear,
    },
    /// Phi-3's `qkv_proj`, split at (q, q + kv).
    Fused {
        qkv: Linear,
        q_dim: i32,
        kv_dim: i32,
    },
}

pub struct Attention {
    qkv: Qkv,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    /// Gemma 3 normalises q/k after the head transpose; Qwen3 before (same values).
    norm_after_transpose: bool,
    n_heads: i32,
    n_kv_heads: i32,
    scale: f32,
    softcap: Option<f32>,
}

/// Loads an RMSNorm; Gemma's `(1 + weight)` is formed once here, in the weight's dtype
/// (as `1.0 + self.weight` does in mlx-lm).
pub fn norm(
    store: &mut WeightStore,
    name: &str,
    dim: i32,
    cfg: &ModelConfig,
) -> Result<RmsNorm, WorkerError> {
    let mut n = RmsNorm::load(store, name, dim, cfg.rms_norm_eps)?;
    if cfg.family.is_gemma() {
        let one = Array::from_f32(1.0).as_dtype(n.weight.dtype()).ctx(name)?;
        let w = one.add(&n.weight).ctx(name)?;
        w.eval().ctx(name)?;
        n.weight = w;
    }
    Ok(n)
}

impl Attention {
    pub fn load(
        store: &mut WeightStore,
        p: &str,
        cfg: &ModelConfig,
    ) -> Result<Attention, WorkerError> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let (qd, kvd) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let bias = cfg.attention_bias;
        let o_bias = cfg.o_proj_bias;
        let fused = format!("{p}.qkv_proj");
        let qkv = if store.has(&format!("{fused}.weight")) {
            Qkv::Fused {
                qkv: Linear::load(store, &fused, cfg, d, qd + 2 * kvd, bias)?,
                q_dim: qd,
                kv_dim: kvd,
            }
        } else {
            Qkv::Split {
                q: Linear::load(store, &format!("{p}.q_proj"), cfg, d, qd, bias)?,
                k: Linear::load(store, &format!("{p}.k_proj"), cfg, d, kvd, bias)?,
                v: Linear::load(store, &format!("{p}.v_proj"), cfg, d, kvd, bias)?,
            }
        };
        let qk_norm = matches!(
            cfg.family,
            Family::Qwen3 | Family::Qwen3Moe | Family::Gemma3Text
        );
        let qk = |store: &mut WeightStore, which: &str| -> Result<Option<RmsNorm>, WorkerError> {
            if qk_norm {
                Ok(Some(norm(store, &format!("{p}.{which}.weight"), hd, cfg)?))
            } else {
                Ok(None)
            }
        };
        Ok(Attention {
            qkv,
            o_proj: Linear::load(store, &format!("{p}.o_proj"), cfg, qd, d, o_bias)?,
            q_norm: qk(store, "q_norm")?,
            k_norm: qk(store, "k_norm")?,
            norm_after_transpose: cfg.family == Family::Gemma3Text,
            n_heads: cfg.num_heads,
            n_kv_heads: cfg.num_kv_heads,
            scale: cfg.attn_scale,
            softcap: cfg.attn_softcap,
        })
    }

    pub fn forward(
        &self,
        x: &Array,
        mask: &Mask,
        cache: &mut LayerCache,
        rope: &Rotary,
    ) -> R<Array> {
        let (b, l) = (x.dim(0), x.dim(1));
        let (q, k, v) = match &self.qkv {
            Qkv::Split { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
            Qkv::Fused { qkv, q_dim, kv_dim } => {
                let mut parts =
                    ops::split_at_indices(qkv.forward(x)?, &[*q_dim, q_dim + kv_dim], -1)?;
                let v = parts.pop();
                let k = parts.pop();
                let q = parts.pop();
                match (q, k, v) {
                    (Some(q), Some(k), Some(v)) => (q, k, v),
                    _ => return Err(Exception::custom("qkv_proj split into fewer than 3 parts")),
                }
            }
        };
        let q = q.reshape(&[b, l, self.n_heads, -1])?;
        let k = k.reshape(&[b, l, self.n_kv_heads, -1])?;
        let v = v.reshape(&[b, l, self.n_kv_heads, -1])?;
        let apply = |n: &Option<RmsNorm>, t: Array| match n {
            Some(n) => n.forward(&t),
            None => Ok(t),
        };
        let perm = [0, 2, 1, 3];
        let (q, k) = if self.norm_after_transpose {
            (
                apply(&self.q_norm, q.transpose_axes(&perm)?)?,
                apply(&self.k_norm, k.transpose_axes(&perm)?)?,
            )
        } else {
            (
                apply(&self.q_norm, q)?.transpose_axes(&perm)?,
                apply(&self.k_norm, k)?.transpose_axes(&perm)?,
            )
        };
        let v = v.transpose_axes(&perm)?;
        let offset = cache.offset();
        let q = rope.apply(&q, offset)?;
        let k = rope.apply(&k, offset)?;
        // `--kv-bits`: a quantized cache attends itself (no soft-capping: refused at load).
        let o = match cache.attend_quantized(&q, &k, &v, self.scale, mask) {
            Some(o) => o?,
            None => {
                let (k, v) = cache.update_and_fetch(&k, &v)?;
                attend(&q, &k, &v, self.scale, mask, self.softcap)?
            }
        };
        let o = o.transpose_axes(&perm)?.reshape(&[b, l, -1])?;
        self.o_proj.forward(&o)
    }

    pub fn nbytes(&self) -> usize {
        let proj = match &self.qkv {
            Qkv::Split { q, k, v } => q.nbytes() + k.nbytes() + v.nbytes(),
            Qkv::Fused { qkv, .. } => qkv.nbytes(),
        };
        proj + self.o_proj.nbytes()
            + self.q_norm.as_ref().map_or(0, |n| n.weight.nbytes())
            + self.k_norm.as_ref().map_or(0, |n| n.weight.nbytes())
    }

    pub fn is_quantized(&self) -> bool {
        self.o_proj.is_quantized()
    }
}

/// The most negative finite value of `dtype` (`mx.finfo(dtype).min`).
fn finfo_min(dtype: Dtype) -> f32 {
    match dtype {
        Dtype::Float16 => -65504.0,
        // bf16's largest finite value: (2 − 2^−7) · 2^127, exact in f32.
        Dtype::Bfloat16 => -3.389_531_4e38,
        _ => f32::MIN,
    }
}

/// The attention core of every family: `softmax(q·kᵀ·scale + mask)·v` over (B, H, L, D)
/// queries and (B, H_kv, S, D) keys/values. Without a soft-cap it is MLX's fused
/// `scaled_dot_product_attention` (as mlx-lm's families call it); with one, Gemma 2's
/// explicit scores, capped by `tanh(s / cap) · cap`, op for op as mlx-lm's `gemma2.py`.
pub fn attend(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    mask: &Mask,
    softcap: Option<f32>,
) -> R<Array> {
    let Some(cap) = softcap else {
        return match mask {
            Mask::None => fast::scaled_dot_product_attention(q, k, v, scale, None, None),
            Mask::Causal => fast::scaled_dot_product_attention(
                q,
                k,
                v,
                scale,
                ScaledDotProductAttentionMask::Causal,
                None,
            ),
            Mask::Array(m) => fast::scaled_dot_product_attention(q, k, v, scale, m, None),
        };
    };
    let dt = q.dtype();
    let scalar = |x: f32| Array::from_f32(x).as_dtype(dt);
    let (b, h, l, d) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3));
    let kvh = k.dim(1);
    let repeats = h / kvh;
    let q = q.multiply(scalar(scale)?)?;
    let (q, k, v) = if repeats > 1 {
        (
            q.reshape(&[b, kvh, repeats, l, d])?,
            k.expand_dims(2)?,
            v.expand_dims(2)?,
        )
    } else {
        (q, k.clone(), v.clone())
    };
    let scores = q.matmul(k.swap_axes(-1, -2)?)?;
    let cap_a = scalar(cap)?;
    let scores = ops::tanh(scores.divide(&cap_a)?)?.multiply(&cap_a)?;
    let scores = match mask {
        Mask::Array(m) if m.dtype() == Dtype::Bool => {
            ops::select(m, &scores, scalar(finfo_min(scores.dtype()))?)?
        }
        Mask::Array(m) => scores.add(m)?,
        // Callers give the capped core an explicit mask for a prefill.
        Mask::Causal | Mask::None => scores,
    };
    let scores = ops::softmax_axis(&scores, -1, true)?;
    let out = scores.matmul(&v)?;
    if repeats > 1 {
        out.reshape(&[b, h, l, d])
    } else {
        Ok(out)
    }
}
