//! The one decoder for every family (Llama, Mistral, Qwen 1/2/3, Gemma 2/3, Phi-3, Mixtral,
//! Qwen3-MoE, SmolLM3, MiMo, Granite MoE), with per-family switches (norm placement,
//! scaled embeddings, sliding-window layers, layers without RoPE, residual and logit
//! multipliers, soft-capped logits), computed as mlx-lm computes it.

use mlx_rs::{error::Exception, ops, Array};
use protocol::WorkerError;

use super::attention::{norm, Attention, Rotary};
use super::cache::{causal_mask, KvCache, LayerCache, Mask, RotatingKvCache};
use super::config::{Family, ModelConfig, RopeKind};
use super::error::{load_failed, MlxResultExt};
use super::ffn::{Activations, Ffn};
use super::layers::{Embedding, Linear, RmsNorm};
use super::rope::Rope;
use super::vision::mrope::MRope;
use super::weights::WeightStore;

type R<T> = Result<T, Exception>;

struct Block {
    attn: Attention,
    ffn: Ffn,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    /// Gemma: the norms around the MLP (and the attention output is normed too).
    pre_feedforward_layernorm: Option<RmsNorm>,
    post_feedforward_layernorm: Option<RmsNorm>,
    sliding: bool,
    /// Whether the attention rotates queries and keys (SmolLM3's NoPE layers do not).
    rope: bool,
    /// Granite MoE: the attention's and the MLP's outputs are scaled by this before
    /// each residual add.
    residual_scale: Option<f32>,
    /// Gemma 3: float16 residuals are added in f32 and clipped.
    clip_f16: bool,
}

/// A loaded decoder.
pub struct Model {
    pub cfg: ModelConfig,
    embed: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    rope: Rope,
    /// Gemma 3's sliding-window layers' RoPE (its own base, no scaling).
    rope_local: Option<Rope>,
    /// Qwen2-VL: the multimodal RoPE, in place of `rope`.
    mrope: Option<MRope>,
    act: Activations,
}

impl Block {
    fn forward(
        &self,
        h: &Array,
        mask: &Mask,
        cache: &mut LayerCache,
        rope: &Rotary,
        act: &Activations,
    ) -> R<Array> {
        let r = self
            .attn
            .forward(&self.input_layernorm.forward(h)?, mask, cache, rope)?;
        match (
            &self.pre_feedforward_layernorm,
            &self.post_feedforward_layernorm,
        ) {
            (Some(pre), Some(post)) => {
                let h = self.residual(h, &self.post_attention_layernorm.forward(&r)?)?;
                let r = self.ffn.forward(&pre.forward(&h)?, act)?;
                self.residual(&h, &post.forward(&r)?)
            }
            _ => {
                let h = h.add(&self.scaled(r)?)?;
                let r = self
                    .ffn
                    .forward(&self.post_attention_layernorm.forward(&h)?, act)?;
                h.add(&self.scaled(r)?)
            }
        }
    }

    /// `r × residual_multiplier` (the scalar in `r`'s dtype, as Python's weak float).
    fn scaled(&self, r: Array) -> R<Array> {
        match self.residual_scale {
            Some(m) => r.multiply(Array::from_f32(m).as_dtype(r.dtype())?),
            None => Ok(r),
        }
    }

    /// Gemma's residual add; Gemma 3 in float16 adds in f32 and clips to the f16 range
    /// (mlx-lm's `clip_residual`).
    fn residual(&self, x: &Array, y: &Array) -> R<Array> {
        if !self.clip_f16 || x.dtype() != mlx_rs::Dtype::Float16 {
            return x.add(y);
        }
        let f = mlx_rs::Dtype::Float32;
        let bound = Array::from_f32(65504.0);
        let s = x.as_dtype(f)?.add(y.as_dtype(f)?)?;
        ops::clip(&s, (bound.negative()?, bound))?.as_dtype(mlx_rs::Dtype::Float16)
    }

    fn nbytes(&self) -> usize {
        let norms = [
            Some(&self.input_layernorm),
            Some(&self.post_attention_layernorm),
            self.pre_feedforward_layernorm.as_ref(),
            self.post_feedforward_layernorm.as_ref(),
        ];
        self.attn.nbytes()
            + self.ffn.nbytes()
            + norms
                .iter()
                .flatten()
                .map(|n| n.weight.nbytes())
                .sum::<usize>()
    }
}

