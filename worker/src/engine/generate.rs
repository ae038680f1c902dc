//! The generation loop, shaped like mlx-lm's `generate_step`: the prompt but its last
//! token is prefilled in chunks (only the cache is evaluated between chunks); the last
//! prompt token gives the first generated token; greedy decoding queues step n+1 on the
//! device before reading token n, so the host never waits on an idle device.
//!
//! With a prefix cache ([`super::prefix_cache`]) the prompt starts from the KV of its
//! longest cached prefix, and the finished generation's KV is kept for the next prompt.

use std::time::Instant;

use mlx_rs::{
    error::Exception,
    ops::{self, indexing::IndexOp},
    transforms::{async_eval, eval},
    Array, Dtype,
};
use protocol::{DoneInfo, FinishReason, GenerateRequest, Phase, WorkerError};

use super::cache::LayerCache;
use super::error::{bad_request, MlxResultExt};
use super::kv_quant;
use super::memory::step_bytes;
use super::model::Model;
use super::prefix_cache::{Inserted, PrefixCache};
use super::sample::Sampler;
use super::stop::{StopMatcher, StopStep};
use super::tokenizer::{StreamDecoder, Tokenizer};
use super::Engine;
use super::Hooks;

/// Knobs for tests and benchmarks; the defaults are what the protocol asks for.
#[derive(Clone, Debug, Default)]
pub struct GenerateOptions {
    /// Keep going past end-of-sequence tokens (benchmarks, reference tests).
    pub ignore_eos: bool,
    /// Keep the first step's log-probabilities ([`Engine::first_logprobs`]).
    pub keep_first_logprobs: bool,
}

/// One decode step in flight: its log-probabilities and, when greedy, its argmax.
struct Step {
    logprobs: Array,
    token: Option<Array>,
}

/// A prompt's inputs beyond its ids (a vision-language prompt with images): the
/// embeddings with the image features spliced in, each token's multimodal position, and
/// the offset from the cache's length to the position of a generated token.
#[derive(Default)]
pub(super) struct Prepared {
    pub embeds: Option<Array>,
    pub positions: Option<Vec<[i32; 3]>>,
    pub delta: i32,
}

fn forward(
    model: &Model,
    caches: &mut [LayerCache],
    input: &Array,
    greedy: bool,
    kv_bits: Option<i32>,
    delta: i32,
) -> Result<Step, Exception> {
    let h = if model.is_mrope() && delta != 0 {
        let start = caches.first().map_or(0, LayerCache::offset) + delta;
        let pos: Vec<[i32; 3]> = (start..start + input.dim(1)).map(|p| [p; 3]).collect();
        model.hidden_at(model.embed(input)?, caches, Some(&pos))?
    } else {
        model.hidden(input, caches)?
    };
    kv_quant::quantize_caches(caches, kv_bits)?;
    let logits = model.logits(&h)?.reshape(&[1, -1])?;
    let logprobs = logits.subtract(logits.logsumexp(true)?)?;
    let token = if greedy {
        Some(ops::indexing::argmax_axis(&logprobs, -1, false)?)
    } else {
        None
    };
    let outs: Vec<&Array> = token.iter().chain(std::iter::once(&logprobs)).collect();
    async_eval(outs)?;
    Ok(Step { logprobs, token })
}

/// Bytes per activation element of a model computing in `dtype` (the soft guard's, text and
/// tower alike).
pub(super) fn elem_bytes(dtype: Dtype) -> u64 {
    match dtype {
        Dtype::Float16 | Dtype::Bfloat16 => 2,
        Dtype::Float64 => 8,
        _ => 4,
    }
}

/// `hooks.before_step`, but under memory pressure the prefix cache goes first: a step the
/// soft guard refuses is asked again after the cache is emptied.
fn check_step(
    prefix: &mut PrefixCache,
    hooks: &mut dyn Hooks,
    phase: Phase,
    step: u32,
    bytes: u64,
) -> Result<(), WorkerError> {
    match hooks.before_step(phase, step, bytes) {
        Err(e)
            if e.kind == protocol::WorkerErrorKind::MemoryBudgetExceeded && !prefix.is_empty() =>
        {
            let freed = prefix.clear();
            let _ = mlx_rs::memory::clear_cache();
            eprintln!(
                "mlxsup-worker: prefix cache emptied under memory pressure ({freed} bytes) before the {phase} step {step}"
            );
            hooks.before_step(phase, step, bytes)
        }
        r => r,
    }
}

/// Whether this request's KV may come from, and go to, the prefix cache; the reason
/// when not (for the worker's log).
fn cacheable(prepared: &Prepared, kv_bits: Option<i32>) -> Result<(), &'static str> {
    if prepared.embeds.is_some() || prepared.positions.is_some() || prepared.delta != 0 {
        Err("a request with images is not cached")
    } else if kv_bits.is_some() {
        Err("a quantized KV cache (--kv-bits) is not cached")
    } else {
        Ok(())
    }
}

