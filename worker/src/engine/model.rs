//! The one decoder for Llama, Mistral, Qwen2 and Qwen3, with per-family switches
//! (q/k/v bias, q/k RMSNorm, sliding-window layers), computed as mlx-lm computes it.

use std::cell::RefCell;

use mlx_rs::{error::Exception, ops, transforms::compile::compile, Array};
use protocol::WorkerError;

use super::cache::{KvCache, LayerCache, Mask, RotatingKvCache};
use super::config::{Family, ModelConfig};
use super::error::load_failed;
use super::layers::{Embedding, Linear, RmsNorm, Rope};
use super::weights::WeightStore;

type R<T> = Result<T, Exception>;

/// The compiled activation, kept for the model's lifetime so it is traced once.
type Swiglu = Box<dyn for<'a> FnMut((&'a Array, &'a Array)) -> R<Array>>;

/// mlx-lm's compiled `swiglu`: `silu(gate) * x`, fused the same way.
fn swiglu_fn((gate, x): (&Array, &Array)) -> R<Array> {
    gate.multiply(ops::sigmoid(gate)?)?.multiply(x)
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    n_heads: i32,
    n_kv_heads: i32,
    scale: f32,
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

struct Block {
    attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    sliding: bool,
}

/// A loaded decoder.
pub struct Model {
    pub cfg: ModelConfig,
    embed: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    rope: Rope,
    swiglu: RefCell<Swiglu>,
}

impl Attention {
    fn load(store: &mut WeightStore, p: &str, cfg: &ModelConfig) -> Result<Attention, WorkerError> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let (qd, kvd) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let bias = cfg.attention_bias;
        let qwen3 = cfg.family == Family::Qwen3;
        let o_bias = bias && cfg.family != Family::Qwen2;
        Ok(Attention {
            q_proj: Linear::load(store, &format!("{p}.q_proj"), cfg, d, qd, bias)?,
            k_proj: Linear::load(store, &format!("{p}.k_proj"), cfg, d, kvd, bias)?,
            v_proj: Linear::load(store, &format!("{p}.v_proj"), cfg, d, kvd, bias)?,
            o_proj: Linear::load(store, &format!("{p}.o_proj"), cfg, qd, d, o_bias)?,
            q_norm: if qwen3 {
                Some(RmsNorm::load(
                    store,
                    &format!("{p}.q_norm.weight"),
                    hd,
                    cfg.rms_norm_eps,
                )?)
            } else {
                None
            },
            k_norm: if qwen3 {
                Some(RmsNorm::load(
                    store,
                    &format!("{p}.k_norm.weight"),
                    hd,
                    cfg.rms_norm_eps,
                )?)
            } else {
                None
            },
            n_heads: cfg.num_heads,
            n_kv_heads: cfg.num_kv_heads,
            scale: (hd as f64).powf(-0.5) as f32,
        })
    }

    fn forward(&self, x: &Array, mask: &Mask, cache: &mut LayerCache, rope: &Rope) -> R<Array> {
        let (b, l) = (x.dim(0), x.dim(1));
        let q = self.q_proj.forward(x)?.reshape(&[b, l, self.n_heads, -1])?;
        let k = self
            .k_proj
            .forward(x)?
            .reshape(&[b, l, self.n_kv_heads, -1])?;
        let v = self
            .v_proj
            .forward(x)?
            .reshape(&[b, l, self.n_kv_heads, -1])?;
        let q = match &self.q_norm {
            Some(n) => n.forward(&q)?,
            None => q,
        };
        let k = match &self.k_norm {
            Some(n) => n.forward(&k)?,
            None => k,
        };
        let perm = [0, 2, 1, 3];
        let (q, k, v) = (
            q.transpose_axes(&perm)?,
            k.transpose_axes(&perm)?,
            v.transpose_axes(&perm)?,
        );
        let offset = cache.offset();
        let q = rope.forward(&q, offset)?;
        let k = rope.forward(&k, offset)?;
        let o = cache.attend(&q, &k, &v, self.scale, mask)?;
        let o = o.transpose_axes(&perm)?.reshape(&[b, l, -1])?;
        self.o_proj.forward(&o)
    }

    fn nbytes(&self) -> usize {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj]
            .iter()
            .map(|l| l.nbytes())
            .sum::<usize>()
            + self.q_norm.as_ref().map_or(0, |n| n.weight.nbytes())
            + self.k_norm.as_ref().map_or(0, |n| n.weight.nbytes())
    }
}

impl Mlp {
    fn forward(&self, x: &Array, swiglu: &RefCell<Swiglu>) -> R<Array> {
        let (gate, up) = (self.gate_proj.forward(x)?, self.up_proj.forward(x)?);
        let h = (swiglu.borrow_mut())((&gate, &up))?;
        self.down_proj.forward(&h)
    }
}

