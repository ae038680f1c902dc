//! Qwen2.5-VL's vision tower, op for op as mlx-vlm's `qwen2_5_vl/vision.py` (and
//! Qwen2-VL's, `qwen2_vl/vision.py`: LayerNorm blocks with a GELU MLP, full attention
//! per image, a LayerNorm merger — the switches of [`TowerConfig::qwen2`]): the patch
//! embedding (a Conv3d over 2-frame temporal patches, stride = kernel), the 2D rotary
//! embedding (row and column positions, each on half the rotary dims), window attention
//! (windows of `window_size` px over merged 2×2 units) with the full-attention blocks
//! `fullatt_block_indexes` names, RMS-normed SwiGLU blocks, and the 2×2 patch merger.
//! Input: the processor's `pixel_values` (N, C·T·P·P) and `image_grid_thw`; output: one
//! row per merged unit (N/4, out_hidden_size), in the processor's order.
use std::collections::HashMap;

use mlx_rs::{error::Exception, fast, ops, ops::indexing::IndexOp, Array, Dtype};

type R<T> = Result<T, Exception>;

pub use ::model::run::TowerConfig;

struct Linear {
    w: Array,
    b: Array,
}

impl Linear {
    fn forward(&self, x: &Array) -> R<Array> {
        ops::addmm(&self.b, x, self.w.t(), None, None)
    }
}

/// RMSNorm (Qwen2.5-VL) or LayerNorm with a bias (Qwen2-VL), eps 1e-6.
struct Norm {
    w: Array,
    b: Option<Array>,
}

impl Norm {
    fn forward(&self, x: &Array) -> R<Array> {
        match &self.b {
            None => fast::rms_norm(x, Some(&self.w), EPS),
            Some(b) => fast::layer_norm(x, Some(&self.w), Some(b), EPS),
        }
    }

    fn nbytes(&self) -> usize {
        self.w.nbytes() + self.b.as_ref().map_or(0, Array::nbytes)
    }
}

enum Mlp {
    /// Qwen2.5-VL: `down(silu(gate(x)) * up(x))`.
    SwiGlu {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    /// Qwen2-VL: `fc2(gelu_fast_approx(fc1(x)))`.
    Gelu { fc1: Linear, fc2: Linear },
}

impl Mlp {
    fn forward(&self, h: &Array) -> R<Array> {
        match self {
            Mlp::SwiGlu { gate, up, down } => {
                let g = mlx_rs::nn::silu(gate.forward(h)?)?;
                down.forward(&ops::multiply(&g, &up.forward(h)?)?)
            }
            Mlp::Gelu { fc1, fc2 } => fc2.forward(&gelu_fast(&fc1.forward(h)?)?),
        }
    }

