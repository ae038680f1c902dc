//! `make-model`: deterministic random-weight model folders (Llama, Mistral, Qwen2, Qwen3)
//! with a small real byte-level BPE tokenizer and a ChatML chat template.
//!
//! Weights come from our own seeded generator (the same spec gives the same bytes on
//! every platform); quantized folders are quantized by MLX itself (`mx.quantize`), so
//! their layout is exactly what mlx-lm's `convert` writes. The safetensors file is
//! written here, tensors in name order, so its bytes do not depend on hash order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::engine::sample::Rng;
use half::{bf16, f16};
use mlx_rs::{Array, Dtype};
use protocol::{ModelSpec, WorkerError, WorkerErrorKind};
use serde_json::{json, Value};

mod vl;

const ENDOFTEXT: &str = "<|endoftext|>";
const IM_START: &str = "<|im_start|>";
const IM_END: &str = "<|im_end|>";

/// The ChatML template written into tokenizer_config.json.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const CORPUS: &str = "The quick brown fox jumps over the lazy dog. A model that runs out of memory should \
fail with a clear message, and the process that supervises it should keep running. The worker loads \
the weights, the supervisor watches the memory, and the user reads the report. Tokens stream one by \
one as the model generates them; the text is decoded as it arrives. There is the memory, there is the \
model, and there is the machine that runs them both. Hello, world! How are you today? I am fine, thank \
you, and the weather is nice. Numbers like 1, 2, 3, 10, 42 and 2048 appear in the text too. \
Que la lumière soit: façon, déjà, naïve, où, ça — et les guillemets « français ».";

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
enum Init {
    Normal(f64),
    Ones,
}

struct TensorSpec {
    name: String,
    shape: Vec<i32>,
    init: Init,
    /// Quantize this one (a linear or embedding weight whose rows fit the group size).
    quantize: bool,
}

/// A tensor ready to write: dtype tag of safetensors, shape, raw little-endian bytes.
struct Tensor {
    dtype: &'static str,
    shape: Vec<i32>,
    data: Vec<u8>,
}

fn check(spec: &ModelSpec) -> Result<(), WorkerError> {
    if !["llama", "mistral", "qwen2", "qwen3", "qwen2_5_vl"].contains(&spec.arch.as_str()) {
        return Err(bad(format!(
            "unsupported arch {:?}; supported: llama, mistral, qwen2, qwen3, qwen2_5_vl",
            spec.arch
        )));
    }
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
    };
    let vec_of = |name: String, n: i32, init| TensorSpec {
        name,
        shape: vec![n],
        init,
        quantize: false,
    };
    let embed_std = 1.0 / (d as f64).sqrt();
    let mut t = vec![TensorSpec {
        name: "model.embed_tokens.weight".into(),
        shape: vec![v, d],
        init: Init::Normal(embed_std),
        quantize: q && d % gs == 0,
    }];
    for l in 0..spec.layers {
        let p = format!("model.layers.{l}");
        t.push(lin(format!("{p}.self_attn.q_proj.weight"), qd, d));
        t.push(lin(format!("{p}.self_attn.k_proj.weight"), kvd, d));
        t.push(lin(format!("{p}.self_attn.v_proj.weight"), kvd, d));
        t.push(lin(format!("{p}.self_attn.o_proj.weight"), d, qd));
        if spec.arch == "qwen2" {
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
        if spec.arch == "qwen3" {
            t.push(vec_of(
                format!("{p}.self_attn.q_norm.weight"),
                hd,
                Init::Ones,
            ));
            t.push(vec_of(
                format!("{p}.self_attn.k_norm.weight"),
                hd,
                Init::Ones,
            ));
        }
        t.push(lin(format!("{p}.mlp.gate_proj.weight"), i, d));
        t.push(lin(format!("{p}.mlp.up_proj.weight"), i, d));
        t.push(lin(format!("{p}.mlp.down_proj.weight"), d, i));
        t.push(vec_of(format!("{p}.input_layernorm.weight"), d, Init::Ones));
        t.push(vec_of(
            format!("{p}.post_attention_layernorm.weight"),
            d,
            Init::Ones,
        ));
    }
    t.push(vec_of("model.norm.weight".into(), d, Init::Ones));
    if !tied(spec) {
        let mut head = lin("lm_head.weight".into(), v, d);
        head.init = Init::Normal(embed_std);
        t.push(head);
    }
    t.sort_by(|a, b| a.name.cmp(&b.name));
    t
}