impl Model {
    /// Builds the decoder from the weights; every tensor the config implies must be there.
    pub fn load(cfg: ModelConfig, store: &mut WeightStore) -> Result<Model, WorkerError> {
        let embed = Embedding::load(store, "model.embed_tokens", &cfg)?;
        let (d, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for n in 0..cfg.num_layers {
            let p = format!("model.layers.{n}");
            let mb = cfg.mlp_bias;
            layers.push(Block {
                attn: Attention::load(store, &format!("{p}.self_attn"), &cfg)?,
                mlp: Mlp {
                    gate_proj: Linear::load(store, &format!("{p}.mlp.gate_proj"), &cfg, d, i, mb)?,
                    up_proj: Linear::load(store, &format!("{p}.mlp.up_proj"), &cfg, d, i, mb)?,
                    down_proj: Linear::load(store, &format!("{p}.mlp.down_proj"), &cfg, i, d, mb)?,
                },
                input_layernorm: RmsNorm::load(
                    store,
                    &format!("{p}.input_layernorm.weight"),
                    d,
                    eps,
                )?,
                post_attention_layernorm: RmsNorm::load(
                    store,
                    &format!("{p}.post_attention_layernorm.weight"),
                    d,
                    eps,
                )?,
                sliding: cfg.sliding_layers.get(n).copied().unwrap_or(false),
            });
        }
        let norm = RmsNorm::load(store, "model.norm.weight", d, eps)?;
        let tied = cfg
            .tie_word_embeddings
            .unwrap_or(!store.has("lm_head.weight"));
        let lm_head = if tied {
            None
        } else {
            if !store.has("lm_head.weight") {
                return Err(load_failed(format!(
                    "tie_word_embeddings is false but lm_head.weight is missing (in {})",
                    store.dir().display()
                )));
            }
            Some(Linear::load(
                store,
                "lm_head",
                &cfg,
                d,
                cfg.vocab_size,
                false,
            )?)
        };
        let rope = Rope::new(&cfg)?;
        let swiglu: Swiglu = Box::new(compile(swiglu_fn, true));
        Ok(Model {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            rope,
            swiglu: RefCell::new(swiglu),
        })
    }

    /// Fresh caches: rotating for sliding-window layers.
    pub fn make_cache(&self) -> Vec<LayerCache> {
        let window = self.cfg.sliding_window.unwrap_or(0) as i32;
        self.layers
            .iter()
            .map(|l| {
                if l.sliding && window > 0 {
                    LayerCache::Rotating(RotatingKvCache::new(window))
                } else {
                    LayerCache::Full(KvCache::default())
                }
            })
            .collect()
    }

    /// The final hidden states (after the norm) for `ids` of shape (1, L).
    pub fn hidden(&self, ids: &Array, caches: &mut [LayerCache]) -> R<Array> {
        let mut h = self.embed.forward(ids)?;
        let n = ids.dim(1);
        let window = self.cfg.sliding_window.map(|w| w as i32);
        let full_idx = self.layers.iter().position(|l| !l.sliding);
        let swa_idx = self.layers.iter().position(|l| l.sliding);
        let full_mask = match full_idx {
            Some(i) => caches[i].make_mask(n, None)?,
            None => Mask::None,
        };
        let swa_mask = match swa_idx {
            Some(i) => caches[i].make_mask(n, window)?,
            None => Mask::None,
        };
        for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
            let mask = if layer.sliding { &swa_mask } else { &full_mask };
            let r =
                layer
                    .attn
                    .forward(&layer.input_layernorm.forward(&h)?, mask, cache, &self.rope)?;
            let hh = h.add(&r)?;
            let r = layer
                .mlp
                .forward(&layer.post_attention_layernorm.forward(&hh)?, &self.swiglu)?;
            h = hh.add(&r)?;
        }
        self.norm.forward(&h)
    }

    /// Logits for hidden states.
    pub fn logits(&self, h: &Array) -> R<Array> {
        match &self.lm_head {
            Some(head) => head.forward(h),
            None => self.embed.as_linear(h),
        }
    }

    /// Bytes of weights held.
    pub fn weight_bytes(&self) -> u64 {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.attn.nbytes()
                    + l.mlp.gate_proj.nbytes()
                    + l.mlp.up_proj.nbytes()
                    + l.mlp.down_proj.nbytes()
                    + l.input_layernorm.weight.nbytes()
                    + l.post_attention_layernorm.weight.nbytes()
            })
            .sum();
        (layers
            + self.embed.nbytes()
            + self.norm.weight.nbytes()
            + self.lm_head.as_ref().map_or(0, Linear::nbytes)) as u64
    }

    /// The activations' dtype (that of the embeddings).
    pub fn dtype(&self) -> mlx_rs::Dtype {
        self.embed.dtype()
    }

    /// Whether any matrix is kept quantized.
    pub fn is_quantized(&self) -> bool {
        self.embed.is_quantized()
            || self.lm_head.as_ref().is_some_and(Linear::is_quantized)
            || self
                .layers
                .iter()
                .any(|l| l.mlp.down_proj.is_quantized() || l.attn.q_proj.is_quantized())
    }

    /// The compute dtype as reported (`float32`, `bfloat16 (quantized)`).
    pub fn compute_dtype(&self) -> String {
        let name = match self.dtype() {
            mlx_rs::Dtype::Float32 => "float32",
            mlx_rs::Dtype::Bfloat16 => "bfloat16",
            mlx_rs::Dtype::Float16 => "float16",
            _ => "other",
        };
        if self.is_quantized() {
            format!("{name} (quantized)")
        } else {
            name.to_string()
        }
    }
}
