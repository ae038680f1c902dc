//! The tensors' bytes: seeded normals (or ones) per tensor, encoded in the folder's dtype
//! and, where marked, quantized by MLX.

use half::{bf16, f16};
use mlx_rs::{Array, Dtype};
use protocol::{ModelSpec, WorkerError, WorkerErrorKind};

use super::err;
use crate::engine::sample::Rng;

/// Box–Muller normals from the engine's seeded generator, one stream per tensor.
struct Gen {
    rng: Rng,
}

impl Gen {
    fn new(seed: u64, name: &str) -> Gen {
        // FNV-1a of the tensor name, so each tensor's values do not depend on the order.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        Gen {
            rng: Rng::new(seed ^ h),
        }
    }

    fn uniform(&mut self) -> f64 {
        ((self.rng.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    fn normals(&mut self, n: usize, std: f64) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let (u1, u2) = (self.uniform(), self.uniform());
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let t = 2.0 * std::f64::consts::PI * u2;
            out.push((r * t.cos()) as f32);
            out.push((r * t.sin()) as f32);
        }
        out.truncate(n);
        out
    }
}

/// How a tensor is initialised.
#[derive(Clone, Copy)]
pub(crate) enum Init {
    Normal(f64),
    Ones,
}

pub(crate) struct TensorSpec {
    pub name: String,
    pub shape: Vec<i32>,
    pub init: Init,
    /// Quantize this one (a linear or embedding weight whose rows fit the group size).
    pub quantize: bool,
    /// Bits for this one instead of the folder's (Qwen3-MoE's 8-bit router).
    pub bits: Option<u32>,
}

/// A tensor ready to write: dtype tag of safetensors, shape, raw little-endian bytes.
pub(crate) struct Tensor {
    pub(super) dtype: &'static str,
    pub(super) shape: Vec<i32>,
    pub(super) data: Vec<u8>,
}

pub(super) fn dtype_of(spec: &ModelSpec) -> (Dtype, &'static str, &'static str) {
    match spec.dtype.as_str() {
        "f16" => (Dtype::Float16, "F16", "float16"),
        "f32" => (Dtype::Float32, "F32", "float32"),
        _ => (Dtype::Bfloat16, "BF16", "bfloat16"),
    }
}

/// Host f32 values → bytes of the target dtype (round to nearest even).
fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::Float32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::Float16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

fn mlx_err(e: impl std::fmt::Display) -> WorkerError {
    err(
        WorkerErrorKind::Internal,
        format!("MLX failed while quantizing: {e}"),
    )
}

/// Raw bytes of an evaluated MLX array (half types read through a `u16` view).
fn array_bytes(a: &Array) -> Result<Vec<u8>, WorkerError> {
    a.eval().map_err(mlx_err)?;
    Ok(match a.dtype() {
        Dtype::Uint32 => a
            .try_as_slice::<u32>()
            .map_err(mlx_err)?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        Dtype::Float32 => a
            .try_as_slice::<f32>()
            .map_err(mlx_err)?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        _ => {
            let bits = a.view_dtype(Dtype::Uint16).map_err(mlx_err)?;
            bits.eval().map_err(mlx_err)?;
            bits.try_as_slice::<u16>()
                .map_err(mlx_err)?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect()
        }
    })
}

/// Quantizes `bytes` (a matrix in `dtype`) with MLX: returns weight, scales, biases.
fn quantize(
    bytes: &[u8],
    shape: &[i32],
    dtype: Dtype,
    group: i32,
    bits: i32,
) -> Result<[Vec<u8>; 3], WorkerError> {
    let w = if dtype == Dtype::Float32 {
        let v: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Array::from_slice(&v, shape)
    } else {
        let v: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        Array::from_slice(&v, shape)
            .view_dtype(dtype)
            .map_err(mlx_err)?
    };
    let (q, scales, biases) = mlx_rs::ops::quantize(&w, group, bits).map_err(mlx_err)?;
    Ok([
        array_bytes(&q)?,
        array_bytes(&scales)?,
        array_bytes(&biases)?,
    ])
}

/// The tensors of `specs` (random or ones, quantized where marked), sorted by name.
pub(crate) fn tensors_of(
    spec: &ModelSpec,
    specs: Vec<TensorSpec>,
) -> Result<Vec<(String, Tensor)>, WorkerError> {
    let (dtype, tag, _) = dtype_of(spec);
    let mut out = Vec::new();
    for t in specs {
        let n: usize = t.shape.iter().map(|&s| s as usize).product();
        let values = match t.init {
            Init::Ones => vec![1.0f32; n],
            Init::Normal(std) => Gen::new(spec.seed, &t.name).normals(n, std),
        };
        let data = encode(&values, dtype);
        drop(values);
        match (t.quantize, spec.quant_bits) {
            (true, Some(bits)) => {
                let (gs, bits) = (spec.group_size as i32, t.bits.unwrap_or(bits) as i32);
                let [q, s, b] = quantize(&data, &t.shape, dtype, gs, bits)?;
                let base = t.name.trim_end_matches(".weight");
                let (lead, cols) = t.shape.split_at(t.shape.len() - 1);
                let cols = cols[0];
                let with_last = |last: i32| [lead, &[last]].concat();
                out.push((
                    format!("{base}.biases"),
                    Tensor {
                        dtype: tag,
                        shape: with_last(cols / gs),
                        data: b,
                    },
                ));
                out.push((
                    format!("{base}.scales"),
                    Tensor {
                        dtype: tag,
                        shape: with_last(cols / gs),
                        data: s,
                    },
                ));
                out.push((
                    t.name.clone(),
                    Tensor {
                        dtype: "U32",
                        shape: with_last(cols * bits / 32),
                        data: q,
                    },
                ));
            }
            _ => out.push((
                t.name.clone(),
                Tensor {
                    dtype: tag,
                    shape: t.shape.clone(),
                    data,
                },
            )),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.
mod tests {
    use super::*;

    #[test]
    fn normals_are_deterministic_and_scaled() {
        let a = Gen::new(1, "x").normals(10_000, 0.02);
        assert_eq!(a, Gen::new(1, "x").normals(10_000, 0.02));
        assert_ne!(a, Gen::new(1, "y").normals(10_000, 0.02));
        let var = a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / a.len() as f64;
        assert!((var.sqrt() - 0.02).abs() < 0.001, "{}", var.sqrt());
    }
}
