//! `make-model`: deterministic random-weight model folders (Llama, Mistral, Qwen2, Qwen3,
//! Gemma 2, Gemma 3, Phi-3, Mixtral, Qwen3-MoE) with a small real byte-level BPE
//! tokenizer and a ChatML chat template. Family options (experts, RoPE scaling, sliding
//! window) are in `family.rs`.
//!
//! Weights come from our own seeded generator (the same spec gives the same bytes on
//! every platform); quantized folders are quantized by MLX itself (`mx.quantize`), so
//! their layout is exactly what mlx-lm's `convert` writes. The safetensors file is
//! written here, tensors in name order, so its bytes do not depend on hash order.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::engine::sample::Rng;

mod family;
mod tokenizer;

use half::{bf16, f16};
use mlx_rs::{Array, Dtype};
use protocol::{ModelSpec, WorkerError, WorkerErrorKind};
use serde_json::{json, Value};
use tokenizer::{build_bpe, tokenizer_config, tokenizer_json, ENDOFTEXT, IM_END, IM_START};
pub use tokenizer::{bytes_to_unicode, tokenizer_json_for, CHAT_TEMPLATE};

mod vl;

fn err(kind: WorkerErrorKind, message: impl Into<String>) -> WorkerError {
    WorkerError {
        kind,
        message: message.into(),
    }
}

fn bad(message: impl Into<String>) -> WorkerError {
    err(WorkerErrorKind::BadRequest, message)
}

fn io(path: &Path, e: impl std::fmt::Display) -> WorkerError {
    err(
        WorkerErrorKind::Internal,
        format!("cannot write {}: {e}", path.display()),
    )
}

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
    dtype: &'static str,
    shape: Vec<i32>,
    data: Vec<u8>,
}

/// The architectures `make-model` writes: every one the engine runs.
pub const ARCHS: &[&str] = crate::engine::SUPPORTED;

fn check(spec: &ModelSpec) -> Result<(), WorkerError> {
    if !ARCHS.contains(&spec.arch.as_str()) {
        return Err(bad(format!(
            "unsupported arch {:?}; supported: {}",
            spec.arch,
            ARCHS.join(", ")
        )));
    }
    family::check(spec).map_err(bad)?;
    if !["bf16", "f16", "f32"].contains(&spec.dtype.as_str()) {
        return Err(bad(format!(
            "unsupported dtype {:?}; supported: bf16, f16, f32",
            spec.dtype
        )));
    }
    let positive = [
        ("hidden", spec.hidden),
        ("layers", spec.layers),
        ("heads", spec.heads),
        ("kv-heads", spec.kv_heads),
        ("intermediate", spec.intermediate),
    ];
    if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(bad(format!("--{name} must be positive")));
    }
    if !spec.hidden.is_multiple_of(spec.heads) || !(spec.hidden / spec.heads).is_multiple_of(2) {
        return Err(bad(format!(
            "hidden {} must be a multiple of heads {} with an even head size",
            spec.hidden, spec.heads
        )));
    }
    if !spec.heads.is_multiple_of(spec.kv_heads) {
        return Err(bad(format!(
            "heads {} must be a multiple of kv-heads {}",
            spec.heads, spec.kv_heads
        )));
    }
    if spec.vocab < 300 {
        return Err(bad(format!(
            "vocab {} is too small: the tokenizer needs at least 300 ids",
            spec.vocab
        )));
    }
    if let Some(bits) = spec.quant_bits {
        if ![2, 3, 4, 5, 6, 8].contains(&bits) {
            return Err(bad(format!(
                "quant bits {bits} not supported (2, 3, 4, 5, 6, 8)"
            )));
        }
        if ![32, 64, 128].contains(&spec.group_size) {
            return Err(bad(format!(
                "group size {} not supported (32, 64, 128)",
                spec.group_size
            )));
        }
    }
    Ok(())
}

