//! KV caches, mirroring mlx-lm's `KVCache` (grows in steps of 256) and
//! `RotatingKVCache` (a ring buffer of `window` positions, for sliding-window layers),
//! and the attention masks they imply.

use mlx_rs::{
    error::Exception,
    ops::{self, indexing::IndexOp, indexing::TryIndexMutOp},
    Array,
};

use super::kv_quant::{self, QuantKvCache};

type R<T> = Result<T, Exception>;

/// Positions added to a growing cache at once (mlx-lm's `step`).
pub const STEP: i32 = 256;

/// The attention mask of one forward pass.
pub enum Mask {
    /// Attend to everything in the cache (a single query).
    None,
    /// The fused causal mask of `scaled_dot_product_attention`.
    Causal,
    /// An explicit boolean mask (queries × keys).
    Array(Array),
}

/// mlx-lm's `create_causal_mask(N, offset, window_size)`.
pub fn causal_mask(n: i32, offset: i32, window: Option<i32>) -> R<Array> {
    let rinds = ops::arange::<_, i32>(0, offset + n, 1)?;
    let linds = if offset > 0 {
        ops::arange::<_, i32>(offset, offset + n, 1)?
    } else {
        rinds.clone()
    };
    let linds = ops::expand_dims(&linds, 1)?;
    let rinds = ops::expand_dims(&rinds, 0)?;
    let mut mask = linds.ge(&rinds)?;
    if let Some(w) = window {
        mask = mask.logical_and(linds.lt(rinds.add(Array::from_int(w))?)?)?;
    }
    Ok(mask)
}

/// The cache of one layer.
pub enum LayerCache {
    Full(KvCache),
    Rotating(RotatingKvCache),
    /// `--kv-bits`: a full cache, quantized ([`kv_quant`]).
    Quantized(QuantKvCache),
}

impl LayerCache {
    /// Tokens seen so far.
    pub fn offset(&self) -> i32 {
        match self {
            LayerCache::Full(c) => c.offset,
            LayerCache::Rotating(c) => c.offset,
            LayerCache::Quantized(c) => c.offset,
        }
    }

    /// Appends `keys`/`values` (B, heads, L, D) and returns what attention should see
    /// (a quantized cache has no dense keys: see [`LayerCache::attend_quantized`]).
    pub fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> R<(Array, Array)> {
        match self {
            LayerCache::Full(c) => c.update_and_fetch(keys, values),
            LayerCache::Rotating(c) => c.update_and_fetch(keys, values),
            LayerCache::Quantized(_) => Err(Exception::custom(
                "a quantized KV cache has no dense keys (attention goes through attend_quantized)",
            )),
        }
    }

    /// For a quantized cache: appends `keys`/`values` and attends `queries` (B, heads,
    /// L, D) to it (mlx-lm's quantized attention). `None` for the other caches, whose
    /// keys and values come from [`LayerCache::update_and_fetch`].
    pub fn attend_quantized(
        &mut self,
        queries: &Array,
        keys: &Array,
        values: &Array,
        scale: f32,
        mask: &Mask,
    ) -> Option<R<Array>> {
        let LayerCache::Quantized(c) = self else {
            return None;
        };
        let bits = c.bits();
        Some(
            c.update_and_fetch(keys, values)
                .and_then(|(k, v)| kv_quant::attention(queries, &k, &v, scale, mask, bits)),
        )
    }

    /// The mask for `n` new queries (mlx-lm's `make_mask`).
    pub fn make_mask(&self, n: i32, window: Option<i32>) -> R<Mask> {
        match self {
            LayerCache::Full(_) | LayerCache::Quantized(_) => match window {
                Some(w) => Ok(Mask::Array(causal_mask(n, self.offset(), Some(w))?)),
                None if n == 1 => Ok(Mask::None),
                None => Ok(Mask::Causal),
            },
            LayerCache::Rotating(c) => c.make_mask(n, window),
        }
    }

