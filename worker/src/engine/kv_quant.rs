//! The quantized KV cache (`--kv-bits 4|8`), mirroring mlx-lm 0.32's `QuantizedKVCache`
//! (group size 64, grown in steps of 256) and `quantized_scaled_dot_product_attention`.
//!
//! As mlx-lm's `generate_step` with `quantized_kv_start = 0`: every forward pass runs with
//! the caches as they are, then each full-attention cache is converted to a quantized one
//! ([`quantize_caches`]); so the first prefill chunk attends to unquantized keys, and
//! every later one to quantized keys. Sliding-window (rotating) caches stay unquantized
//! (mlx-lm does not quantize them either).

use mlx_rs::{
    error::Exception,
    ops::{self, indexing::IndexOp, indexing::TryIndexMutOp},
    Array, Dtype,
};

use protocol::WorkerError;

use super::cache::{KvCache, LayerCache, Mask, STEP};
use super::config::ModelConfig;
use super::error::load_failed;

type R<T> = Result<T, Exception>;

/// mlx-lm's `kv_group_size` default.
pub const KV_GROUP_SIZE: i32 = 64;

/// Whether `bits` can quantize this model's KV cache: 4 or 8 bits, and a head size
/// divisible by the group size (MLX quantizes along the head dimension).
pub fn check(bits: u8, cfg: &ModelConfig) -> Result<(), WorkerError> {
    if bits != 4 && bits != 8 {
        return Err(load_failed(format!(
            "--kv-bits {bits} is not supported: use 4 or 8"
        )));
    }
    if cfg.attn_softcap.is_some() {
        return Err(load_failed(format!(
            "--kv-bits is not supported for {}: its soft-capped attention has no quantized form (mlx-lm's neither)",
            cfg.model_type
        )));
    }
    if cfg.head_dim % KV_GROUP_SIZE != 0 {
        return Err(load_failed(format!(
            "--kv-bits needs a head size divisible by {KV_GROUP_SIZE}; this model's is {}",
            cfg.head_dim
        )));
    }
    Ok(())
}

/// One quantized tensor: packed `uint32` values, scales and biases.
#[derive(Clone)]
pub struct QuantTensor {
    pub w: Array,
    pub scales: Array,
    pub biases: Array,
}

impl QuantTensor {
    fn quantize(x: &Array, bits: i32) -> R<QuantTensor> {
        let (w, scales, biases) = ops::quantize(x, KV_GROUP_SIZE, bits)?;
        Ok(QuantTensor { w, scales, biases })
    }

    fn parts(&self) -> [&Array; 3] {
        [&self.w, &self.scales, &self.biases]
    }

    fn map(&self, f: impl Fn(&Array) -> R<Array>) -> R<QuantTensor> {
        Ok(QuantTensor {
            w: f(&self.w)?,
            scales: f(&self.scales)?,
            biases: f(&self.biases)?,
        })
    }
}

/// mlx-lm's `QuantizedKVCache`.
pub struct QuantKvCache {
    keys: Option<QuantTensor>,
    values: Option<QuantTensor>,
    pub offset: i32,
    bits: i32,
}

impl QuantKvCache {
    /// mlx-lm's `KVCache.to_quantized`: the whole buffer quantized, the offset kept.
    pub fn from_full(c: &KvCache, bits: i32) -> R<QuantKvCache> {
        let (keys, values) = c.buffers();
        Ok(QuantKvCache {
            keys: keys.map(|k| QuantTensor::quantize(k, bits)).transpose()?,
            values: values.map(|v| QuantTensor::quantize(v, bits)).transpose()?,
            offset: c.offset,
            bits,
        })
    }

    /// The bits per element.
    pub fn bits(&self) -> i32 {
        self.bits
    }

    /// Positions allocated.
    pub fn capacity(&self) -> i32 {
        self.keys.as_ref().map_or(0, |k| k.w.dim(2))
    }

    /// The arrays held.
    pub fn state(&self) -> Vec<&Array> {
        self.keys
            .iter()
            .chain(self.values.iter())
            .flat_map(QuantTensor::parts)
            .collect()
    }