    fn linears(&self) -> Vec<&Linear> {
        match self {
            Mlp::SwiGlu { gate, up, down } => vec![gate, up, down],
            Mlp::Gelu { fc1, fc2 } => vec![fc1, fc2],
        }
    }
}

struct Block {
    norm1: Norm,
    norm2: Norm,
    qkv: Linear,
    proj: Linear,
    mlp: Mlp,
}

/// The tower's weights.
pub struct VisionTower {
    cfg: TowerConfig,
    patch_embed: Array,
    blocks: Vec<Block>,
    ln_q: Norm,
    mlp0: Linear,
    mlp2: Linear,
}

const EPS: f32 = 1e-6;

impl VisionTower {
    /// Takes the `vision_tower.*` tensors out of `weights` (a safetensors load).
    pub fn load(cfg: TowerConfig, weights: &mut HashMap<String, Array>) -> Result<Self, String> {
        let mut take = |name: &str| {
            weights
                .remove(&format!("vision_tower.{name}"))
                .ok_or_else(|| format!("vision_tower.{name} is missing"))
        };
        let mut linear = |name: &str| -> Result<Linear, String> {
            Ok(Linear {
                w: take(&format!("{name}.weight"))?,
                b: take(&format!("{name}.bias"))?,
            })
        };
        let mut blocks = Vec::with_capacity(cfg.depth);
        for i in 0..cfg.depth {
            let p = format!("blocks.{i}");
            let mlp = if cfg.qwen2 {
                Mlp::Gelu {
                    fc1: linear(&format!("{p}.mlp.fc1"))?,
                    fc2: linear(&format!("{p}.mlp.fc2"))?,
                }
            } else {
                Mlp::SwiGlu {
                    gate: linear(&format!("{p}.mlp.gate_proj"))?,
                    up: linear(&format!("{p}.mlp.up_proj"))?,
                    down: linear(&format!("{p}.mlp.down_proj"))?,
                }
            };
            blocks.push(Block {
                qkv: linear(&format!("{p}.attn.qkv"))?,
                proj: linear(&format!("{p}.attn.proj"))?,
                mlp,
                norm1: Norm {
                    w: Array::from_int(0),
                    b: None,
                },
                norm2: Norm {
                    w: Array::from_int(0),
                    b: None,
                },
            });
        }
        let mlp0 = linear("merger.mlp.0")?;
        let mlp2 = linear("merger.mlp.2")?;
        let qwen2 = cfg.qwen2;
        let mut norm = |name: &str| -> Result<Norm, String> {
            Ok(Norm {
                w: take(&format!("{name}.weight"))?,
                b: if qwen2 {
                    Some(take(&format!("{name}.bias"))?)
                } else {
                    None
                },
            })
        };
        for (i, b) in blocks.iter_mut().enumerate() {
            b.norm1 = norm(&format!("blocks.{i}.norm1"))?;
            b.norm2 = norm(&format!("blocks.{i}.norm2"))?;
        }
        let ln_q = norm("merger.ln_q")?;
        let patch_embed = take("patch_embed.proj.weight")?;
        // A Hugging Face checkpoint keeps the patch embedding channels-first (O, C, T, P,
        // P); MLX's convolution takes it channels-last (O, T, P, P, C), as mlx-vlm's
        // conversion writes it.
        let s = patch_embed.shape();
        let patch_embed = if s.len() == 5
            && s[1] == cfg.in_channels
            && s[4] == cfg.patch
            && s[4] != cfg.in_channels
        {
            patch_embed
                .transpose_axes(&[0, 2, 3, 4, 1])
                .map_err(|e| format!("vision_tower.patch_embed.proj.weight: {e}"))?
        } else {
            patch_embed
        };
        let tower = VisionTower {
            patch_embed,
            ln_q,
            blocks,
            mlp0,
            mlp2,
            cfg,
        };
        tower.check_shapes()?;
        Ok(tower)
    }

    /// Every tensor has the shape `vision_config` implies (the patch embedding in MLX's
    /// channels-last layout, as mlx-vlm's conversion writes it); the error names it.
    fn check_shapes(&self) -> Result<(), String> {
        let c = &self.cfg;
        let (h, i) = (c.hidden, c.intermediate);
        let merged = h * c.merge * c.merge;
        let check = |name: &str, a: &Array, want: &[i32]| {
            if a.shape() == want {
                Ok(())
            } else {
                Err(format!(
                    "vision_tower.{name} has shape {:?}, vision_config implies {want:?}",
                    a.shape()
                ))
            }
        };
        let lin = |name: &str, l: &Linear, o: i32, n: i32| {
            check(&format!("{name}.weight"), &l.w, &[o, n])?;
            check(&format!("{name}.bias"), &l.b, &[o])
        };
        let norm = |name: &str, n: &Norm, d: i32| {
            check(&format!("{name}.weight"), &n.w, &[d])?;
            match &n.b {
                Some(b) => check(&format!("{name}.bias"), b, &[d]),
                None => Ok(()),
            }
        };
        check(
            "patch_embed.proj.weight",
            &self.patch_embed,
            &[h, c.temporal, c.patch, c.patch, c.in_channels],
        )?;
        for (k, b) in self.blocks.iter().enumerate() {
            let p = format!("blocks.{k}");
            norm(&format!("{p}.norm1"), &b.norm1, h)?;
            norm(&format!("{p}.norm2"), &b.norm2, h)?;
            lin(&format!("{p}.attn.qkv"), &b.qkv, 3 * h, h)?;
            lin(&format!("{p}.attn.proj"), &b.proj, h, h)?;
            match &b.mlp {
                Mlp::SwiGlu { gate, up, down } => {
                    lin(&format!("{p}.mlp.gate_proj"), gate, i, h)?;
                    lin(&format!("{p}.mlp.up_proj"), up, i, h)?;
                    lin(&format!("{p}.mlp.down_proj"), down, h, i)?;
                }
                Mlp::Gelu { fc1, fc2 } => {
                    lin(&format!("{p}.mlp.fc1"), fc1, i, h)?;
                    lin(&format!("{p}.mlp.fc2"), fc2, h, i)?;
                }
            }
        }
        norm("merger.ln_q", &self.ln_q, h)?;
        lin("merger.mlp.0", &self.mlp0, merged, merged)?;
        lin("merger.mlp.2", &self.mlp2, c.out_hidden, merged)
    }