impl Model {
    /// Builds the decoder from the weights; every tensor the config implies must be there.
    pub fn load(cfg: ModelConfig, store: &mut WeightStore) -> Result<Model, WorkerError> {
        let embed = Embedding::load(store, "model.embed_tokens", &cfg)?;
        let d = cfg.hidden_size;
        let sandwich = cfg.family.has_sandwich_norms();
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for n in 0..cfg.num_layers {
            let p = format!("model.layers.{n}");
            let extra =
                |store: &mut WeightStore, name: &str| -> Result<Option<RmsNorm>, WorkerError> {
                    if sandwich {
                        Ok(Some(norm(store, &format!("{p}.{name}.weight"), d, &cfg)?))
                    } else {
                        Ok(None)
                    }
                };
            layers.push(Block {
                attn: Attention::load(store, &format!("{p}.self_attn"), &cfg)?,
                ffn: Ffn::load(store, n, &cfg)?,
                input_layernorm: norm(store, &format!("{p}.input_layernorm.weight"), d, &cfg)?,
                post_attention_layernorm: norm(
                    store,
                    &format!("{p}.post_attention_layernorm.weight"),
                    d,
                    &cfg,
                )?,
                pre_feedforward_layernorm: extra(store, "pre_feedforward_layernorm")?,
                post_feedforward_layernorm: extra(store, "post_feedforward_layernorm")?,
                sliding: cfg.sliding_layers.get(n).copied().unwrap_or(false),
                rope: cfg.rope_layers.get(n).copied().unwrap_or(true),
                residual_scale: cfg.multipliers.map(|m| m.residual),
                clip_f16: cfg.family == Family::Gemma3Text,
            });
        }
        let norm = norm(store, "model.norm.weight", d, &cfg)?;
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
                cfg.lm_head_bias,
            )?)
        };
        let rope = Rope::new(
            &cfg.rope,
            cfg.rope_dims,
            cfg.rope_theta,
            cfg.rope_traditional,
        )?;
        let rope_local = match cfg.rope_local_base {
            Some(base) => Some(Rope::new(
                &RopeKind::Default { scale: 1.0 },
                cfg.rope_dims,
                base,
                false,
            )?),
            None => None,
        };
        let mrope = match &cfg.vl {
            Some(vl) => Some(
                MRope::new(cfg.head_dim, cfg.rope_theta, vl.mrope_section)
                    .ctx("computing the multimodal rope frequencies")?,
            ),
            None => None,
        };
        Ok(Model {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            rope,
            rope_local,
            mrope,
            act: Activations::new(),
        })
    }

    /// Fresh caches: rotating for sliding-window layers ([`cache_windows`]).
    pub fn make_cache(&self) -> Vec<LayerCache> {
        cache_windows(&self.cfg)
            .into_iter()
            .map(|w| match w {
                Some(window) => LayerCache::Rotating(RotatingKvCache::new(window)),
                None => LayerCache::Full(KvCache::default()),
            })
            .collect()
    }

    /// The embeddings of `ids`, scaled by √hidden for Gemma (Gemma 2: the scalar in the
    /// activations' dtype; Gemma 3: rounded to bf16 first, as mlx-lm writes each).
    pub fn embed(&self, ids: &Array) -> R<Array> {
        let h = self.embed.forward(ids)?;
        let root = (self.cfg.hidden_size as f64).sqrt() as f32;
        match self.cfg.family {
            Family::Gemma | Family::Gemma2 => {
                h.multiply(Array::from_f32(root).as_dtype(h.dtype())?)
            }
            Family::Gemma3Text => h.multiply(
                Array::from_f32(root)
                    .as_dtype(mlx_rs::Dtype::Bfloat16)?
                    .as_dtype(h.dtype())?,
            ),
            _ => match self.cfg.multipliers {
                Some(m) => h.multiply(Array::from_f32(m.embedding).as_dtype(h.dtype())?),
                None => Ok(h),
            },
        }
    }

    /// The final hidden states (after the norm) for `ids` of shape (1, L).
    pub fn hidden(&self, ids: &Array, caches: &mut [LayerCache]) -> R<Array> {
        self.hidden_at(self.embed(ids)?, caches, None)
    }

    /// Whether positions are three-dimensional (Qwen2-VL's multimodal RoPE).
    pub fn is_mrope(&self) -> bool {
        self.mrope.is_some()
    }

    /// The final hidden states for embeddings `h` (1, L, hidden). `positions`: the
    /// multimodal RoPE's (t, h, w) per token; without them (or for a plain RoPE) the
    /// tokens sit at the cache's offset onwards.
    pub fn hidden_at(
        &self,
        mut h: Array,
        caches: &mut [LayerCache],
        positions: Option<&[[i32; 3]]>,
    ) -> R<Array> {
        let n = h.dim(1);
        let tables = match &self.mrope {
            Some(m) => {
                let own: Vec<[i32; 3]>;
                let pos = match positions {
                    Some(p) => p,
                    None => {
                        let start = caches.first().map_or(0, LayerCache::offset);
                        own = (start..start + n).map(|p| [p; 3]).collect();
                        &own
                    }
                };
                Some(m.tables(pos, h.dtype())?)
            }
            None => None,
        };
        let window = self.cfg.sliding_window.map(|w| w as i32);
        let full_idx = self.layers.iter().position(|l| !l.sliding);
        let swa_idx = self.layers.iter().position(|l| l.sliding);
        let mut full_mask = match full_idx {
            Some(i) => caches[i].make_mask(n, None)?,
            None => Mask::None,
        };
        // The soft-capped attention core takes an explicit mask (mlx-lm's gemma2 asks
        // for `return_array=True`).
        if let (Mask::Causal, Some(i)) = (&full_mask, full_idx) {
            if self.cfg.attn_softcap.is_some() {
                full_mask = Mask::Array(causal_mask(n, caches[i].offset(), None)?);
            }
        }
        let swa_mask = match swa_idx {
            Some(i) => caches[i].make_mask(n, window)?,
            None => Mask::None,
        };
        for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
            let (mask, rope) = if layer.sliding {
                (&swa_mask, self.rope_local.as_ref().unwrap_or(&self.rope))
            } else {
                (&full_mask, &self.rope)
            };
            let rope = match &tables {
                Some(t) => Rotary::Tables(t),
                None if !layer.rope => Rotary::None,
                None => Rotary::Rope(rope),
            };
            h = layer.forward(&h, mask, cache, &rope, &self.act)?;
        }
        self.norm.forward(&h)
    }

    /// Logits for hidden states.
    pub fn logits(&self, h: &Array) -> R<Array> {
        let out = match &self.lm_head {
            Some(head) => head.forward(h)?,
            None => self.embed.as_linear(h)?,
        };
        let out = match self.cfg.multipliers {
            Some(m) => out.divide(Array::from_f32(m.logits_scaling).as_dtype(out.dtype())?)?,
            None => out,
        };
        match self.cfg.final_softcap {
            Some(cap) => {
                let cap = Array::from_f32(cap).as_dtype(out.dtype())?;
                ops::tanh(out.divide(&cap)?)?.multiply(&cap)
            }
            None => Ok(out),
        }
    }

    /// Bytes of weights held.
    pub fn weight_bytes(&self) -> u64 {
        let layers: usize = self.layers.iter().map(Block::nbytes).sum();
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
                .any(|l| l.ffn.is_quantized() || l.attn.is_quantized())
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

/// Per layer, the ring buffer's size of a sliding-window layer, or `None` for a growing
/// cache: the description's layer plan (the one the estimator's KV layout reads) as
/// [`Model::make_cache`] builds it.
pub fn cache_windows(cfg: &ModelConfig) -> Vec<Option<i32>> {
    let window = cfg
        .sliding_window
        .and_then(|w| i32::try_from(w).ok())
        .filter(|w| *w > 0);
    (0..cfg.num_layers)
        .map(
            |n| match (cfg.sliding_layers.get(n).copied().unwrap_or(false), window) {
                (true, Some(w)) => Some(w),
                _ => None,
            },
        )
        .collect()
}
