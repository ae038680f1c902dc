//! GGUF headers: a file this test writes itself (the format byte by byte) is estimated
//! exactly — weight bytes are the sum of every tensor's block-size × shape — and
//! malformed, truncated or hostile files (huge counts, lengths past the end, unknown
//! types) are errors naming the file and the problem, never a panic or a huge allocation.
#![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

use std::path::Path;

use estimate::gguf::{self, Arrays, GgmlType};
use estimate::{EstimateError, Model, WeightSource};
use proptest::prelude::*;

/// Writes GGUF v3 bytes.
#[derive(Default)]
struct Writer {
    kv: Vec<u8>,
    kv_count: u64,
    tensors: Vec<(String, Vec<u64>, u32)>,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Writer {
    fn key(&mut self, k: &str, ty: u32) -> &mut Vec<u8> {
        self.kv_count += 1;
        string(&mut self.kv, k);
        self.kv.extend_from_slice(&ty.to_le_bytes());
        &mut self.kv
    }
    fn u32(&mut self, k: &str, v: u32) -> &mut Self {
        self.key(k, 4).extend_from_slice(&v.to_le_bytes());
        self
    }
    fn f32(&mut self, k: &str, v: f32) -> &mut Self {
        self.key(k, 6).extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, k: &str, v: &str) -> &mut Self {
        string(self.key(k, 8), v);
        self
    }
    fn strings(&mut self, k: &str, items: &[&str]) -> &mut Self {
        let out = self.key(k, 9);
        out.extend_from_slice(&8u32.to_le_bytes());
        out.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for s in items {
            string(out, s);
        }
        self
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType) -> &mut Self {
        self.tensors.push((name.into(), dims.to_vec(), ty.id()));
        self
    }
    /// The file: header, padding to 32, then zeroed tensor data laid out in order.
    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.kv_count.to_le_bytes());
        out.extend_from_slice(&self.kv);
        let mut offset = 0u64;
        for (name, dims, ty) in &self.tensors {
            string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            let n: u64 = dims.iter().product();
            let size = GgmlType::from_id(*ty)
                .and_then(|t| t.tensor_bytes(dims[0], n))
                .unwrap_or(0);
            offset += size.div_ceil(32) * 32;
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.resize(out.len() + offset as usize, 0);
        out
    }
}

/// A two-layer llama with a mix of types.
fn llama() -> Writer {
    let mut w = Writer::default();
    w.str("general.architecture", "llama")
        .u32("llama.block_count", 2)
        .u32("llama.context_length", 4096)
        .u32("llama.embedding_length", 256)
        .u32("llama.feed_forward_length", 512)
        .u32("llama.attention.head_count", 4)
        .u32("llama.attention.head_count_kv", 2)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .str("tokenizer.ggml.model", "gpt2")
        .strings("tokenizer.ggml.tokens", &["a"; 100]);
    w.tensor("token_embd.weight", &[256, 100], GgmlType::Q8_0)
        .tensor("output_norm.weight", &[256], GgmlType::F32);
    let types = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q5K,
        GgmlType::F16,
        GgmlType::Bf16,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Iq4Xs,
        GgmlType::Q8K,
        GgmlType::Iq2Xxs,
    ];
    for l in 0..2 {
        let p = |s: &str| format!("blk.{l}.{s}.weight");
        let ty = |i: usize| types[(l * 7 + i) % types.len()];
        w.tensor(&p("attn_norm"), &[256], GgmlType::F32)
            .tensor(&p("attn_q"), &[256, 256], ty(0))
            .tensor(&p("attn_k"), &[256, 128], ty(1))
            .tensor(&p("attn_v"), &[256, 128], ty(2))
            .tensor(&p("attn_output"), &[256, 256], ty(3))
            .tensor(&p("ffn_norm"), &[256], GgmlType::F32)
            .tensor(&p("ffn_gate"), &[256, 512], ty(4))
            .tensor(&p("ffn_up"), &[256, 512], ty(5))
            .tensor(&p("ffn_down"), &[512, 256], ty(6));
    }
    w
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn weight_bytes_are_every_tensors_block_size_times_shape() {
    let w = llama();
    let expected: u64 = w
        .tensors
        .iter()
        .map(|(_, dims, ty)| {
            let (per, bytes) = GgmlType::from_id(*ty).unwrap().block();
            dims.iter().product::<u64>() / per * bytes
        })
        .sum();
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "m.gguf", &w.bytes());
    let m = Model::open(&path).unwrap();
    assert_eq!(m.weights.bytes, expected);
    assert_eq!(m.weights.source, WeightSource::GgufHeader);
    assert_eq!(m.architecture, "llama");
    assert_eq!((m.dims.hidden, m.dims.layers), (256, 2));
    assert_eq!((m.dims.heads, m.dims.kv_heads, m.dims.vocab), (4, 2, 100));
    assert_eq!(m.max_position_embeddings, Some(4096));
    // 2 layers × (K + V) × 2 KV heads × 64 dims × f16.
    assert_eq!(m.kv_dtype_bytes(), 2);
    assert_eq!(
        estimate::kv_bytes_per_token(&m.kv_layers[0], 2, None) * 2,
        2 * 2 * 2 * 64 * 2
    );
    let names: Vec<&str> = m.shards[0]
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert!(names.contains(&"model.layers.1.self_attn.q_proj.weight"));
    assert!(names.contains(&"model.embed_tokens.weight"));
    // Only the header is read: never the data.
    let header = gguf::read_header(&path, Arrays::Skip).unwrap();
    assert_eq!(m.bytes_read, header.bytes_read);
    assert!(header.bytes_read <= header.data_offset);
    // A folder holding one .gguf and no config.json is the same model.
    let m2 = Model::open(tmp.path()).unwrap();
    assert_eq!(m2.weights.bytes, expected);
}