/// Streams text through the stop matcher and the hooks.
struct Output<'a> {
    tok: &'a Tokenizer,
    detok: StreamDecoder,
    stop: StopMatcher,
}

impl Output<'_> {
    /// Everything still held back, at the end.
    fn tail(&mut self) -> String {
        let rest = self.detok.flush(self.tok);
        match self.stop.push(&rest) {
            StopStep::Stop(t) => t,
            StopStep::Emit(t) => t + &self.stop.flush(),
        }
    }
}

pub(super) fn run(
    engine: &mut Engine,
    prompt: &[u32],
    req: &GenerateRequest,
    opts: &GenerateOptions,
    prepared: &Prepared,
    hooks: &mut dyn Hooks,
) -> Result<DoneInfo, WorkerError> {
    let model = &engine.model;
    let delta = prepared.delta;
    let cfg = &model.cfg;
    let vocab = cfg.vocab_size as u32;
    if prompt.is_empty() {
        return Err(bad_request("the prompt is empty"));
    }
    req.sampling.check().map_err(bad_request)?;
    if let Some(bad) = prompt.iter().find(|&&t| t >= vocab) {
        return Err(bad_request(format!(
            "prompt token {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let started = Instant::now();
    let max = req.max_tokens;
    let chunk = engine.opts.prefill_chunk;
    let kv_bits = engine.opts.kv_bits.map(i32::from);
    let prefix = &mut engine.prefix;
    let use_prefix = prefix.limit() > 0 && max > 0;
    let reuse = if use_prefix {
        match cacheable(prepared, kv_bits) {
            Ok(()) => prefix.lookup(prompt),
            Err(why) => {
                eprintln!("mlxsup-worker: prefix cache: {why}");
                None
            }
        }
    } else {
        None
    };
    let cached = reuse.as_ref().map_or(0, |(len, _)| *len);
    let done = |generated: u32, prompt_secs: f64, gen_secs: f64, finish, cache_bytes| DoneInfo {
        prompt_tokens: prompt.len() as u32,
        generated_tokens: generated,
        prompt_tps: if prompt_secs > 0.0 {
            prompt.len() as f64 / prompt_secs
        } else {
            0.0
        },
        generation_tps: if gen_secs > 0.0 {
            generated as f64 / gen_secs
        } else {
            0.0
        },
        peak_bytes: crate::peak::peak(),
        finish,
        cached_tokens: cached as u32,
        prefix_cache_bytes: cache_bytes,
    };
    if max == 0 {
        return Ok(done(0, 0.0, 0.0, FinishReason::Length, prefix.bytes()));
    }
    let elem = elem_bytes(model.dtype());
    let act = &engine.activation;
    let mut caches = match reuse {
        Some((_, kv)) => kv,
        None => model.make_cache(),
    };

    hooks.phase(Phase::Prefill);
    let n = prompt.len();
    let mut pos = cached;
    let mut chunk_idx = 0u32;
    loop {
        let take = (n - pos - 1).min(chunk);
        if take == 0 && chunk_idx > 0 {
            break;
        }
        check_step(
            prefix,
            hooks,
            Phase::Prefill,
            chunk_idx,
            step_bytes(act, cfg, &caches, elem, take.max(1) as i32),
        )?;
        if take == 0 {
            break;
        }
        let ids: Vec<i32> = prompt[pos..pos + take].iter().map(|&t| t as i32).collect();
        let input = Array::from_slice(&ids, &[1, take as i32]);
        let h = match &prepared.embeds {
            Some(e) => e.index((.., pos as i32..(pos + take) as i32, ..)),
            None => model.embed(&input).ctx("prefill")?,
        };
        let positions = prepared.positions.as_deref().map(|p| &p[pos..pos + take]);
        model.hidden_at(h, &mut caches, positions).ctx("prefill")?;
        kv_quant::quantize_caches(&mut caches, kv_bits).ctx("prefill")?;
        eval(caches.iter().flat_map(|c| c.state())).ctx("prefill")?;
        let _ = mlx_rs::memory::clear_cache();
        pos += take;
        chunk_idx += 1;
    }

    hooks.phase(Phase::Decode);
    let mut sampler = Sampler::new(&req.sampling);
    let greedy = sampler.is_greedy();
    let eos: &[u32] = if opts.ignore_eos {
        &[]
    } else {
        &cfg.eos_token_ids
    };
    let mut out = Output {
        tok: &engine.tokenizer,
        detok: StreamDecoder::new(),
        stop: StopMatcher::new(&req.stop),
    };
    let mut first_logprobs = None;

    check_step(
        prefix,
        hooks,
        Phase::Decode,
        1,
        step_bytes(act, cfg, &caches, elem, 1),
    )?;
    let last = Array::from_slice(&[prompt[n - 1] as i32], &[1, 1]);
    let mut cur = forward(model, &mut caches, &last, greedy, kv_bits, delta).ctx("decode")?;
    let mut generated = 0u32;
    // Every token fed to the model so far (the prompt, then each generated one read).
    let mut fed: Vec<u32> = if use_prefix {
        prompt.to_vec()
    } else {
        Vec::new()
    };
    let (mut prompt_secs, mut gen_start) = (0.0, Instant::now());
    let finish = loop {
        let want_more = generated + 1 < max;
        let mut next = None;
        let mut refused = None;
        if want_more && greedy {
            match check_step(
                prefix,
                hooks,
                Phase::Decode,
                generated + 2,
                step_bytes(act, cfg, &caches, elem, 1),
            ) {
                Ok(()) => {
                    let input = cur
                        .token
                        .as_ref()
                        .map(|t| t.reshape(&[1, 1]))
                        .transpose()
                        .ctx("decode")?;
                    let input = input.ok_or_else(|| bad_request("greedy step without a token"))?;
                    next = Some(
                        forward(model, &mut caches, &input, true, kv_bits, delta).ctx("decode")?,
                    );
                }
                Err(e) => refused = Some(e),
            }
        }
        let id = match &cur.token {
            Some(t) => t.try_item_exact::<u32>().ctx("decode")?,
            None => {
                let lp = cur.logprobs.as_type::<f32>().ctx("decode")?;
                lp.eval().ctx("decode")?;
                sampler.sample(
                    lp.try_as_slice::<f32>()
                        .map_err(|e| bad_request(e.to_string()))?,
                )
            }
        };
        if use_prefix {
            fed.push(id);
        }
        if generated == 0 {
            prompt_secs = started.elapsed().as_secs_f64();
            gen_start = Instant::now();
            if opts.keep_first_logprobs {
                let lp = cur.logprobs.as_type::<f32>().ctx("decode")?;
                lp.eval().ctx("decode")?;
                first_logprobs = Some(
                    lp.try_as_slice::<f32>()
                        .map_err(|e| bad_request(e.to_string()))?
                        .to_vec(),
                );
            }
        }
        if eos.contains(&id) {
            let text = out.tail();
            if !text.is_empty() {
                hooks.token(id, &text);
                hooks.delivered()?;
            }
            break FinishReason::Eos;
        }
        generated += 1;
        let piece = out.detok.push(out.tok, id);
        match out.stop.push(&piece) {
            StopStep::Stop(text) => {
                hooks.token(id, &text);
                hooks.delivered()?;
                break FinishReason::Stop;
            }
            StopStep::Emit(mut text) => {
                if generated >= max {
                    text += &out.tail();
                }
                hooks.token(id, &text);
                hooks.delivered()?;
            }
        }
        if generated >= max {
            break FinishReason::Length;
        }
        if let Some(e) = refused {
            return Err(e);
        }
        if generated.is_multiple_of(256) {
            let _ = mlx_rs::memory::clear_cache();
        }
        cur = match next {
            Some(step) => step,
            None => {
                check_step(
                    prefix,
                    hooks,
                    Phase::Decode,
                    generated + 1,
                    step_bytes(act, cfg, &caches, elem, 1),
                )?;
                let input = Array::from_slice(&[id], &[1, 1]);
                forward(model, &mut caches, &input, greedy, kv_bits, delta).ctx("decode")?
            }
        };
    };
    let gen_secs = gen_start.elapsed().as_secs_f64();
    if use_prefix && cacheable(prepared, kv_bits).is_ok() {
        keep(prefix, fed, caches).ctx("prefix cache")?;
    } else {
        drop(caches);
    }
    let cache_bytes = prefix.bytes();
    engine.first_logprobs = first_logprobs;
    Ok(done(generated, prompt_secs, gen_secs, finish, cache_bytes))
}

/// Keeps a finished generation's KV in the prefix cache: the ids are those the caches
/// hold (a pipelined step may have fed one token more than was generated).
fn keep(
    prefix: &mut PrefixCache,
    mut fed: Vec<u32>,
    caches: Vec<LayerCache>,
) -> Result<(), Exception> {
    let held = caches.first().map_or(0, LayerCache::offset).max(0) as usize;
    if held > fed.len() || caches.iter().any(|c| c.offset() as usize != held) {
        // Cannot say which tokens the KV holds: do not keep it.
        return Ok(());
    }
    fed.truncate(held);
    eval(caches.iter().flat_map(|c| c.state()))?;
    if let Inserted::TooLarge { bytes, limit } = prefix.insert(fed, caches) {
        eprintln!(
            "mlxsup-worker: prefix cache: an entry of {bytes} bytes is larger than the cache's {limit}: not kept"
        );
    }
    Ok(())
}
