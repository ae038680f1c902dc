//! Carrying ggml blocks whose math is MLX's affine form (`w = scale·q + bias` per group
//! of 32) over as MLX quantized weights: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 losslessly,
//! Q4_K and Q5_K with only their combined scales `d·sc` and `-dmin·m` rounded to the
//! scale dtype (exact in f32). MLX packs a group's `bits`-bit codes as one little-endian
//! bit stream (code `j` at bits `bits·j …`), 32 codes in `4·bits` bytes.
use estimate::gguf::GgmlType;
use half::{bf16, f16};

use super::dequant::{half_at, scale_min_k4};
use estimate::Dtype;

/// One tensor in MLX's layout: packed `uint32` words (as little-endian bytes), and one
/// scale and bias per group, in `scale_dtype`.
#[derive(Debug, Default)]
pub struct MlxQuant {
    pub weight: Vec<u8>,
    pub scales: Vec<u8>,
    pub biases: Vec<u8>,
    /// Scales and biases that the scale dtype could not hold exactly.
    pub rounded: u64,
    /// Largest relative rounding error of a scale or bias.
    pub max_rel_error: f64,
}

impl MlxQuant {
    fn push_scale(&mut self, scale: f32, bias: f32, dtype: Dtype) {
        for (v, bias) in [(scale, false), (bias, true)] {
            let (bytes, back): (Vec<u8>, f32) = match dtype {
                Dtype::F32 => (v.to_le_bytes().to_vec(), v),
                Dtype::Bf16 => {
                    let h = bf16::from_f32(v);
                    (h.to_le_bytes().to_vec(), h.to_f32())
                }
                _ => {
                    let h = f16::from_f32(v);
                    (h.to_le_bytes().to_vec(), h.to_f32())
                }
            };
            if back != v {
                self.rounded += 1;
                if v != 0.0 {
                    let e = f64::from((back - v).abs()) / f64::from(v.abs());
                    self.max_rel_error = self.max_rel_error.max(e);
                }
            }
            if bias {
                self.biases.extend_from_slice(&bytes);
            } else {
                self.scales.extend_from_slice(&bytes);
            }
        }
    }

    fn push_group(&mut self, bits: u8, q: &[u8; 32]) {
        let start = self.weight.len();
        self.weight.resize(start + 4 * bits as usize, 0);
        let out = &mut self.weight[start..];
        for (j, &code) in q.iter().enumerate() {
            let bit = j * bits as usize;
            // A code spans at most two bytes (bits <= 8).
            let v = u16::from(code) << (bit % 8);
            out[bit / 8] |= v as u8;
            if let Some(next) = out.get_mut(bit / 8 + 1) {
                *next |= (v >> 8) as u8;
            }
        }
    }
}

/// Bits MLX uses for `ty`, when it can be carried.
pub fn mlx_bits(ty: GgmlType) -> Option<u8> {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4K => Some(4),
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5K => Some(5),
        GgmlType::Q8_0 => Some(8),
        _ => None,
    }
}

