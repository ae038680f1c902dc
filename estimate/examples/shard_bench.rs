//! Speed check: generates a sparse 160-shard model (real safetensors headers of a
//! Llama-3-70B-shaped checkpoint, tensor data left as holes via `set_len`) in a temp dir,
//! then measures the inspect-equivalent work (`Model::open` + `estimate`): wall time and
//! bytes read. Goal: under 50 ms and under 1% of the bytes.
//!
//! `cargo run --release -p mlxsup-estimate --example shard_bench [-- DIR]`
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use estimate::{estimate, Bytes, Model, Request};

const SHARDS: usize = 160;
const LAYERS: usize = 80;
const HIDDEN: u64 = 8192;
const KV: u64 = 1024;
const INTER: u64 = 28672;
const VOCAB: u64 = 128256;

fn tensors() -> Vec<(String, Vec<u64>)> {
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN])];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        for (n, s) in [
            ("input_layernorm.weight", vec![HIDDEN]),
            ("self_attn.q_proj.weight", vec![HIDDEN, HIDDEN]),
            ("self_attn.k_proj.weight", vec![KV, HIDDEN]),
            ("self_attn.v_proj.weight", vec![KV, HIDDEN]),
            ("self_attn.o_proj.weight", vec![HIDDEN, HIDDEN]),
            ("post_attention_layernorm.weight", vec![HIDDEN]),
            ("mlp.gate_proj.weight", vec![INTER, HIDDEN]),
            ("mlp.up_proj.weight", vec![INTER, HIDDEN]),
            ("mlp.down_proj.weight", vec![HIDDEN, INTER]),
        ] {
            t.push((format!("{p}.{n}"), s));
        }
    }
    t.push(("model.norm.weight".to_string(), vec![HIDDEN]));
    t.push(("lm_head.weight".to_string(), vec![VOCAB, HIDDEN]));
    t
}

fn generate(dir: &Path) -> std::io::Result<u64> {
    std::fs::write(
        dir.join("config.json"),
        format!(
            r#"{{"model_type":"llama","hidden_size":{HIDDEN},"num_hidden_layers":{LAYERS},"num_attention_heads":64,
"num_key_value_heads":8,"intermediate_size":{INTER},"vocab_size":{VOCAB},"torch_dtype":"bfloat16",
"max_position_embeddings":131072,"tie_word_embeddings":false}}"#
        ),
    )?;
    let all = tensors();
    let mut total = 0;
    let mut index = String::from(r#"{"metadata":{"total_size":TOTAL},"weight_map":{"#);
    let mut tensor_total = 0u64;
    for s in 0..SHARDS {
        let chunk = &all[s * all.len() / SHARDS..(s + 1) * all.len() / SHARDS];
        let name = format!("model-{:05}-of-{SHARDS:05}.safetensors", s + 1);
        let mut json = String::from(r#"{"__metadata__":{"format":"pt"}"#);
        let mut off = 0u64;
        for (n, shape) in chunk {
            let bytes = shape.iter().product::<u64>() * 2;
            let _ = write!(
                json,
                r#","{n}":{{"dtype":"BF16","shape":{shape:?},"data_offsets":[{off},{}]}}"#,
                off + bytes
            );
            let _ = write!(index, r#""{n}":"{name}","#);
            off += bytes;
        }
        json.push('}');
        while json.len() % 8 != 0 {
            json.push(' ');
        }
        let mut f = File::create(dir.join(&name))?;
        f.write_all(&(json.len() as u64).to_le_bytes())?;
        f.write_all(json.as_bytes())?;
        let len = 8 + json.len() as u64 + off;
        f.set_len(len)?;
        total += len;
        tensor_total += off;
    }
    index.pop();
    index.push_str("}}");
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        index.replace("TOTAL", &tensor_total.to_string()),
    )?;
    Ok(total)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| tmp.path().to_path_buf(), Into::into);
    std::fs::create_dir_all(&dir)?;
    let file_bytes = generate(&dir)?;
    let shards = std::fs::read_dir(&dir)?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        })
        .count();
    let req = Request {
        budget: Bytes(192 * Bytes::GIB),
        ..Request::default()
    };
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..21 {
        let t = Instant::now();
        let model = Model::open(&dir)?;
        let est = estimate(&model, &req);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        last = Some((model, est));
    }
    let Some((model, est)) = last else {
        return Ok(());
    };
    let first = times[0];
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let read = model.bytes_read;
    println!("shards:            {shards}");
    println!(
        "tensors:           {}",
        model.shards.iter().map(|s| s.tensors.len()).sum::<usize>()
    );
    println!("file bytes:        {file_bytes} ({})", Bytes(file_bytes));
    println!(
        "weights (header):  {} ({})",
        est.weights.bytes,
        Bytes(est.weights.bytes)
    );
    println!(
        "bytes read:        {read} ({}), {:.5}% of the files",
        Bytes(read),
        read as f64 / file_bytes as f64 * 100.0
    );
    println!(
        "wall time:         first {first:.1} ms, median {median:.1} ms, max {:.1} ms (21 runs)",
        times[times.len() - 1]
    );
    println!("verdict:           {} ({})", est.verdict, est.advice);
    Ok(())
}