fn tensor_specs(spec: &ModelSpec) -> Vec<TensorSpec> {
    let (d, i, v) = (
        spec.hidden as i32,
        spec.intermediate as i32,
        spec.vocab as i32,
    );
    let hd = d / spec.heads as i32;
    let (qd, kvd) = (spec.heads as i32 * hd, spec.kv_heads as i32 * hd);
    let q = spec.quant_bits.is_some();
    let gs = spec.group_size as i32;
    // std 1/sqrt(fan_in): every projection keeps the activations' scale, so each token's
    // path through the layers differs and greedy decoding does not collapse.
    let lin = |name: String, out: i32, inp: i32| TensorSpec {
        name,
        shape: vec![out, inp],
        init: Init::Normal(1.0 / (inp as f64).sqrt()),
        quantize: q && inp % gs == 0,
        bits: None,
    };
    let vec_of = |name: String, n: i32, init| TensorSpec {
        name,
        shape: vec![n],
        init,
        quantize: false,
        bits: None,
    };
    // Gemma scales the (tied) embeddings by √hidden: smaller ones keep the random blocks,
    // not the input token, in charge of the next token.
    let embed_std = if spec.arch.starts_with("gemma") {
        0.1
    } else {
        1.0
    } / (d as f64).sqrt();
    let mut t = vec![TensorSpec {
        name: "model.embed_tokens.weight".into(),
        shape: vec![v, d],
        init: Init::Normal(embed_std),
        quantize: q && d % gs == 0,
        bits: None,
    }];
    let arch = spec.arch.as_str();
    let gemma = arch.starts_with("gemma");
    // Gemma norms are `(1 + weight)`: small random weights around 0, not ones.
    let norm_init = if gemma { Init::Normal(0.1) } else { Init::Ones };
    for l in 0..spec.layers {
        let p = format!("model.layers.{l}");
        if arch == "phi3" {
            t.push(lin(
                format!("{p}.self_attn.qkv_proj.weight"),
                qd + 2 * kvd,
                d,
            ));
        } else {
            t.push(lin(format!("{p}.self_attn.q_proj.weight"), qd, d));
            t.push(lin(format!("{p}.self_attn.k_proj.weight"), kvd, d));
            t.push(lin(format!("{p}.self_attn.v_proj.weight"), kvd, d));
        }
        t.push(lin(format!("{p}.self_attn.o_proj.weight"), d, qd));
        if arch == "qwen2" {
            t.push(vec_of(
                format!("{p}.self_attn.q_proj.bias"),
                qd,
                Init::Normal(0.02),
            ));
            t.push(vec_of(
                format!("{p}.self_attn.k_proj.bias"),
                kvd,
                Init::Normal(0.02),
            ));
            t.push(vec_of(
                format!("{p}.self_attn.v_proj.bias"),
                kvd,
                Init::Normal(0.02),
            ));
        }
        if ["qwen3", "qwen3_moe", "gemma3_text"].contains(&arch) {
            t.push(vec_of(
                format!("{p}.self_attn.q_norm.weight"),
                hd,
                norm_init,
            ));
            t.push(vec_of(
                format!("{p}.self_attn.k_norm.weight"),
                hd,
                norm_init,
            ));
        }
        match arch {
            "phi3" => {
                t.push(lin(format!("{p}.mlp.gate_up_proj.weight"), 2 * i, d));
                t.push(lin(format!("{p}.mlp.down_proj.weight"), d, i));
            }
            "mixtral" | "qwen3_moe" => t.extend(family::expert_specs(spec, &p, &lin)),
            _ => {
                t.push(lin(format!("{p}.mlp.gate_proj.weight"), i, d));
                t.push(lin(format!("{p}.mlp.up_proj.weight"), i, d));
                t.push(lin(format!("{p}.mlp.down_proj.weight"), d, i));
            }
        }
        t.push(vec_of(format!("{p}.input_layernorm.weight"), d, norm_init));
        t.push(vec_of(
            format!("{p}.post_attention_layernorm.weight"),
            d,
            norm_init,
        ));
        if gemma && arch != "gemma" {
            t.push(vec_of(
                format!("{p}.pre_feedforward_layernorm.weight"),
                d,
                norm_init,
            ));
            t.push(vec_of(
                format!("{p}.post_feedforward_layernorm.weight"),
                d,
                norm_init,
            ));
        }
    }
    t.push(vec_of("model.norm.weight".into(), d, norm_init));
    if !tied(spec) {
        let mut head = lin("lm_head.weight".into(), v, d);
        head.init = Init::Normal(embed_std);
        t.push(head);
    }
    t.sort_by(|a, b| a.name.cmp(&b.name));
    t
}

/// Qwen and Gemma folders tie the output projection to the embeddings (as small Qwens
/// and every Gemma do); Llama, Mistral, Phi-3 and Mixtral folders have their own `lm_head`.
fn tied(spec: &ModelSpec) -> bool {
    spec.arch.starts_with("qwen") || spec.arch.starts_with("gemma")
}