    /// The arrays to evaluate between prefill chunks.
    pub fn state(&self) -> Vec<&Array> {
        let (k, v) = match self {
            LayerCache::Full(c) => (&c.keys, &c.values),
            LayerCache::Rotating(c) => (&c.keys, &c.values),
            LayerCache::Quantized(c) => return c.state(),
        };
        k.iter().chain(v.iter()).collect()
    }

    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        self.state().iter().map(|a| a.nbytes()).sum()
    }

    /// A copy sharing the buffers (MLX copies a shared buffer on its next write, so the
    /// copy and the original never see each other's later tokens); `None` for a
    /// quantized cache, which the prefix cache does not keep.
    pub fn share(&self) -> Option<LayerCache> {
        match self {
            LayerCache::Full(c) => Some(LayerCache::Full(KvCache {
                keys: c.keys.clone(),
                values: c.values.clone(),
                offset: c.offset,
            })),
            LayerCache::Rotating(c) => Some(LayerCache::Rotating(RotatingKvCache {
                keys: c.keys.clone(),
                values: c.values.clone(),
                offset: c.offset,
                max_size: c.max_size,
                idx: c.idx,
            })),
            LayerCache::Quantized(_) => None,
        }
    }

    /// Whether the cache can be rewound to its first `len` positions: a full cache
    /// always (the positions past `len` are overwritten by the next tokens); a rotating
    /// cache only while it has not wrapped (mlx-lm's `is_trimmable`), or when nothing is
    /// to be dropped; a quantized one never (the prefix cache does not keep it).
    pub fn can_rewind(&self, len: i32) -> bool {
        match self {
            LayerCache::Full(c) => len <= c.offset,
            LayerCache::Rotating(c) => len == c.offset || (len < c.offset && c.offset < c.max_size),
            LayerCache::Quantized(_) => false,
        }
    }

    /// Rewinds to the first `len` positions; false (and unchanged) when
    /// [`LayerCache::can_rewind`] says it cannot.
    pub fn rewind(&mut self, len: i32) -> bool {
        if !self.can_rewind(len) {
            return false;
        }
        match self {
            LayerCache::Full(c) => c.offset = len,
            LayerCache::Rotating(c) => {
                if len < c.offset {
                    // Not wrapped: position p is slot p.
                    c.idx = len;
                    c.offset = len;
                }
            }
            LayerCache::Quantized(_) => return false,
        }
        true
    }

    /// Positions allocated (≥ offset for the growing cache).
    pub fn capacity(&self) -> i32 {
        match self {
            LayerCache::Full(c) => c.keys.as_ref().map_or(0, |k| k.dim(2)),
            LayerCache::Rotating(c) => c.keys.as_ref().map_or(0, |k| k.dim(2)),
            LayerCache::Quantized(c) => c.capacity(),
        }
    }
}

/// mlx-lm's `KVCache`.
#[derive(Default)]
pub struct KvCache {
    keys: Option<Array>,
    values: Option<Array>,
    pub offset: i32,
}

impl KvCache {
    /// The key and value buffers (all positions allocated).
    pub(super) fn buffers(&self) -> (Option<&Array>, Option<&Array>) {
        (self.keys.as_ref(), self.values.as_ref())
    }

    fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> R<(Array, Array)> {
        let prev = self.offset;
        let n = keys.dim(2);
        let need_grow = match &self.keys {
            None => true,
            Some(k) => prev + n > k.dim(2),
        };
        if need_grow {
            let (b, h, dk) = (keys.dim(0), keys.dim(1), keys.dim(3));
            let dv = values.dim(3);
            let n_steps = (STEP + n - 1) / STEP;
            let new_k = ops::zeros_dtype(&[b, h, n_steps * STEP, dk], keys.dtype())?;
            let new_v = ops::zeros_dtype(&[b, h, n_steps * STEP, dv], values.dtype())?;
            match (self.keys.take(), self.values.take()) {
                (Some(mut k), Some(mut v)) => {
                    if prev % STEP != 0 {
                        k = k.index((.., .., ..prev));
                        v = v.index((.., .., ..prev));
                    }
                    self.keys = Some(ops::concatenate(&[k, new_k], 2)?);
                    self.values = Some(ops::concatenate(&[v, new_v], 2)?);
                }
                _ => {
                    self.keys = Some(new_k);
                    self.values = Some(new_v);
                }
            }
        }
        self.offset += n;
        let off = self.offset;
        let (Some(k), Some(v)) = (self.keys.as_mut(), self.values.as_mut()) else {
            return Err(Exception::custom("kv cache not allocated"));
        };
        k.try_index_mut((.., .., prev..off), keys)?;
        v.try_index_mut((.., .., prev..off), values)?;
        if off < k.dim(2) {
            Ok((k.index((.., .., ..off)), v.index((.., .., ..off))))
        } else {
            Ok((k.clone(), v.clone()))
        }
    }
}