    /// Appends `keys`/`values` (B, heads, L, D) and returns the quantized keys and
    /// values attention should see.
    pub fn update_and_fetch(
        &mut self,
        keys: &Array,
        values: &Array,
    ) -> R<(QuantTensor, QuantTensor)> {
        let prev = self.offset;
        let n = keys.dim(2);
        if self.keys.is_none() || prev + n > self.capacity() {
            let (b, h) = (keys.dim(0), keys.dim(1));
            let per_int = 32 / self.bits;
            let steps = (STEP + n - 1) / STEP * STEP;
            let zeros = |dim: i32, dtype: Dtype| -> R<QuantTensor> {
                Ok(QuantTensor {
                    w: ops::zeros_dtype(&[b, h, steps, dim / per_int], Dtype::Uint32)?,
                    scales: ops::zeros_dtype(&[b, h, steps, dim / KV_GROUP_SIZE], dtype)?,
                    biases: ops::zeros_dtype(&[b, h, steps, dim / KV_GROUP_SIZE], dtype)?,
                })
            };
            let expand = |x: &Array| -> R<Array> {
                let x = if prev % STEP != 0 {
                    x.index((.., .., ..prev))
                } else {
                    x.clone()
                };
                let more = ops::zeros_dtype(&[b, h, steps, x.dim(3)], x.dtype())?;
                ops::concatenate(&[x, more], 2)
            };
            match (self.keys.take(), self.values.take()) {
                (Some(k), Some(v)) => {
                    self.keys = Some(k.map(expand)?);
                    self.values = Some(v.map(expand)?);
                }
                _ => {
                    self.keys = Some(zeros(keys.dim(3), keys.dtype())?);
                    self.values = Some(zeros(values.dim(3), values.dtype())?);
                }
            }
        }
        self.offset += n;
        let off = self.offset;
        let qk = QuantTensor::quantize(keys, self.bits)?;
        let qv = QuantTensor::quantize(values, self.bits)?;
        let (Some(k), Some(v)) = (self.keys.as_mut(), self.values.as_mut()) else {
            return Err(Exception::custom("quantized kv cache not allocated"));
        };
        for (dst, src) in [
            (&mut k.w, &qk.w),
            (&mut k.scales, &qk.scales),
            (&mut k.biases, &qk.biases),
            (&mut v.w, &qv.w),
            (&mut v.scales, &qv.scales),
            (&mut v.biases, &qv.biases),
        ] {
            dst.try_index_mut((.., .., prev..off), src)?;
        }
        if off == k.w.dim(2) {
            Ok((k.clone(), v.clone()))
        } else {
            let upto = |x: &Array| Ok(x.index((.., .., ..off)));
            Ok((k.map(upto)?, v.map(upto)?))
        }
    }
}

/// Converts every full-attention cache to a quantized one of `bits` (mlx-lm's
/// `maybe_quantize_kv_cache` with `quantized_kv_start = 0`).
pub fn quantize_caches(caches: &mut [LayerCache], bits: Option<i32>) -> R<()> {
    let Some(bits) = bits else {
        return Ok(());
    };
    for c in caches.iter_mut() {
        if let LayerCache::Full(full) = c {
            *c = LayerCache::Quantized(QuantKvCache::from_full(full, bits)?);
        }
    }
    Ok(())
}

/// mlx-lm's `quantized_scaled_dot_product_attention`: queries (B, heads, L, D) against
/// quantized keys and values (B, kv_heads, T, ·).
pub fn attention(
    queries: &Array,
    keys: &QuantTensor,
    values: &QuantTensor,
    scale: f32,
    mask: &Mask,
    bits: i32,
) -> R<Array> {
    let (b, heads, l, d) = (
        queries.dim(0),
        queries.dim(1),
        queries.dim(2),
        queries.dim(3),
    );
    let kv_heads = keys.w.dim(-3);
    let repeats = heads / kv_heads.max(1);
    // `queries *= scale`: the Python scalar takes the array's dtype.
    let mut q = queries.multiply(Array::from_f32(scale).as_dtype(queries.dtype())?)?;
    let (mut keys, mut values) = (keys.clone(), values.clone());
    if repeats > 1 {
        q = q.reshape(&[b, kv_heads, repeats, l, d])?;
        let expand = |x: &Array| ops::expand_dims(x, -3);
        keys = keys.map(expand)?;
        values = values.map(expand)?;
    }
    let mut scores = ops::quantized_matmul(
        &q,
        &keys.w,
        &keys.scales,
        &keys.biases,
        true,
        KV_GROUP_SIZE,
        bits,
    )?;
    let causal;
    let mask = match mask {
        Mask::None => None,
        Mask::Causal => {
            let (ql, kl) = (scores.dim(-2), scores.dim(-1));
            let qi = ops::expand_dims(ops::arange::<_, i32>(kl - ql, kl, 1)?, 1)?;
            let ki = ops::expand_dims(ops::arange::<_, i32>(0, kl, 1)?, 0)?;
            causal = qi.ge(&ki)?;
            Some(&causal)
        }
        Mask::Array(m) => Some(m),
    };
    if let Some(m) = mask {
        let min = Array::from_f32(dtype_min(scores.dtype())).as_dtype(scores.dtype())?;
        scores = ops::select(m, &scores, &min)?;
    }
    let scores = ops::softmax_axis(&scores, -1, true)?;
    let out = ops::quantized_matmul(
        &scores,
        &values.w,
        &values.scales,
        &values.biases,
        false,
        KV_GROUP_SIZE,
        bits,
    )?;
    if repeats > 1 {
        out.reshape(&[b, heads, l, d])
    } else {
        Ok(out)
    }
}

/// `mx.finfo(dtype).min`, exactly representable in `dtype`.
fn dtype_min(dtype: Dtype) -> f32 {
    match dtype {
        // 0xff7f: the largest finite bfloat16, negated (f32::MIN would round to -inf).
        Dtype::Bfloat16 => f32::from_bits(0xff7f_0000),
        Dtype::Float16 => -65504.0,
        _ => f32::MIN,
    }
}
