//! Qwen2-VL's multimodal RoPE on the language side, as mlx-vlm 0.7.6 computes it
//! (`MRoPERotaryEmbedding`, style "chunked", and `get_rope_index`): every token has three
//! positions (temporal, height, width); the head's `head_dim/2` frequencies are cut into
//! `mrope_section` chunks, the first rotated by the temporal position, the second by the
//! height, the third by the width. Text tokens have the same position on all three axes;
//! an image's merged units are numbered by their (t, row, column) in the grid, after the
//! text before them, and the text after an image resumes at the image's largest
//! position + 1 — so a prompt with images ends at a position below its length, and
//! decoding continues from there (the `delta`).
//!
//! The angles are computed explicitly (`pos · inv_freq` in f32, `cos`/`sin`, cast to the
//! activations' dtype, `x·cos + rotate_half(x)·sin`), not with MLX's fused RoPE, so that
//! they round as the reference's do, text-only prompts included.

use mlx_rs::{error::Exception, ops, ops::indexing::IndexOp, Array, Dtype};

type R<T> = Result<T, Exception>;

/// The frequencies of the multimodal RoPE.
pub struct MRope {
    inv_freq: Array,
    section: [i32; 3],
    half: i32,
}

/// The cos and sin tables of one forward pass, (1, 1, L, head_dim) each.
pub struct Tables {
    pub cos: Array,
    pub sin: Array,
}

impl MRope {
    /// `inv_freq = 1 / base^(arange(0, dim, 2) / dim)` in f32, as mlx-vlm's
    /// `compute_inv_freq`.
    pub fn new(head_dim: i32, base: f32, section: [i32; 3]) -> R<MRope> {
        let exponents = ops::divide(
            &Array::arange::<_, f32>(0.0, head_dim as f32, 2.0)?,
            Array::from_f32(head_dim as f32),
        )?;
        let inv_freq = ops::divide(
            Array::from_f32(1.0),
            &ops::power(Array::from_f32(base), &exponents)?,
        )?;
        inv_freq.eval()?;
        Ok(MRope {
            inv_freq,
            section,
            half: head_dim / 2,
        })
    }

    /// Which of the three positions frequency `j` turns with (mlx-vlm's chunked
    /// selector: frequencies past the three sections use the temporal one).
    fn axis(&self, j: i32) -> usize {
        let [a, b, c] = self.section;
        if j >= a && j < a + b {
            1
        } else if j >= a + b && j < a + b + c {
            2
        } else {
            0
        }
    }

    /// The tables for tokens at `positions`, in `dtype`.
    pub fn tables(&self, positions: &[[i32; 3]], dtype: Dtype) -> R<Tables> {
        let l = positions.len() as i32;
        let axes: Vec<usize> = (0..self.half).map(|j| self.axis(j)).collect();
        let mut p = Vec::with_capacity(positions.len() * axes.len());
        for pos in positions {
            p.extend(axes.iter().map(|&a| pos[a] as f32));
        }
        let freqs = ops::multiply(Array::from_slice(&p, &[l, self.half]), &self.inv_freq)?;
        let emb = ops::concatenate(&[&freqs, &freqs], -1)?;
        let shape = [1, 1, l, 2 * self.half];
        Ok(Tables {
            cos: ops::cos(&emb)?.as_dtype(dtype)?.reshape(&shape)?,
            sin: ops::sin(&emb)?.as_dtype(dtype)?.reshape(&shape)?,
        })
    }
}

impl Tables {
    /// Rotates queries or keys (B, heads, L, head_dim).
    pub fn apply(&self, x: &Array) -> R<Array> {
        let d = x.dim(-1);
        let x1 = x.index((.., .., .., ..d / 2));
        let x2 = x.index((.., .., .., d / 2..));
        let rotated = ops::concatenate(&[&ops::negative(&x2)?, &x1], -1)?;
        ops::add(
            &ops::multiply(x, &self.cos)?,
            &ops::multiply(&rotated, &self.sin)?,
        )?
        .as_dtype(x.dtype())
    }
}