/// Qwen folders tie the output projection to the embeddings (as small Qwens do);
/// Llama and Mistral folders have their own `lm_head`.
fn tied(spec: &ModelSpec) -> bool {
    spec.arch.starts_with("qwen")
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
    let (dtype, tag, _) = dtype_of(spec);
    let mut out = Vec::new();
    for t in tensor_specs(spec) {
        let n: usize = t.shape.iter().map(|&s| s as usize).product();
        let values = match t.init {
            Init::Ones => vec![1.0f32; n],
            Init::Normal(std) => Gen::new(spec.seed, &t.name).normals(n, std),
        };
        let data = encode(&values, dtype);
        drop(values);
        match (t.quantize, spec.quant_bits) {
            (true, Some(bits)) => {
                let (gs, bits) = (spec.group_size as i32, bits as i32);
                let [q, s, b] = quantize(&data, &t.shape, dtype, gs, bits)?;
                let base = t.name.trim_end_matches(".weight");
                let (rows, cols) = (t.shape[0], t.shape[1]);
                out.push((
                    format!("{base}.biases"),
                    Tensor {
                        dtype: tag,
                        shape: vec![rows, cols / gs],
                        data: b,
                    },
                ));
                out.push((
                    format!("{base}.scales"),
                    Tensor {
                        dtype: tag,
                        shape: vec![rows, cols / gs],
                        data: s,
                    },
                ));
                out.push((
                    t.name.clone(),
                    Tensor {
                        dtype: "U32",
                        shape: vec![rows, cols * bits / 32],
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

/// GPT-2's byte → printable character map of byte-level BPE.
pub fn bytes_to_unicode() -> Vec<char> {
    let printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut map = vec!['\0'; 256];
    for &b in &printable {
        map[b as usize] = char::from_u32(b).unwrap_or('?');
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            map[b as usize] = char::from_u32(256 + n).unwrap_or('?');
            n += 1;
        }
    }
    map
}

/// Byte-level BPE: the 256 byte tokens, merges learnt from a small built-in corpus and
/// then filled up with byte pairs, and the three special tokens at the top ids.
fn build_bpe(vocab_size: usize) -> (Vec<String>, Vec<(String, String)>) {
    let map = bytes_to_unicode();
    let mut vocab: Vec<String> = (0..256).map(|b| map[b].to_string()).collect();
    let mut known: HashSet<String> = vocab.iter().cloned().collect();
    let n_merges = vocab_size - 256 - 3;
    let mut merges: Vec<(String, String)> = Vec::new();
    // Words with their leading space, as the ByteLevel pre-tokenizer splits them.
    let mut words: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for (i, w) in CORPUS.split(' ').enumerate() {
        let text = if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        };
        let syms: Vec<String> = text.bytes().map(|b| map[b as usize].to_string()).collect();
        *words.entry(syms).or_default() += 1;
    }
    while merges.len() < n_merges {
        let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (w, c) in &words {
            for p in w.windows(2) {
                *counts.entry((p[0].clone(), p[1].clone())).or_default() += c;
            }
        }
        let best = counts
            .into_iter()
            .filter(|(_, c)| *c >= 2)
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
        let Some(((a, b), _)) = best else { break };
        let joined = format!("{a}{b}");
        words = words
            .into_iter()
            .map(|(w, c)| {
                let mut out = Vec::with_capacity(w.len());
                let mut i = 0;
                while i < w.len() {
                    if i + 1 < w.len() && w[i] == a && w[i + 1] == b {
                        out.push(joined.clone());
                        i += 2;
                    } else {
                        out.push(w[i].clone());
                        i += 1;
                    }
                }
                (out, c)
            })
            .fold(BTreeMap::new(), |mut m, (w, c)| {
                *m.entry(w).or_default() += c;
                m
            });
        if known.insert(joined.clone()) {
            vocab.push(joined);
            merges.push((a, b));
        }
    }
    // Fill up with token + byte pairs, letters first, in a fixed order.
    let order: Vec<usize> = (b'a'..=b'z')
        .chain(b'A'..=b'Z')
        .chain(b'0'..=b'9')
        .map(|b| b as usize)
        .chain(0..256)
        .collect();
    let mut i = 0;
    while merges.len() < n_merges && i < vocab.len() {
        let left = vocab[i].clone();
        for &b in &order {
            if merges.len() >= n_merges {
                break;
            }
            let right = map[b].to_string();
            let joined = format!("{left}{right}");
            if known.insert(joined.clone()) {
                vocab.push(joined);
                merges.push((left.clone(), right));
            }
        }
        i += 1;
    }
    for s in [ENDOFTEXT, IM_START, IM_END] {
        vocab.push(s.to_string());
    }
    (vocab, merges)
}

/// The `tokenizer.json` that `make_model` writes for a vocabulary of `vocab_size` ids.
pub fn tokenizer_json_for(vocab_size: usize) -> Value {
    let (vocab, merges) = build_bpe(vocab_size.max(300));
    tokenizer_json(&vocab, &merges)
}

fn tokenizer_json(vocab: &[String], merges: &[(String, String)]) -> Value {
    let n = vocab.len();
    let specials = &vocab[n - 3..];
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(k, s)| json!({"id": n - 3 + k, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let vocab_map: serde_json::Map<String, Value> = vocab[..n - 3]
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let merges: Vec<Value> = merges.iter().map(|(a, b)| json!([a, b])).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab_map, "merges": merges
        }
    })
}

fn tokenizer_config(first_special: usize) -> Value {
    let decoder: serde_json::Map<String, Value> = [ENDOFTEXT, IM_START, IM_END]
        .iter()
        .enumerate()
        .map(|(k, s)| {
            ((first_special + k).to_string(), json!({"content": s, "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true}))
        })
        .collect();
    json!({
        "add_bos_token": false,
        "add_eos_token": false,
        "added_tokens_decoder": decoder,
        "bos_token": null,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "eos_token": IM_END,
        "model_max_length": 32768,
        "pad_token": ENDOFTEXT,
        "tokenizer_class": "PreTrainedTokenizerFast"
    })
}

fn config_json(spec: &ModelSpec, endoftext: usize) -> Value {
    let (_, _, torch_dtype) = dtype_of(spec);
    let hd = spec.hidden / spec.heads;
    let arch = match spec.arch.as_str() {
        "llama" => "LlamaForCausalLM",
        "mistral" => "MistralForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
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
        _ => {
            json!({"rope_theta": 1000000.0, "attention_bias": false, "use_sliding_window": false, "sliding_window": null})
        }
    };
    if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
        c.extend(e);
        if let Some(bits) = spec.quant_bits {
            let q = json!({"group_size": spec.group_size, "bits": bits, "mode": "affine"});
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
    if spec.arch == "qwen2_5_vl" {
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
    write_json(dir, "config.json", &config_json(spec, endoftext))?;
    write_json(
        dir,
        "generation_config.json",
        &json!({"bos_token_id": null, "eos_token_id": [im_end, endoftext], "do_sample": false}),
    )?;
    let tensors = build_tensors(spec)?;
    write_safetensors(&dir.join("model.safetensors"), &tensors)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.
mod tests {
    use super::*;

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