/// Converts whole blocks of `ty` (rows laid out one after the other) to MLX's layout.
/// `None` when `ty` cannot be carried.
pub fn to_mlx(ty: GgmlType, data: &[u8], scale_dtype: Dtype) -> Option<MlxQuant> {
    let bits = mlx_bits(ty)?;
    let (_, size) = ty.block();
    let size = size as usize;
    let mut out = MlxQuant::default();
    let mut q = [0u8; 32];
    for b in data.chunks_exact(size) {
        match ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let d = half_at(b, 0);
                let (bias, qs) = if ty == GgmlType::Q4_0 {
                    (-8.0 * d, &b[2..18])
                } else {
                    (half_at(b, 2), &b[4..20])
                };
                for j in 0..16 {
                    q[j] = qs[j] & 0xF;
                    q[j + 16] = qs[j] >> 4;
                }
                out.push_group(bits, &q);
                out.push_scale(d, bias, scale_dtype);
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let d = half_at(b, 0);
                let (bias, at) = if ty == GgmlType::Q5_0 {
                    (-16.0 * d, 2)
                } else {
                    (half_at(b, 2), 4)
                };
                let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                let qs = &b[at + 4..at + 20];
                for j in 0..16 {
                    q[j] = (qs[j] & 0xF) | ((((qh >> j) & 1) as u8) << 4);
                    q[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                }
                out.push_group(bits, &q);
                out.push_scale(d, bias, scale_dtype);
            }
            GgmlType::Q5K => {
                let (d, dmin) = (half_at(b, 0), half_at(b, 2));
                let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
                for k in 0..4 {
                    let chunk = &qs[32 * k..32 * k + 32];
                    for (sub, shift) in [(2 * k, 0), (2 * k + 1, 4)] {
                        let (sc, m) = scale_min_k4(sub, scales);
                        for l in 0..32 {
                            let high = (qh[l] >> sub) & 1;
                            q[l] = ((chunk[l] >> shift) & 0xF) | (high << 4);
                        }
                        out.push_group(bits, &q);
                        out.push_scale(d * f32::from(sc), -(dmin * f32::from(m)), scale_dtype);
                    }
                }
            }
            GgmlType::Q8_0 => {
                let d = half_at(b, 0);
                for j in 0..32 {
                    q[j] = b[2 + j] ^ 0x80;
                }
                out.push_group(bits, &q);
                out.push_scale(d, -128.0 * d, scale_dtype);
            }
            GgmlType::Q4K => {
                let (d, dmin) = (half_at(b, 0), half_at(b, 2));
                let (scales, qs) = (&b[4..16], &b[16..144]);
                for k in 0..4 {
                    let chunk = &qs[32 * k..32 * k + 32];
                    for (sub, shift) in [(2 * k, 0), (2 * k + 1, 4)] {
                        let (sc, m) = scale_min_k4(sub, scales);
                        for l in 0..32 {
                            q[l] = (chunk[l] >> shift) & 0xF;
                        }
                        out.push_group(bits, &q);
                        out.push_scale(d * f32::from(sc), -(dmin * f32::from(m)), scale_dtype);
                    }
                }
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::dequant::dequantize;

    /// Dequantizing MLX's form the way MLX does: scale·q + bias, per group of 32.
    fn mlx_dequant(m: &MlxQuant, bits: u8, n: usize) -> Vec<f32> {
        let group_bytes = 4 * bits as usize;
        (0..n)
            .map(|i| {
                let g = i / 32;
                let bit = (i % 32) * bits as usize;
                let w = &m.weight[g * group_bytes..];
                let pair =
                    u16::from(w[bit / 8]) | u16::from(*w.get(bit / 8 + 1).unwrap_or(&0)) << 8;
                let q = ((pair >> (bit % 8)) & ((1 << bits) - 1)) as u8;
                let s = f16::from_le_bytes([m.scales[2 * g], m.scales[2 * g + 1]]).to_f32();
                let b = f16::from_le_bytes([m.biases[2 * g], m.biases[2 * g + 1]]).to_f32();
                s * f32::from(q) + b
            })
            .collect()
    }

    fn random_blocks(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
        let (_, size) = ty.block();
        let mut x = seed;
        let mut b: Vec<u8> = (0..n * size as usize)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        // Keep the f16 d (and m/dmin) small and finite.
        for blk in b.chunks_exact_mut(size as usize) {
            let d = f16::from_f32(0.01 + f32::from(blk[0]) / 4096.0).to_le_bytes();
            let m = f16::from_f32(-0.1 + f32::from(blk[1]) / 2048.0).to_le_bytes();
            blk[0..2].copy_from_slice(&d);
            if matches!(
                ty,
                GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K
            ) {
                blk[2..4].copy_from_slice(&m);
            }
        }
        b
    }

    #[test]
    fn q4_0_q4_1_q5_0_q5_1_q8_0_are_lossless() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
        ] {
            let data = random_blocks(ty, 64, ty.id() as u64);
            let m = to_mlx(ty, &data, Dtype::F16).unwrap_or_default();
            assert_eq!(m.rounded, 0, "{ty}");
            let mut reference = vec![0f32; 64 * 32];
            assert!(dequantize(ty, &data, &mut reference));
            assert_eq!(
                mlx_dequant(&m, mlx_bits(ty).unwrap_or(0), 64 * 32),
                reference,
                "{ty}"
            );
        }
    }

    #[test]
    fn q4_k_and_q5_k_only_round_the_combined_scales() {
        for (ty, bits) in [(GgmlType::Q4K, 4), (GgmlType::Q5K, 5)] {
            let data = random_blocks(ty, 16, 3);
            let m = to_mlx(ty, &data, Dtype::F16).unwrap_or_default();
            assert!(
                m.rounded > 0 && m.max_rel_error <= 1.0 / 2048.0,
                "{}",
                m.max_rel_error
            );
            let mut reference = vec![0f32; 16 * 256];
            assert!(dequantize(ty, &data, &mut reference));
            let got = mlx_dequant(&m, bits, 16 * 256);
            let scale = reference.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (g, r) in got.iter().zip(&reference) {
                assert!((g - r).abs() <= scale / 1024.0, "{ty}: {g} vs {r}");
            }
        }
    }
}