    /// Bytes of the tower's weights.
    pub fn weight_bytes(&self) -> u64 {
        let lin = |l: &Linear| l.w.nbytes() + l.b.nbytes();
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                b.norm1.nbytes()
                    + b.norm2.nbytes()
                    + lin(&b.qkv)
                    + lin(&b.proj)
                    + b.mlp.linears().into_iter().map(lin).sum::<usize>()
            })
            .sum();
        (blocks
            + self.patch_embed.nbytes()
            + self.ln_q.nbytes()
            + lin(&self.mlp0)
            + lin(&self.mlp2)) as u64
    }

    /// Runs the tower on `pixel_values` (N, C·T·P·P) for images of `grids` (t, h, w).
    pub fn forward(&self, pixel_values: &Array, grids: &[[i32; 3]]) -> R<Array> {
        self.forward_traced(pixel_values, grids, None)
    }

    /// [`Self::forward`], keeping the hidden states after the patch embedding and after
    /// each block (in window order) in `trace`, for comparisons.
    pub fn forward_traced(
        &self,
        pixel_values: &Array,
        grids: &[[i32; 3]],
        mut trace: Option<&mut Vec<Array>>,
    ) -> R<Array> {
        let c = &self.cfg;
        let unit = c.merge * c.merge;
        let x = pixel_values.as_dtype(self.patch_embed.dtype())?;
        let x = x
            .reshape(&[-1, c.in_channels, c.temporal, c.patch, c.patch])?
            .transpose_axes(&[0, 2, 3, 4, 1])?;
        let stride = (c.temporal, c.patch, c.patch);
        let x = ops::conv3d(&x, &self.patch_embed, stride, None, None, None)?;
        let x = x.reshape(&[-1, c.hidden])?;
        let seq = x.shape()[0];

        let rotary = self.rotary(grids)?;
        let mut cu_full = vec![0i32];
        for g in grids {
            for _ in 0..g[0] {
                let last = *cu_full.last().unwrap_or(&0);
                cu_full.push(last + g[1] * g[2]);
            }
        }
        // Qwen2-VL has no windows: every block attends per image, in the processor's order.
        let (window_index, cu_window) = if c.qwen2 {
            ((0..seq / unit).collect(), cu_full.clone())
        } else {
            window_index(c, grids)
        };
        let order = Array::from_slice(&window_index, &[window_index.len() as i32]);
        let regroup = |a: &Array, last: i32| -> R<Array> {
            a.reshape(&[seq / unit, unit, -1])?
                .take_axis(&order, 0)?
                .reshape(&[seq, last])
        };
        let head_dim = c.hidden / c.heads;
        let mut x = regroup(&x, c.hidden)?;
        if let Some(t) = trace.as_deref_mut() {
            t.push(x.clone());
        }
        let rotary = regroup(&rotary, head_dim / 2)?;
        let (cos, sin) = rotary_tables(&rotary)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let cu = if c.fullatt.contains(&i) {
                &cu_full
            } else {
                &cu_window
            };
            let h = b.norm1.forward(&x)?;
            let a = self.attention(b, &h, cu, &cos, &sin)?;
            x = ops::add(&x, &a)?;
            let m = b.mlp.forward(&b.norm2.forward(&x)?)?;
            x = ops::add(&x, &m)?;
            if let Some(t) = trace.as_deref_mut() {
                t.push(x.clone());
            }
        }
        let x = self.ln_q.forward(&x)?.reshape(&[-1, c.hidden * unit])?;
        let x = gelu(&self.mlp0.forward(&x)?)?;
        let x = self.mlp2.forward(&x)?;
        let reverse = ops::argsort_axis(&order, 0)?;
        x.take_axis(&reverse, 0)
    }

    fn attention(&self, b: &Block, x: &Array, cu: &[i32], cos: &Array, sin: &Array) -> R<Array> {
        let c = &self.cfg;
        let seq = x.shape()[0];
        let head_dim = c.hidden / c.heads;
        let qkv = b
            .qkv
            .forward(x)?
            .reshape(&[seq, 3, c.heads, head_dim])?
            .transpose_axes(&[1, 0, 2, 3])?;
        let parts = qkv.split_equal(3, 0)?;
        let rope = |t: &Array| -> R<Array> {
            let dtype = t.dtype();
            let rotated = rotate_half(t)?;
            ops::add(&ops::multiply(t, cos)?, &ops::multiply(&rotated, sin)?)?.as_dtype(dtype)
        };
        let q = rope(&parts[0])?.transpose_axes(&[0, 2, 1, 3])?;
        let k = rope(&parts[1])?.transpose_axes(&[0, 2, 1, 3])?;
        let v = parts[2].transpose_axes(&[0, 2, 1, 3])?;
        let scale = (head_dim as f32).powf(-0.5);
        let mut outs = Vec::with_capacity(cu.len());
        for w in cu.windows(2) {
            let (s, e) = (w[0], w[1]);
            let seg = |t: &Array| t.index((.., .., s..e));
            outs.push(fast::scaled_dot_product_attention(
                seg(&q),
                seg(&k),
                seg(&v),
                scale,
                None,
                None,
            )?);
        }
        let o = ops::concatenate(&outs, 2)?
            .transpose_axes(&[0, 2, 1, 3])?
            .reshape(&[seq, -1])?;
        b.proj.forward(&o)
    }

    /// The rotary angles per patch (N, head_dim/2): row angles then column angles, in the
    /// processor's patch order, as mlx-vlm's `rot_pos_emb`.
    fn rotary(&self, grids: &[[i32; 3]]) -> R<Array> {
        let c = &self.cfg;
        let dim = c.hidden / c.heads / 2;
        let m = c.merge;
        let mut pos: Vec<i32> = Vec::new();
        for g in grids {
            let (t, h, w) = (g[0], g[1], g[2]);
            let mut one = Vec::with_capacity((h * w * 2) as usize);
            for bh in 0..h / m {
                for bw in 0..w / m {
                    for mh in 0..m {
                        for mw in 0..m {
                            one.push(bh * m + mh);
                            one.push(bw * m + mw);
                        }
                    }
                }
            }
            for _ in 0..t {
                pos.extend_from_slice(&one);
            }
        }
        let max_grid = grids.iter().map(|g| g[1].max(g[2])).max().unwrap_or(1);
        // inv_freq = 1 / theta^(arange(0, dim, 2) / dim), in MLX's f32 as mlx-vlm has it.
        let exponents = ops::divide(
            &Array::arange::<_, f32>(0.0, dim as f32, 2.0)?,
            Array::from_f32(dim as f32),
        )?;
        let inv_freq = ops::divide(
            Array::from_f32(1.0),
            &ops::power(Array::from_f32(10_000.0), &exponents)?,
        )?;
        let seq = Array::arange::<_, f32>(0.0, max_grid as f32, 1.0)?;
        let full = ops::outer(&seq, &inv_freq)?;
        let n = (pos.len() / 2) as i32;
        let ids = Array::from_slice(&pos, &[n * 2]);
        full.take_axis(&ids, 0)?.reshape(&[n, dim])
    }
}