#[test]
fn a_folder_with_two_gguf_files_asks_which() {
    let tmp = tempfile::tempdir().unwrap();
    let b = llama().bytes();
    write(tmp.path(), "a.gguf", &b);
    write(tmp.path(), "b.gguf", &b);
    let e = Model::open(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("2 .gguf files") && e.contains("a.gguf"), "{e}");
}

fn open_err(bytes: &[u8]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "bad.gguf", bytes);
    let e = Model::open(&path).unwrap_err();
    assert!(matches!(e, EstimateError::Gguf { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("bad.gguf"),
        "the message names the file: {msg}"
    );
    msg
}

#[test]
fn hostile_counts_and_lengths_are_refused_before_allocating() {
    let good = llama().bytes();
    // tensor_count = u64::MAX.
    let mut b = good.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(open_err(&b).contains("tensor entries cannot fit"));
    // kv_count = 2^40.
    let mut b = good.clone();
    b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(open_err(&b).contains("metadata entries cannot fit"));
    // The first key's length far past the end.
    let mut b = good.clone();
    b[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    assert!(open_err(&b).contains("over the"));
    let mut b = good.clone();
    b[24..32].copy_from_slice(&(1u64 << 20).to_le_bytes());
    assert!(open_err(&b).contains("truncated"));
}

#[test]
fn unknown_types_versions_and_architectures_are_named() {
    let mut w = llama();
    w.tensors[1].2 = 31;
    assert!(open_err(&w.bytes()).contains("unknown ggml type 31"));
    let mut w = Writer::default();
    w.str("general.architecture", "gpt2")
        .u32("gpt2.block_count", 1);
    w.tensor("token_embd.weight", &[32, 4], GgmlType::F32);
    let e = open_err(&w.bytes());
    assert!(e.contains("architecture gpt2 is not supported yet"), "{e}");
    let mut b = llama().bytes();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(open_err(&b).contains("version 1"));
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(open_err(&b).contains("big-endian"));
    assert!(open_err(b"GGML\x03\0\0\0").contains("not a GGUF file"));
    let mut w = llama();
    w.tensors[3].1 = vec![250, 256];
    assert!(open_err(&w.bytes()).contains("whole number of 32-element blocks"));
}

#[test]
fn a_truncated_file_names_the_tensor_whose_data_is_missing() {
    let b = llama().bytes();
    let e = open_err(&b[..b.len() - 100]);
    assert!(e.contains("ends past the end of the file"), "{e}");
    assert!(e.contains("blk.1.ffn_down.weight"), "{e}");
}

#[test]
fn every_prefix_of_the_header_is_an_error() {
    let b = llama().bytes();
    let header =
        gguf::parse_header(Path::new("x.gguf"), &b[..], b.len() as u64, Arrays::Keep).unwrap();
    for n in 0..header.data_offset as usize {
        let r = gguf::parse_header(Path::new("x.gguf"), &b[..n], n as u64, Arrays::Keep);
        assert!(r.is_err(), "a {n}-byte prefix parsed");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any corruption of a valid file either parses consistently or is a named error.
    #[test]
    fn corrupted_files_never_panic(flips in prop::collection::vec((0usize..4096, any::<u8>()), 1..8),
                                   cut in prop::option::of(0usize..8192)) {
        let mut b = llama().bytes();
        let header_len = gguf::parse_header(Path::new("x"), &b[..], b.len() as u64, Arrays::Keep)
            .unwrap().data_offset as usize;
        for (i, v) in flips {
            let i = i % header_len;
            b[i] = v;
        }
        if let Some(c) = cut {
            b.truncate(c.min(b.len()));
        }
        for arrays in [Arrays::Skip, Arrays::Keep] {
            if let Ok(h) = gguf::parse_header(Path::new("x"), &b[..], b.len() as u64, arrays) {
                for t in &h.tensors {
                    prop_assert!(h.data_offset + t.offset + t.bytes <= b.len() as u64);
                }
                prop_assert!(h.bytes_read <= b.len() as u64);
            }
        }
    }

    /// Random bytes after a valid magic and version.
    #[test]
    fn random_headers_never_panic(body in prop::collection::vec(any::<u8>(), 0..2048), claimed in any::<u64>()) {
        let mut b = b"GGUF\x03\0\0\0".to_vec();
        b.extend_from_slice(&body);
        let _ = gguf::parse_header(Path::new("x"), &b[..], b.len() as u64, Arrays::Keep);
        // A reader that claims a longer file than it holds is a truncation, not a panic.
        let _ = gguf::parse_header(Path::new("x"), &b[..], claimed, Arrays::Skip);
    }
}
