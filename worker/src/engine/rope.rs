//! Rotary position embeddings and their scalings, as mlx-lm 0.32.2's `rope_utils.py`
//! computes them: `nn.RoPE` (default, linear), Llama 3, dynamic NTK, YaRN and
//! Su/LongRoPE, of the kind the `model` crate's description read from `rope_scaling`.

use mlx_rs::{error::Exception, fast, ops, Array};
use protocol::WorkerError;

use super::error::MlxResultExt;
pub use ::model::rope::RopeKind;

type R<T> = Result<T, Exception>;

/// A rotary embedding layer, ready to apply.
pub struct Rope {
    dims: i32,
    traditional: bool,
    base: Option<f32>,
    scale: f32,
    freqs: Option<Array>,
    /// Multiplies the rotated part of the input first (YaRN's and Su's mscale).
    input_scale: Option<f32>,
    /// Dynamic NTK: (config base, factor, max_position_embeddings).
    dynamic: Option<(f64, f64, f64)>,
}

impl Rope {
    /// The layer for `kind` over the first `dims` features, base `base`.
    pub fn new(
        kind: &RopeKind,
        dims: i32,
        base: f32,
        traditional: bool,
    ) -> Result<Rope, WorkerError> {
        let plain = Rope {
            dims,
            traditional,
            base: Some(base),
            scale: 1.0,
            freqs: None,
            input_scale: None,
            dynamic: None,
        };
        match kind {
            RopeKind::Default { scale } => Ok(Rope {
                scale: *scale,
                ..plain
            }),
            RopeKind::Dynamic {
                factor,
                max_position_embeddings,
            } => Ok(Rope {
                dynamic: Some((base as f64, *factor, *max_position_embeddings)),
                ..plain
            }),
            RopeKind::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let freqs = llama3_freqs(
                    dims,
                    base,
                    *factor,
                    *low_freq_factor,
                    *high_freq_factor,
                    *original_max_position_embeddings,
                )
                .ctx("computing llama3 rope frequencies")?;
                Ok(Rope {
                    base: None,
                    freqs: Some(freqs),
                    ..plain
                })
            }
            RopeKind::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
            } => {
                let get_mscale = |s: f64, m: f64| {
                    if s <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * s.ln() + 1.0
                    }
                };
                let m = get_mscale(*factor, *mscale) / get_mscale(*factor, *mscale_all_dim);
                let freqs = yarn_freqs(
                    dims,
                    base as f64,
                    *factor,
                    *original_max_position_embeddings,
                    *beta_fast,
                    *beta_slow,
                )
                .ctx("computing yarn rope frequencies")?;
                Ok(Rope {
                    base: None,
                    freqs: Some(freqs),
                    input_scale: (m != 1.0).then_some(m as f32),
                    ..plain
                })
            }
            RopeKind::Su {
                long_factor,
                max_position_embeddings,
                original_max_position_embeddings,
            } => {
                let freqs =
                    su_freqs(dims, base, long_factor).ctx("computing longrope frequencies")?;
                let factor = max_position_embeddings / original_max_position_embeddings;
                // mlx-lm passes no long_mscale: the default from the two lengths.
                let m = if factor <= 1.0 {
                    1.0
                } else {
                    (1.0 + factor.ln() / original_max_position_embeddings.ln()).sqrt()
                };
                Ok(Rope {
                    base: None,
                    freqs: Some(freqs),
                    traditional: false,
                    // SuScaledRoPE multiplies even by 1.0 (a no-op on the values).
                    input_scale: (m != 1.0).then_some(m as f32),
                    ..plain
                })
            }
        }
    }

    /// Applies the rotation to `x` (B, heads, L, D) at position `offset`.
    pub fn forward(&self, x: &Array, offset: i32) -> R<Array> {
        let base = match self.dynamic {
            Some((base, factor, max_pos)) => {
                let seq_len = ((x.dim(-2) + offset) as f64).max(max_pos);
                let d = self.dims as f64;
                Some(
                    (base * ((factor * seq_len / max_pos) - (factor - 1.0)).powf(d / (d - 2.0)))
                        as f32,
                )
            }
            None => self.base,
        };
        let scaled;
        let x = match self.input_scale {
            Some(s) => {
                scaled = scale_leading(x, self.dims, s)?;
                &scaled
            }
            None => x,
        };
        fast::rope(
            x,
            self.dims,
            self.traditional,
            base,
            self.scale,
            offset,
            self.freqs.as_ref(),
        )
    }
}