fn dtype_of(spec: &ModelSpec) -> (Dtype, &'static str, &'static str) {
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

fn build_tensors(spec: &ModelSpec) -> Result<Vec<(String, Tensor)>, WorkerError> {
    tensors_of(spec, tensor_specs(spec))
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

fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<u64, WorkerError> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "mlx"}));
    let mut offset = 0usize;
    for (name, t) in tensors {
        let end = offset + t.data.len();
        header.insert(
            name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::to_string(&Value::Object(header)).map_err(|e| io(path, e))?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let file = std::fs::File::create(path).map_err(|e| io(path, e))?;
    let mut w = BufWriter::new(file);
    w.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(|e| io(path, e))?;
    w.write_all(text.as_bytes()).map_err(|e| io(path, e))?;
    for (_, t) in tensors {
        w.write_all(&t.data).map_err(|e| io(path, e))?;
    }
    w.flush().map_err(|e| io(path, e))?;
    Ok(offset as u64)
}

fn config_json(spec: &ModelSpec, endoftext: usize) -> Value {
    let (_, _, torch_dtype) = dtype_of(spec);
    let hd = spec.hidden / spec.heads;
    let arch = match spec.arch.as_str() {
        "llama" => "LlamaForCausalLM",
        "mistral" => "MistralForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        "gemma" => "GemmaForCausalLM",
        "gemma2" => "Gemma2ForCausalLM",
        "gemma3_text" => "Gemma3ForCausalLM",
        "gemma3" => "Gemma3ForConditionalGeneration",
        "phi3" => "Phi3ForCausalLM",
        "mixtral" => "MixtralForCausalLM",
        "qwen3_moe" => "Qwen3MoeForCausalLM",
        _ => "Qwen3ForCausalLM",
    };
    let mut c = json!({
        "architectures": [arch],
        "model_type": spec.arch,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": hd,
        "vocab_size": spec.vocab,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": tied(spec),
        "torch_dtype": torch_dtype,
        "attention_dropout": 0.0,
        "bos_token_id": null,
        "eos_token_id": endoftext,
        "use_cache": true,
    });
    let extra = match spec.arch.as_str() {
        "llama" => json!({
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "attention_bias": false, "mlp_bias": false,
            "max_position_embeddings": 131072,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"}
        }),
        "mistral" => json!({"rope_theta": 1000000.0, "sliding_window": 4096}),
        "qwen2" => {
            json!({"rope_theta": 1000000.0, "use_sliding_window": false, "sliding_window": null})
        }
        "gemma" | "gemma2" | "gemma3_text" | "phi3" | "mixtral" | "qwen3_moe" => {
            family::config(spec)
        }
        _ => {
            json!({"rope_theta": 1000000.0, "attention_bias": false, "use_sliding_window": false, "sliding_window": null})
        }
    };
    if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
        c.extend(e);
        family::apply_options(spec, c);
        if let Some(bits) = spec.quant_bits {
            let mut q = json!({"group_size": spec.group_size, "bits": bits, "mode": "affine"});
            if let Some(q) = q.as_object_mut() {
                q.extend(family::quant_overrides(spec));
            }
            c.insert("quantization".into(), q.clone());
            c.insert("quantization_config".into(), q);
        }
    }
    c
}

fn write_json(dir: &Path, name: &str, v: &Value) -> Result<(), WorkerError> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(v).map_err(|e| io(&path, e))?;
    std::fs::write(&path, text + "\n").map_err(|e| io(&path, e))
}

/// Writes the model folder described by `spec`; returns the bytes of weights written.
pub fn make_model(spec: &ModelSpec) -> Result<u64, WorkerError> {
    check(spec)?;
    if spec.arch == "qwen2_5_vl" || spec.arch == "qwen2_vl" {
        return vl::make(spec);
    }
    let dir = Path::new(&spec.dir);
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let (vocab, merges) = build_bpe(spec.vocab as usize);
    let first_special = vocab.len() - 3;
    let ids: HashMap<&str, usize> = [ENDOFTEXT, IM_START, IM_END]
        .iter()
        .enumerate()
        .map(|(k, s)| (*s, first_special + k))
        .collect();
    let endoftext = ids.get(ENDOFTEXT).copied().unwrap_or(first_special);
    let im_end = ids.get(IM_END).copied().unwrap_or(first_special + 2);
    write_json(dir, "tokenizer.json", &tokenizer_json(&vocab, &merges))?;
    write_json(
        dir,
        "tokenizer_config.json",
        &tokenizer_config(first_special),
    )?;
    write_json(
        dir,
        "special_tokens_map.json",
        &json!({"eos_token": IM_END, "pad_token": ENDOFTEXT}),
    )?;
    // A multimodal Gemma 3 is its text model (gemma3_text) wrapped, plus a vision tower.
    let wrapped = spec.arch == "gemma3";
    let text_spec = if wrapped {
        ModelSpec {
            arch: "gemma3_text".into(),
            ..spec.clone()
        }
    } else {
        spec.clone()
    };
    let mut config = config_json(&text_spec, endoftext);
    if wrapped {
        config = family::wrap_gemma3(config);
    }
    write_json(dir, "config.json", &config)?;
    write_json(
        dir,
        "generation_config.json",
        &json!({"bos_token_id": null, "eos_token_id": [im_end, endoftext], "do_sample": false}),
    )?;
    let mut tensors = build_tensors(&text_spec)?;
    if wrapped {
        tensors = family::wrap_gemma3_tensors(tensors, spec);
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn bpe_fills_the_vocab_exactly() {
        for size in [300usize, 512, 4096] {
            let (vocab, merges) = build_bpe(size);
            assert_eq!(vocab.len(), size);
            assert_eq!(merges.len(), size - 259);
            let unique: HashSet<&String> = vocab.iter().collect();
            assert_eq!(unique.len(), size);
        }
    }

    #[test]
    fn normals_are_deterministic_and_scaled() {
        let a = Gen::new(1, "x").normals(10_000, 0.02);
        assert_eq!(a, Gen::new(1, "x").normals(10_000, 0.02));
        assert_ne!(a, Gen::new(1, "y").normals(10_000, 0.02));
        let var = a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / a.len() as f64;
        assert!((var.sqrt() - 0.02).abs() < 0.001, "{}", var.sqrt());
    }
}