/// cos and sin of the angles, each repeated over both halves, shaped to broadcast against
/// (1, S, heads, head_dim).
fn rotary_tables(angles: &Array) -> R<(Array, Array)> {
    let shape =
        |a: Array| -> R<Array> { ops::tile(&a.expand_dims(1)?, &[1, 1, 2])?.expand_dims(0) };
    Ok((shape(ops::cos(angles)?)?, shape(ops::sin(angles)?)?))
}

/// mlx's `nn.gelu`, `x * (1 + erf(x / sqrt 2)) / 2`, with the constants in `x`'s dtype as
/// Python's weakly typed scalars are (mlx-rs's `gelu` uses f32 constants, which promotes a
/// bf16 input to f32 and no longer rounds like the reference).
fn gelu(x: &Array) -> R<Array> {
    let c = |v: f32| Array::from_f32(v).as_dtype(x.dtype());
    let inner = ops::erf(ops::divide(x, c(std::f32::consts::SQRT_2)?)?)?;
    ops::divide(ops::multiply(x, ops::add(c(1.0)?, &inner)?)?, c(2.0)?)
}

/// mlx's `nn.gelu_fast_approx`, `x * sigmoid(1.702 * x)`, the constant in `x`'s dtype
/// (a weakly typed Python scalar in the reference).
fn gelu_fast(x: &Array) -> R<Array> {
    let k = Array::from_f32(1.702).as_dtype(x.dtype())?;
    ops::multiply(x, &ops::sigmoid(&ops::multiply(&k, x)?)?)
}