/// `x.at[..., :dims].multiply(s)` (the scalar in `x`'s dtype, as Python's weak scalars).
fn scale_leading(x: &Array, dims: i32, s: f32) -> R<Array> {
    let s = Array::from_f32(s).as_dtype(x.dtype())?;
    let d = x.dim(-1);
    if dims >= d {
        return x.multiply(&s);
    }
    let parts = ops::split_at_indices(x, &[dims], -1)?;
    ops::concatenate(&[parts[0].multiply(&s)?, parts[1].clone()], -1)
}

fn f(v: f64) -> Array {
    Array::from_f32(v as f32)
}

/// `base ** (arange(0, dims, 2) / dims)` in float32.
fn base_freqs(dims: i32, base: f32) -> R<Array> {
    let idx = ops::arange::<_, f32>(0, dims, 2)?.divide(Array::from_f32(dims as f32))?;
    ops::power(Array::from_f32(base), &idx)
}

/// `SuScaledRoPE`'s `long_factor * freqs`.
fn su_freqs(dims: i32, base: f32, long_factor: &[f32]) -> R<Array> {
    let n = long_factor.len() as i32;
    let out = Array::from_slice(long_factor, &[n]).multiply(base_freqs(dims, base)?)?;
    out.eval()?;
    Ok(out)
}

/// `YarnRoPE`'s blended frequencies, op for op (float32).
fn yarn_freqs(
    dims: i32,
    base: f64,
    factor: f64,
    orig: f64,
    beta_fast: f64,
    beta_slow: f64,
) -> R<Array> {
    let d = dims as f64;
    let correction =
        |rot: f64| (d * (orig / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln());
    let low = correction(beta_fast).floor().max(0.0);
    let high = correction(beta_slow).ceil().min(d - 1.0);
    let high = if low == high { high + 0.001 } else { high };
    let ramp = ops::arange::<_, f32>(0, dims / 2, 1)?
        .subtract(f(low))?
        .divide(f(high - low))?;
    let ramp = ops::clip(&ramp, (f(0.0), f(1.0)))?;
    let mask = f(1.0).subtract(&ramp)?;
    let extra = base_freqs(dims, base as f32)?;
    let inter = f(factor).multiply(&extra)?;
    let num = inter.multiply(&extra)?;
    let den = inter
        .multiply(&mask)?
        .add(extra.multiply(f(1.0).subtract(&mask)?)?)?;
    let out = num.divide(&den)?;
    out.eval()?;
    Ok(out)
}

/// mlx-lm's `Llama3RoPE` frequencies, op for op (float32).
fn llama3_freqs(dims: i32, base: f32, factor: f32, low: f32, high: f32, old_ctx: f32) -> R<Array> {
    let low_wavelen = old_ctx as f64 / low as f64;
    let high_wavelen = old_ctx as f64 / high as f64;
    let idx = ops::arange::<_, i32>(0, dims, 2)?.divide(Array::from_int(dims))?;
    let freqs = ops::power(f(base as f64), &idx)?;
    let wavelens = f(2.0 * std::f64::consts::PI).multiply(&freqs)?;
    let freqs = ops::select(
        &wavelens.gt(f(low_wavelen))?,
        freqs.multiply(f(factor as f64))?,
        &freqs,
    )?;
    let is_medium = wavelens
        .gt(f(high_wavelen))?
        .logical_and(wavelens.lt(f(low_wavelen))?)?;
    let smooth = f(old_ctx as f64)
        .divide(&wavelens)?
        .subtract(f(low as f64))?
        .divide(f(high as f64 - low as f64))?;
    let denom = f(1.0)
        .subtract(&smooth)?
        .divide(f(factor as f64))?
        .add(&smooth)?;
    let smooth_freqs = freqs.divide(&denom)?;
    let out = ops::select(&is_medium, &smooth_freqs, &freqs)?;
    out.eval()?;
    Ok(out)
}