/// mlx-lm's `RotatingKVCache` with `keep = 0`.
pub struct RotatingKvCache {
    keys: Option<Array>,
    values: Option<Array>,
    pub offset: i32,
    max_size: i32,
    idx: i32,
}

impl RotatingKvCache {
    pub fn new(max_size: i32) -> RotatingKvCache {
        RotatingKvCache {
            keys: None,
            values: None,
            offset: 0,
            max_size,
            idx: 0,
        }
    }

    fn temporal_order(&self, v: &Array) -> R<Array> {
        if self.idx == v.dim(2) {
            Ok(v.clone())
        } else if self.idx < self.offset {
            ops::concatenate(
                &[v.index((.., .., self.idx..)), v.index((.., .., ..self.idx))],
                2,
            )
        } else {
            Ok(v.index((.., .., ..self.idx)))
        }
    }

    fn trim(trim_size: i32, v: &Array, append: Option<&Array>) -> R<Array> {
        let mut parts = vec![if trim_size > 0 {
            v.index((.., .., trim_size..))
        } else {
            v.clone()
        }];
        if let Some(a) = append {
            parts.push(a.clone());
        }
        ops::concatenate(&parts, 2)
    }

    fn update_concat(&mut self, keys: &Array, values: &Array) -> R<(Array, Array)> {
        match (self.keys.take(), self.values.take()) {
            (Some(k), Some(v)) => {
                let k = self.temporal_order(&k)?;
                let v = self.temporal_order(&v)?;
                self.idx = k.dim(2);
                let trim_size = self.idx - self.max_size + 1;
                self.keys = Some(Self::trim(trim_size, &k, Some(keys))?);
                self.values = Some(Self::trim(trim_size, &v, Some(values))?);
            }
            _ => {
                self.keys = Some(keys.clone());
                self.values = Some(values.clone());
            }
        }
        self.offset += keys.dim(2);
        let (Some(k), Some(v)) = (&self.keys, &self.values) else {
            return Err(Exception::custom("rotating cache not allocated"));
        };
        self.idx = k.dim(2);
        Ok((k.clone(), v.clone()))
    }

    fn update_in_place(&mut self, keys: &Array, values: &Array) -> R<(Array, Array)> {
        let (b, h, s, dk) = (keys.dim(0), keys.dim(1), keys.dim(2), keys.dim(3));
        let prev = self.offset;
        let grow = match &self.keys {
            None => true,
            Some(k) => prev >= k.dim(2) && k.dim(2) < self.max_size,
        };
        if grow {
            let new_size = STEP.min(self.max_size - prev);
            let new_k = ops::zeros_dtype(&[b, h, new_size, dk], keys.dtype())?;
            let new_v = ops::zeros_dtype(&[b, h, new_size, values.dim(3)], values.dtype())?;
            match (self.keys.take(), self.values.take()) {
                (Some(k), Some(v)) => {
                    self.keys = Some(ops::concatenate(&[k, new_k], 2)?);
                    self.values = Some(ops::concatenate(&[v, new_v], 2)?);
                }
                _ => {
                    self.keys = Some(new_k);
                    self.values = Some(new_v);
                }
            }
            self.idx = prev;
        }
        let (Some(k), Some(v)) = (self.keys.as_mut(), self.values.as_mut()) else {
            return Err(Exception::custom("rotating cache not allocated"));
        };
        let trim_size = k.dim(2) - self.max_size;
        if trim_size > 0 {
            *k = Self::trim(trim_size, k, None)?;
            *v = Self::trim(trim_size, v, None)?;
            self.idx = self.max_size;
        }
        if self.idx == self.max_size {
            self.idx = 0;
        }
        let (i, j) = (self.idx, self.idx + s);
        k.try_index_mut((.., .., i..j), keys)?;
        v.try_index_mut((.., .., i..j), values)?;
        self.offset += s;
        self.idx += s;
        if self.offset < k.dim(2) {
            Ok((
                k.index((.., .., ..self.offset)),
                v.index((.., .., ..self.offset)),
            ))
        } else {
            Ok((k.clone(), v.clone()))
        }
    }

    fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> R<(Array, Array)> {
        if keys.dim(2) == 1 {
            self.update_in_place(keys, values)
        } else {
            self.update_concat(keys, values)
        }
    }

    fn make_mask(&self, n: i32, window: Option<i32>) -> R<Mask> {
        if n > 1 {
            let window = window.unwrap_or(self.max_size);
            let offset = (self.max_size - 1).min(self.offset);
            if offset + n > window {
                Ok(Mask::Array(causal_mask(n, offset, Some(window))?))
            } else {
                Ok(Mask::Causal)
            }
        } else {
            // The window equals the buffer here, so a single query sees all of it.
            Ok(Mask::None)
        }
    }

    /// The window (ring size).
    pub fn max_size(&self) -> i32 {
        self.max_size
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.
mod tests {
    use super::*;

    /// Keys of `n` positions starting at `start`, each filled with its position.
    fn positions(start: i32, n: i32) -> Array {
        let v: Vec<f32> = (start..start + n)
            .flat_map(|p| [p as f32, p as f32])
            .collect();
        Array::from_slice(&v, &[1, 1, n, 2])
    }

    fn seen(a: &Array) -> Vec<i32> {
        let v = a.as_type::<f32>().unwrap();
        v.eval().unwrap();
        v.as_slice::<f32>()
            .iter()
            .step_by(2)
            .map(|x| *x as i32)
            .collect()
    }

    #[test]
    fn full_cache_grows_in_steps_and_returns_everything() {
        let _mlx = crate::engine::tests::mlx_lock();
        let mut c = LayerCache::Full(KvCache::default());
        let (k, _) = c
            .update_and_fetch(&positions(0, 5), &positions(0, 5))
            .unwrap();
        assert_eq!(seen(&k), (0..5).collect::<Vec<_>>());
        assert_eq!(c.capacity(), STEP);
        for p in 5..300 {
            c.update_and_fetch(&positions(p, 1), &positions(p, 1))
                .unwrap();
        }
        assert_eq!(c.offset(), 300);
        assert_eq!(c.capacity(), 2 * STEP);
    }

    #[test]
    fn rotating_cache_keeps_the_last_window_positions() {
        let _mlx = crate::engine::tests::mlx_lock();
        let w = 8;
        let mut c = LayerCache::Rotating(RotatingKvCache::new(w));
        // A prefill chunk longer than the window keeps the whole chunk...
        let (k, _) = c
            .update_and_fetch(&positions(0, 10), &positions(0, 10))
            .unwrap();
        assert_eq!(seen(&k), (0..10).collect::<Vec<_>>());
        // ...the next chunk sees the last window−1 positions before it plus itself...
        let (k, _) = c
            .update_and_fetch(&positions(10, 3), &positions(10, 3))
            .unwrap();
        assert_eq!(seen(&k), (3..13).collect::<Vec<_>>());
        // ...and single tokens overwrite the oldest slot of a ring of `w`.
        for p in 13..30 {
            let (k, _) = c
                .update_and_fetch(&positions(p, 1), &positions(p, 1))
                .unwrap();
            let mut s = seen(&k);
            assert_eq!(s.len(), w as usize);
            s.sort();
            assert_eq!(s, (p + 1 - w..=p).collect::<Vec<_>>(), "after position {p}");
        }
        assert_eq!(c.offset(), 30);
    }

    #[test]
    fn masks_follow_mlx_lm() {
        let _mlx = crate::engine::tests::mlx_lock();
        let m = causal_mask(3, 2, Some(3)).unwrap();
        let v: Vec<bool> = m.as_slice::<bool>().to_vec();
        // Query at position 2 sees 0..=2, at 3 sees 1..=3, at 4 sees 2..=4.
        let expect = [
            [true, true, true, false, false],
            [false, true, true, true, false],
            [false, false, true, true, true],
        ];
        assert_eq!(v, expect.concat());
        let c = LayerCache::Full(KvCache::default());
        assert!(matches!(c.make_mask(1, None).unwrap(), Mask::None));
        assert!(matches!(c.make_mask(4, None).unwrap(), Mask::Causal));
        let r = LayerCache::Rotating(RotatingKvCache::new(4));
        assert!(matches!(r.make_mask(4, Some(4)).unwrap(), Mask::Causal));
        assert!(matches!(r.make_mask(5, Some(4)).unwrap(), Mask::Array(_)));
    }
}
