//! Exactness: for safetensors files this test writes itself (with the reference
//! `safetensors` crate: many dtypes, several shards), the header-derived weight bytes
//! equal the true tensor bytes exactly, and bad folders fail with the file named.
use std::path::Path;

use estimate::{Model, WeightSource};
use safetensors::tensor::{serialize_to_file, Dtype as StDtype, TensorView};

const DTYPES: [(StDtype, usize); 14] = [
    (StDtype::BOOL, 8),
    (StDtype::U8, 8),
    (StDtype::I8, 8),
    (StDtype::F8_E4M3, 8),
    (StDtype::F8_E5M2, 8),
    (StDtype::I16, 16),
    (StDtype::U16, 16),
    (StDtype::F16, 16),
    (StDtype::BF16, 16),
    (StDtype::I32, 32),
    (StDtype::U32, 32),
    (StDtype::F32, 32),
    (StDtype::F64, 64),
    (StDtype::I64, 64),
];

const CONFIG: &str = r#"{"model_type":"llama","hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,
"num_key_value_heads":2,"intermediate_size":128,"vocab_size":256,"torch_dtype":"bfloat16","max_position_embeddings":2048}"#;

/// A tiny deterministic generator (no rand dependency).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn write_model(dir: &Path, shards: usize, seed: u64) -> u64 {
    std::fs::write(dir.join("config.json"), CONFIG).unwrap_or_else(|e| panic!("{e}"));
    let mut rng = Lcg(seed);
    let mut truth = 0u64;
    for s in 0..shards {
        let mut buffers = Vec::new();
        for t in 0..(3 + rng.next() % 6) {
            let (dtype, bits) = DTYPES[(rng.next() as usize) % DTYPES.len()];
            let shape: Vec<usize> = (0..(rng.next() % 4))
                .map(|_| 1 + (rng.next() % 9) as usize)
                .collect();
            let numel: usize = shape.iter().product();
            let bytes = numel * bits / 8;
            let data: Vec<u8> = (0..bytes).map(|_| rng.next() as u8).collect();
            truth += bytes as u64;
            buffers.push((format!("s{s}.t{t}"), dtype, shape, data));
        }
        let views: Vec<(String, TensorView<'_>)> = buffers
            .iter()
            .map(|(n, d, shape, data)| {
                (
                    n.clone(),
                    TensorView::new(*d, shape.clone(), data).unwrap_or_else(|e| panic!("{e}")),
                )
            })
            .collect();
        let file = dir.join(format!("model-{:05}-of-{:05}.safetensors", s + 1, shards));
        serialize_to_file(views, None, &file).unwrap_or_else(|e| panic!("{e}"));
    }
    truth
}

#[test]
fn header_bytes_equal_the_tensor_bytes_exactly() {
    for (seed, shards) in [(1u64, 1usize), (2, 3), (3, 7), (42, 12)] {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let truth = write_model(tmp.path(), shards, seed);
        let m = Model::open(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.weights.source, WeightSource::SafetensorsHeader);
        assert_eq!(m.weights.bytes, truth, "seed {seed}, {shards} shards");
        assert_eq!(m.shards.len(), shards);
        // Header + tensor bytes account for every byte of each file.
        for s in &m.shards {
            assert_eq!(
                s.header_bytes + s.tensor_bytes,
                s.file_bytes,
                "{}",
                s.path.display()
            );
        }
    }
}

#[test]
fn analytic_matches_a_real_llama_layout_exactly() {
    // Write the exact tensors a llama of CONFIG has, in bf16.
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(tmp.path().join("config.json"), CONFIG).unwrap_or_else(|e| panic!("{e}"));
    let (h, kv, i, v) = (64usize, 32usize, 128usize, 256usize);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, h]),
        ("model.norm.weight".into(), vec![h]),
        ("lm_head.weight".into(), vec![v, h]),
    ];
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        for (n, s) in [
            ("self_attn.q_proj.weight", vec![h, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, h]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
        ] {
            shapes.push((format!("{p}.{n}"), s));
        }
    }
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(_, s)| vec![0u8; s.iter().product::<usize>() * 2])
        .collect();
    let views: Vec<(String, TensorView<'_>)> = shapes
        .iter()
        .zip(&data)
        .map(|((n, s), d)| {
            (
                n.clone(),
                TensorView::new(StDtype::BF16, s.clone(), d).unwrap_or_else(|e| panic!("{e}")),
            )
        })
        .collect();
    serialize_to_file(views, None, &tmp.path().join("model.safetensors"))
        .unwrap_or_else(|e| panic!("{e}"));
    let m = Model::open(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.weights.analytic_bytes, Some(m.weights.bytes));
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    // What-if 4-bit: every 2-D weight quantizes (last dim 64 or 128), norms stay.
    let q4 = m.weights_at_bits(4).unwrap_or(0);
    assert!(q4 < m.weights.bytes / 3, "{q4}");
}

fn open_err(dir: &Path) -> String {
    match Model::open(dir) {
        Ok(_) => "opened".to_string(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_folders_name_the_file_and_the_problem() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = tmp.path();
    assert!(open_err(d).contains("missing config.json"));
    std::fs::write(d.join("config.json"), "{not json").unwrap_or_else(|e| panic!("{e}"));
    assert!(open_err(d).contains("config.json: invalid JSON"));
    std::fs::write(d.join("config.json"), r#"{"model_type":"llama"}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    let e = open_err(d);
    assert!(
        e.contains("config.json") && e.contains("hidden_size"),
        "{e}"
    );
    std::fs::write(d.join("config.json"), CONFIG).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(open_err(d), "opened", "config alone is enough to plan");
    // A truncated shard.
    std::fs::write(d.join("model.safetensors"), 5000u64.to_le_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let e = open_err(d);
    assert!(
        e.contains("model.safetensors") && e.contains("past the end"),
        "{e}"
    );
    // A huge header length.
    let mut b = u64::MAX.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    std::fs::write(d.join("model.safetensors"), b).unwrap_or_else(|e| panic!("{e}"));
    assert!(open_err(d).contains("over the 100000000-byte limit"));
    std::fs::remove_file(d.join("model.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    // An index naming a shard that is not there, while another shard is.
    write_model(d, 1, 7);
    std::fs::write(
        d.join("model.safetensors.index.json"),
        r#"{"metadata":{"total_size":10},"weight_map":{"a":"model-00001-of-00001.safetensors","b":"model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let e = open_err(d);
    assert!(
        e.contains("model.safetensors.index.json")
            && e.contains("model-00002-of-00002.safetensors"),
        "{e}"
    );
}

#[cfg(unix)]
#[test]
fn symlink_loops_are_named() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = tmp.path();
    std::fs::write(d.join("config.json"), CONFIG).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(d.join("b.safetensors"), d.join("a.safetensors"))
        .unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(d.join("a.safetensors"), d.join("b.safetensors"))
        .unwrap_or_else(|e| panic!("{e}"));
    let e = open_err(d);
    assert!(e.contains("a.safetensors: cannot read"), "{e}");
}