fn rotate_half(x: &Array) -> R<Array> {
    let d = x.shape()[x.ndim() - 1];
    let x1 = x.index((.., .., .., ..d / 2));
    let x2 = x.index((.., .., .., d / 2..));
    ops::concatenate(&[ops::negative(&x2)?, x1], -1)
}

/// mlx-vlm's `get_window_index`: the merged units in window order, and the cumulative
/// patch counts of the (non-empty) windows.
fn window_index(c: &TowerConfig, grids: &[[i32; 3]]) -> (Vec<i32>, Vec<i32>) {
    let vw = (c.window / c.merge / c.patch).max(1);
    let unit = c.merge * c.merge;
    let mut index = Vec::new();
    let mut cu = vec![0i32];
    let mut base = 0i32;
    for g in grids {
        let (t, gh, gw) = (g[0], g[1] / c.merge, g[2] / c.merge);
        // As the reference: a side already a multiple of the window still gets one more
        // (empty) window; empty windows add nothing.
        let (nh, nw) = ((gh + vw - gh % vw) / vw, (gw + vw - gw % vw) / vw);
        for tt in 0..t {
            for wh in 0..nh {
                for ww in 0..nw {
                    let mut count = 0;
                    for y in wh * vw..(wh + 1) * vw {
                        for x in ww * vw..(ww + 1) * vw {
                            if y < gh && x < gw {
                                index.push(base + tt * gh * gw + y * gw + x);
                                count += 1;
                            }
                        }
                    }
                    if count > 0 {
                        let last = *cu.last().unwrap_or(&0);
                        cu.push(last + count * unit);
                    }
                }
            }
        }
        base += t * gh * gw;
    }
    (index, cu)
}

/// Casts to f32 and copies out, for comparisons.
pub fn to_f32_vec(a: &Array) -> R<Vec<f32>> {
    let a = a.as_dtype(Dtype::Float32)?;
    a.eval()?;
    Ok(a.as_slice::<f32>().to_vec())
}
