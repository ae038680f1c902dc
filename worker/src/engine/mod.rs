//! The inference engine: one loaded model, and generation from it, with mlx-rs.
//!
//! The engine knows nothing of sockets. The serve loop drives it and is told what
//! happens through [`Hooks`]: before every prefill chunk and decode step the engine asks
//! [`Hooks::before_step`] whether to go on, which is where the serve loop checks for
//! cancellation, injects test faults and applies the in-worker soft memory guard.
//!
//! The computation mirrors mlx-lm 0.32 op for op (same fast kernels, same casts, same
//! cache layout, same prefill chunking), so greedy decoding gives the same tokens.

mod attention;
mod cache;
mod chat;
mod config;
mod error;
mod ffn;
mod generate;
mod headroom;
mod kv_quant;
mod layers;
mod memory;
mod model;
mod moe;
mod parallel;
pub mod prefix_cache;
mod rope;
pub(crate) mod sample;
mod stop;
mod tokenizer;
pub mod vision;
mod weights;

use std::path::Path;

use protocol::{DoneInfo, GenerateRequest, Phase, WorkerError};

pub use cache::{causal_mask, KvCache, LayerCache, Mask, RotatingKvCache};
pub use config::{ModelConfig, SUPPORTED};
pub use generate::GenerateOptions;
pub use memory::{activation_bytes, activation_dims, activation_model, step_bytes};
pub use sample::{Rng, Sampler};
pub use stop::{StopMatcher, StopStep};
pub use tokenizer::{StreamDecoder, Tokenizer};

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Prompt tokens per prefill step.
    pub prefill_chunk: usize,
    /// Compute in f32: f16/bf16 weights upcast, quantized weights dequantized at load.
    pub f32: bool,
    /// CPU streams a native-dtype matmul is split over (0: one per core on the CPU
    /// device, or `MLXSUP_MATMUL_LANES`; 1: no split). See [`parallel`].
    pub matmul_lanes: usize,
    /// `--kv-bits`: quantize the full-attention KV caches to 4 or 8 bits (group 64).
    pub kv_bits: Option<u8>,
    /// `--prefix-cache`: bytes the prefix cache may hold ([`prefix_cache`]; 0: off).
    pub prefix_cache: u64,
}

impl Default for LoadOptions {
    /// mlx-lm's prefill chunk, the native dtype, one matmul lane per core, no KV
    /// quantization.
    fn default() -> LoadOptions {
        LoadOptions {
            prefill_chunk: estimate::DEFAULT_PREFILL_CHUNK as usize,
            f32: false,
            matmul_lanes: 0,
            kv_bits: None,
            prefix_cache: 0,
        }
    }
}

/// What the serve loop is told, and asked, while the engine works.
pub trait Hooks {
    /// Loading progress, in bytes of weights read.
    fn progress(&mut self, _done: u64, _total: u64) {}
    /// The engine entered a phase (`Prefill`, `Decode`).
    fn phase(&mut self, _phase: Phase) {}
    /// Called before each prefill chunk (`step` = chunk index from 0) and before each
    /// decode step (`step` = 1-based index of the token about to be generated), with the
    /// engine's prediction of how many bytes the step will add on top of what MLX holds.
    /// An `Err` ends the request with that error; the engine frees its caches first.
    fn before_step(
        &mut self,
        phase: Phase,
        step: u32,
        predicted_bytes: u64,
    ) -> Result<(), WorkerError>;
    /// A newly generated token and the text it completes (possibly empty while a UTF-8
    /// sequence is incomplete).
    fn token(&mut self, id: u32, text: &str);
    /// Called right after each [`Hooks::token`], once its event is out: the point where
    /// "N tokens have been delivered" holds. An `Err` ends the request with that error.
    fn delivered(&mut self) -> Result<(), WorkerError> {
        Ok(())
    }
    /// The vision tower ran on the request's images: what it used.
    fn vision(&mut self, _peak: &protocol::VisionPeak) {}
}

/// A loaded model.
pub struct Engine {
    model: model::Model,
    tokenizer: Tokenizer,
    prompts: chat::TokenizerConfig,
    opts: LoadOptions,
    weight_bytes: u64,
    first_logprobs: Option<Vec<f32>>,
    /// A vision-language model's tower and processor settings.
    vision: Option<vision::run::Vision>,
    /// The activation coefficients the soft guard predicts with (the preflight's).
    activation: estimate::ActivationModel,
    /// The KV of finished generations, for the next prompts that share their prefix.
    prefix: prefix_cache::PrefixCache,
}

