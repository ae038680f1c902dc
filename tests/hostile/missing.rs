//! Missing and garbage files (g), found by the preflight before any worker runs: exit 5
//! naming the file.
use std::path::Path;

use super::*;

// --- (g) missing and garbage files found before a worker runs --------------------------

case!(index_names_a_missing_shard_run, |m| {
    std::fs::write(
        m.join("model.safetensors.index.json"),
        r#"{"metadata":{"total_size":1000},"weight_map":{"model.embed_tokens.weight":"model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    run_refused(m, &[], 5, "model-00002-of-00002.safetensors");
});
case!(no_weights_at_all_run, |m| {
    std::fs::remove_file(m.join("model.safetensors")).unwrap();
    run_refused(m, &[], 5, "no *.safetensors weights");
});
case!(no_weights_can_still_be_inspected, |m| {
    std::fs::remove_file(m.join("model.safetensors")).unwrap();
    inspect(m, 0, "qwen3");
});
case!(tokenizer_missing_run, |m| {
    std::fs::remove_file(m.join("tokenizer.json")).unwrap();
    run_refused(m, &[], 5, "tokenizer.json is missing");
});
case!(tokenizer_garbage_run, |m| {
    garbage(&m.join("tokenizer.json"));
    run_refused(m, &[], 5, "tokenizer.json");
});
case!(tokenizer_wrong_json_run, |m| {
    std::fs::write(
        m.join("tokenizer.json"),
        r#"{"model": {"type": "BPE", "vocab": 7}}"#,
    )
    .unwrap();
    run_refused(m, &[], 5, "tokenizer.json: cannot load");
});
case!(tokenizer_config_garbage_run, |m| {
    garbage(&m.join("tokenizer_config.json"));
    run_refused(m, &[], 5, "tokenizer_config.json");
});
case!(generation_config_garbage_run, |m| {
    std::fs::write(m.join("generation_config.json"), "{\"eos_token_id\": [1,").unwrap();
    run_refused(m, &[], 5, "generation_config.json: invalid JSON");
});
case!(config_garbage, |m| {
    garbage(&m.join("config.json"));
    inspect(m, 5, "config.json");
});
case!(config_not_an_object, |m| {
    std::fs::write(m.join("config.json"), "[1, 2]").unwrap();
    inspect(m, 5, "top level is not an object");
});
case!(index_garbage, |m| {
    garbage(&m.join("model.safetensors.index.json"));
    inspect(m, 5, "model.safetensors.index.json: invalid JSON");
});
case!(shard_header_length_u64_max, |m| {
    let p = m.join("model.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    b[..8].copy_from_slice(&U64_MAX.to_le_bytes());
    std::fs::write(&p, b).unwrap();
    inspect(m, 5, "over the 100000000-byte limit");
});
case!(shard_truncated, |m| {
    std::fs::write(m.join("model.safetensors"), [1u8, 2, 3, 4]).unwrap();
    inspect(m, 5, "shorter than the 8-byte header length");
});
case!(shard_garbage_run, |m| {
    garbage(&m.join("model.safetensors"));
    run_refused(m, &[], 5, "bad safetensors header");
});
case!(shard_lfs_pointer_run, |m| {
    std::fs::write(
        m.join("model.safetensors"),
        "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 123456\n",
    )
    .unwrap();
    run_refused(m, &[], 5, "Git LFS pointer (123456 bytes");
});