pub use ::model::run::VisionTokens;

/// The prompt's positions, as mlx-vlm's `get_rope_index` for one unpadded row: one
/// `[t, h, w]` per token, and the offset `delta` (≤ 0) decoding adds to the cache's
/// length. `grids` are the images' `(t, h, w)` in patches, in prompt order; `merge` the
/// spatial merge size. An image token run shorter than its grid is an error.
pub fn positions(
    ids: &[u32],
    grids: &[[u32; 3]],
    merge: u32,
    tokens: VisionTokens,
) -> Result<(Vec<[i32; 3]>, i32), String> {
    let n = ids.len();
    // Images are counted as the reference counts them: the tokens right after a
    // vision-start token that are image tokens.
    let images = ids
        .windows(2)
        .filter(|w| w[0] == tokens.vision_start && w[1] == tokens.image)
        .count();
    if images > grids.len() {
        return Err(format!(
            "the prompt places {images} image(s) but {} were given",
            grids.len()
        ));
    }
    let mut out: Vec<[i32; 3]> = Vec::with_capacity(n);
    let mut next = 0i32; // the largest position so far + 1
    let mut st = 0usize;
    for g in grids.iter().take(images) {
        let Some(ed) = ids[st..]
            .iter()
            .position(|&t| t == tokens.image)
            .map(|i| i + st)
        else {
            break;
        };
        let (t, h, w) = (g[0] as i32, (g[1] / merge) as i32, (g[2] / merge) as i32);
        let base = next;
        for k in 0..(ed - st) as i32 {
            out.push([base + k; 3]);
        }
        let base = base + (ed - st) as i32;
        let units = (t * h * w) as usize;
        if ed + units > n {
            return Err(format!(
                "an image of grid {}x{}x{} needs {units} image tokens; the prompt ends first",
                g[0], g[1], g[2]
            ));
        }
        let mut top = base - 1;
        for tt in 0..t {
            for hh in 0..h {
                for ww in 0..w {
                    let p = [base + tt, base + hh, base + ww];
                    top = top.max(p[0]).max(p[1]).max(p[2]);
                    out.push(p);
                }
            }
        }
        next = top + 1;
        st = ed + units;
    }
    for k in 0..(n - st) as i32 {
        out.push([next + k; 3]);
    }
    let max = out
        .iter()
        .flat_map(|p| p.iter().copied())
        .max()
        .unwrap_or(-1);
    Ok((out, max + 1 - n as i32))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.
mod tests {
    use super::*;

    const T: VisionTokens = VisionTokens {
        image: 9,
        vision_start: 8,
    };

    #[test]
    fn text_only_positions_count_up() {
        let (p, d) = positions(&[1, 2, 3], &[], 2, T).unwrap();
        assert_eq!(p, vec![[0; 3], [1; 3], [2; 3]]);
        assert_eq!(d, 0);
    }

    #[test]
    fn an_image_numbers_its_grid_and_the_text_resumes_after_it() {
        // text, start, 2x3 merged units (grid 1x4x6), end, text
        let ids = [1, 8, 9, 9, 9, 9, 9, 9, 7, 2];
        let (p, d) = positions(&ids, &[[1, 4, 6]], 2, T).unwrap();
        assert_eq!(&p[..2], &[[0; 3], [1; 3]]);
        assert_eq!(p[2], [2, 2, 2]);
        assert_eq!(p[4], [2, 2, 4]);
        assert_eq!(p[5], [2, 3, 2]);
        assert_eq!(p[7], [2, 3, 4]);
        assert_eq!(&p[8..], &[[5; 3], [6; 3]]);
        assert_eq!(d, 7 - 10);
    }

    #[test]
    fn a_short_image_run_is_an_error() {
        let e = positions(&[8, 9, 9], &[[1, 4, 4]], 2, T).unwrap_err();
        assert!(e.contains("needs 4 image tokens"), "{e}");
    }
}