impl Engine {
    /// Loads a model folder (config.json, safetensors shards, tokenizer files).
    pub fn load(
        dir: &Path,
        opts: &LoadOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<Engine, WorkerError> {
        let cfg = config::load(dir)?;
        if let Some(bits) = opts.kv_bits {
            kv_quant::check(bits, &cfg)?;
        }
        let tokenizer = Tokenizer::load(dir)?;
        let prompts = chat::TokenizerConfig::load(dir)?;
        let lanes = if opts.f32 {
            parallel::Lanes::single()
        } else {
            parallel::Lanes::new(opts.matmul_lanes)
        };
        let prefix = cfg.weight_prefix.clone();
        let keep = cfg.vl.as_ref().map(|_| "vision_tower.");
        let rename = match (&cfg.vl, cfg.family) {
            (Some(_), _) => Some(vision::mlx_name as fn(&str) -> Option<String>),
            (None, config::Family::Qwen) => {
                Some(::model::run::qwen_weight_name as fn(&str) -> Option<String>)
            }
            (None, _) => None,
        };
        let mut store = weights::WeightStore::open_keeping(
            dir,
            opts.f32,
            prefix.as_deref(),
            keep,
            rename,
            &cfg.skip_weights,
            &mut |done, total| hooks.progress(done, total),
        )?
        .with_lanes(lanes);
        let vision = match &cfg.vl {
            Some(_) => Some(vision::run::Vision::load(dir, &cfg, &mut store)?),
            None => None,
        };
        let mut cfg = cfg;
        if cfg.eos_token_ids.is_empty() {
            if let Some(id) = prompts
                .eos_token
                .as_deref()
                .and_then(|t| tokenizer.token_id(t))
            {
                cfg.eos_token_ids.push(id);
            }
        }
        let model = model::Model::load(cfg, &mut store)?;
        drop(store);
        let weight_bytes =
            model.weight_bytes() + vision.as_ref().map_or(0, vision::run::Vision::weight_bytes);
        let _ = mlx_rs::memory::clear_cache();
        let prefix_limit = if opts.kv_bits.is_some() && opts.prefix_cache > 0 {
            eprintln!(
                "mlxsup-worker: prefix cache off: a quantized KV cache (--kv-bits) is not cached"
            );
            0
        } else {
            opts.prefix_cache
        };
        Ok(Engine {
            prefix: prefix_cache::PrefixCache::new(prefix_limit),
            model,
            tokenizer,
            prompts,
            opts: LoadOptions {
                prefill_chunk: opts.prefill_chunk.max(1),
                ..opts.clone()
            },
            activation: estimate::activation::BUILTIN,
            weight_bytes,
            first_logprobs: None,
            vision,
        })
    }

    /// Predict with these activation coefficients (the load request's: the preflight's).
    pub fn set_activation_model(&mut self, model: estimate::ActivationModel) {
        self.activation = model;
    }

    /// The activation coefficients the soft guard predicts with.
    pub fn activation_model(&self) -> &estimate::ActivationModel {
        &self.activation
    }

    /// The prefix cache (its bytes, bound and hit counters).
    pub fn prefix_cache(&self) -> &prefix_cache::PrefixCache {
        &self.prefix
    }

    /// The prefix cache, to empty it under memory pressure or in tests.
    pub fn prefix_cache_mut(&mut self) -> &mut prefix_cache::PrefixCache {
        &mut self.prefix
    }

    /// The config's `model_type`.
    pub fn architecture(&self) -> &str {
        &self.model.cfg.model_type
    }

    /// The dtype it computes in (`float32`, `bfloat16 (quantized)`).
    pub fn compute_dtype(&self) -> String {
        self.model.compute_dtype()
    }

    /// Bytes of weights held by MLX.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    pub fn vocab_size(&self) -> u32 {
        self.model.cfg.vocab_size as u32
    }

    /// The end-of-sequence token ids (config.json and generation_config.json).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.model.cfg.eos_token_ids
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The parsed model configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.model.cfg
    }

    /// The prompt's token ids, as `generate` would feed them.
    pub fn prompt_ids(&self, prompt: &protocol::Prompt) -> Result<Vec<u32>, WorkerError> {
        Ok(text::prompt_ids(&self.tokenizer, &self.prompts, prompt)?)
    }

    /// The log-probabilities of the first generated token of the last generation run
    /// with [`GenerateOptions::keep_first_logprobs`].
    pub fn first_logprobs(&self) -> Option<&[f32]> {
        self.first_logprobs.as_deref()
    }

    /// Generates, streaming through `hooks`, until max tokens, an eos token, a stop
    /// sequence, or an `Err` from `hooks.before_step`.
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        hooks: &mut dyn Hooks,
    ) -> Result<DoneInfo, WorkerError> {
        self.generate_with(req, &GenerateOptions::default(), hooks)
    }

    /// [`Engine::generate`] with options for tests and benchmarks.
    pub fn generate_with(
        &mut self,
        req: &GenerateRequest,
        opts: &GenerateOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<DoneInfo, WorkerError> {
        if !req.images.is_empty() {
            let images = match &self.vision {
                Some(v) => vision::run::pixel_values(v, &req.images)?,
                None => Vec::new(),
            };
            if images.is_empty() {
                return Err(error::bad_request(format!(
                    "{} is not a vision-language model: it takes no images",
                    self.model.cfg.model_type
                )));
            }
            return self.generate_images(req, &images, opts, hooks);
        }
        let prompt = self.prompt_ids(&req.prompt)?;
        let prepared = generate::Prepared::default();
        let result = generate::run(self, &prompt, req, opts, &prepared, hooks);
        if result.is_err() {
            let _ = mlx_rs::memory::clear_cache();
        }
        result
    }
}

#[cfg(test)]
mod memory_tests;
#[cfg(test)]
mod plan_tests;
#[cfg(test)]
mod prefix_tests;
#[cfg(test)]
mod tests;
