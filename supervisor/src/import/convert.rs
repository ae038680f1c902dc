//! One GGUF tensor into its MLX tensors: llama.cpp's Q/K row permutation undone, then
//! the blocks carried as MLX quantized weights or dequantized to the folder's dtype.
use estimate::gguf::{GgufTensor, Target};
use estimate::Dtype;
use safetensors::tensor::Dtype as StDtype;

use super::{dequant, mlx_quant, Out, Plan, Report};

/// Undoes llama.cpp's Q/K permutation: GGUF row `h·d + 2i + j` holds Hugging Face row
/// `h·d + j·d/2 + i` (head `h`, `d` rows per head, `j` ∈ {0, 1}). Rows are moved whole,
/// so quantized rows (whole blocks) are moved losslessly.
pub fn unpermute_rows(raw: &[u8], t: &GgufTensor, heads: u64) -> Option<Vec<u8>> {
    // Rows are the outer dimension: dims[1] of a matrix, the only one of a bias.
    let rows = *t.dims.get(1).or(t.dims.first())?;
    let row_bytes = (raw.len() as u64).checked_div(rows)? as usize;
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return None;
    }
    let per_head = (rows / heads) as usize;
    let half = per_head / 2;
    let mut out = vec![0u8; raw.len()];
    for h in 0..heads as usize {
        for j in 0..2 {
            for i in 0..half {
                let src = h * per_head + 2 * i + j;
                let dst = h * per_head + j * half + i;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&raw[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Some(out)
}

/// Elements dequantized at a time.
const DENSE_CHUNK: u64 = 1 << 22;

fn dtype_bytes(d: Dtype) -> usize {
    (d.bits() / 8) as usize
}

fn st_dtype(d: Dtype) -> StDtype {
    match d {
        Dtype::F32 => StDtype::F32,
        Dtype::F16 => StDtype::F16,
        _ => StDtype::BF16,
    }
}

/// Converts one tensor's raw blocks into output tensors.
pub(super) fn convert(
    p: &Plan,
    raw: &[u8],
    dtype: Dtype,
    outs: &mut Vec<Out>,
    report: &mut Report,
) -> Result<(), String> {
    let shape: Vec<usize> = p.t.shape().iter().map(|&d| d as usize).collect();
    match p.target {
        Target::Quant { bits, group, exact } => {
            let q = mlx_quant::to_mlx(p.t.ty, raw, dtype)
                .ok_or_else(|| format!("tensor {}: cannot carry {}", p.t.name, p.t.ty))?;
            let (rows, cols) = (shape[0], shape[1]);
            let module = p.name.trim_end_matches(".weight");
            outs.push((
                p.name.clone(),
                StDtype::U32,
                vec![rows, cols * bits as usize / 32],
                q.weight,
            ));
            let groups = vec![rows, cols / group as usize];
            outs.push((
                format!("{module}.scales"),
                st_dtype(dtype),
                groups.clone(),
                q.scales,
            ));
            outs.push((
                format!("{module}.biases"),
                st_dtype(dtype),
                groups,
                q.biases,
            ));
            if exact && q.rounded == 0 {
                report.carried_exact += 1;
            } else {
                report.carried_rounded += 1;
            }
            report.rounded_scales += q.rounded;
            report.max_scale_rel_error = report.max_scale_rel_error.max(q.max_rel_error);
        }
        Target::Dense => {
            // Dequantized a slice of blocks at a time, so a large tensor never needs its
            // full f32 copy.
            let (per, size) = p.t.ty.block();
            let blocks_per_chunk = (DENSE_CHUNK / per).max(1) as usize;
            let mut data = Vec::with_capacity(p.t.elements() as usize * dtype_bytes(dtype));
            let mut values = Vec::new();
            for chunk in raw.chunks(blocks_per_chunk * size as usize) {
                values.clear();
                values.resize(chunk.len() / size as usize * per as usize, 0f32);
                if !dequant::dequantize(p.t.ty, chunk, &mut values) {
                    return Err(format!("tensor {}: cannot dequantize {}", p.t.name, p.t.ty));
                }
                match dtype {
                    Dtype::F32 => data.extend(values.iter().flat_map(|v| v.to_le_bytes())),
                    Dtype::F16 => data.extend(
                        values
                            .iter()
                            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes()),
                    ),
                    _ => data.extend(
                        values
                            .iter()
                            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()),
                    ),
                }
            }
            outs.push((p.name.clone(), st_dtype(dtype), shape, data));
            report.dense += 1;
        }
        Target::Unsupported => {
            return Err(format!("tensor {}: {} is not supported", p.t.name, p.t.ty))
        }
    }
    Ok(())
}
