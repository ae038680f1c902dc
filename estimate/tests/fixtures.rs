//! The fixture walk: every folder of `estimate/tests/fixtures/models` (real configs and indexes
//! of 55 published checkpoints, no weights) gives an estimate or a named reason, and the
//! analytic weights match the publisher's `total_size` within 1% for dense unquantized
//! checkpoints and 3% for MoE and quantized ones, except where SOURCES.tsv flags the
//! metadata as wrong. Run with `--nocapture` to see the table.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use estimate::{estimate, Bytes, Model, Request, WeightSource};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models");

fn fixtures_dir() -> PathBuf {
    let dir = PathBuf::from(FIXTURES);
    assert!(
        dir.join("SOURCES.tsv").is_file(),
        "fixtures missing: {} (they live in the repo: estimate/tests/fixtures/models)",
        dir.display()
    );
    dir
}

/// Folder → its notes in SOURCES.tsv (top-level files only).
fn notes() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(fixtures_dir().join("SOURCES.tsv")).unwrap_or_default();
    let mut m: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() >= 6 && !cols[0].contains('/') {
            let e = m.entry(cols[0].to_string()).or_default();
            e.push_str(cols[5]);
            e.push(' ');
        }
    }
    m
}

/// Whether SOURCES.tsv flags the folder's metadata (a wrong or missing total_size, a
/// config that does not describe the stored weights, files outside the index).
fn flagged(note: &str) -> bool {
    note.contains("NOTE") || note.contains("edge case")
}

fn is_moe_or_quantized(m: &Model) -> bool {
    m.quantization.is_quantized()
        || m.config
            .u64(&["num_local_experts", "num_experts", "n_routed_experts"])
            .is_some_and(|e| e > 1)
}

#[test]
fn every_fixture_estimates_or_names_its_reason() {
    let dir = fixtures_dir();
    let notes = notes();
    let mut folders: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    folders.sort();
    assert!(
        folders.len() >= 50,
        "expected the 55 fixture folders, found {}",
        folders.len()
    );
    let req = Request {
        budget: Bytes(64 * Bytes::GIB),
        ..Request::default()
    };
    let mut failures = Vec::new();
    println!(
        "\n| model | source | estimate (analytic) | truth (index total_size) | error | class |\n|---|---|---:|---:|---:|---|"
    );
    for folder in &folders {
        let name = folder
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("?")
            .to_string();
        let note = notes.get(&name).cloned().unwrap_or_default();
        let model = match Model::open(folder) {
            Ok(m) => m,
            Err(e) => {
                let msg = e.to_string();
                println!("| {name} | error | {msg} | | | |");
                if !msg.contains(&name) {
                    failures.push(format!("{name}: error does not name the file: {msg}"));
                }
                continue;
            }
        };
        let est = estimate(&model, &req);
        assert!(
            est.total_bytes > est.weights.bytes,
            "{name}: total must include KV and activations"
        );
        let analytic = model.weights.analytic_bytes;
        let truth = model.index.as_ref().and_then(|i| i.total_size);
        let class = if flagged(&note) {
            "flagged"
        } else if is_moe_or_quantized(&model) {
            "moe/quantized (3%)"
        } else {
            "dense (1%)"
        };
        let err = match (analytic, truth) {
            (Some(a), Some(t)) => Some((a as f64 - t as f64) / t as f64 * 100.0),
            _ => None,
        };
        println!(
            "| {name} | {} | {} | {} | {} | {class} |",
            model.weights.source.as_str(),
            analytic.map_or("—".into(), |a| format!("{a} ({})", Bytes(a))),
            truth.map_or("—".into(), |t| t.to_string()),
            err.map_or("—".into(), |e| format!("{e:+.2}%")),
        );
        if analytic.is_none() {
            failures.push(format!("{name}: no analytic weights: {:?}", model.warnings));
        }
        if let (Some(e), false) = (err, flagged(&note)) {
            let bound = if is_moe_or_quantized(&model) {
                3.0
            } else {
                1.0
            };
            if e.abs() > bound {
                failures.push(format!("{name}: analytic off by {e:+.2}% (bound {bound}%)"));
            }
        }
        if truth.is_some() {
            assert_eq!(model.weights.source, WeightSource::IndexTotalSize, "{name}");
        }
    }
    assert!(
        failures.is_empty(),
        "fixture failures:\n{}",
        failures.join("\n")
    );
}

/// Known traps are reported as warnings, not silently used.
#[test]
fn flagged_metadata_is_warned_about() {
    let dir = fixtures_dir();
    let warn = |folder: &str| -> String {
        Model::open(&dir.join(folder))
            .map(|m| m.warnings.join("\n"))
            .unwrap_or_else(|e| e.to_string())
    };
    assert!(warn("openbmb__MiniCPM-Llama3-V-2_5").contains("index_total_size says"));
    assert!(warn("nvidia__Cosmos-Reason2-8B").contains("total_size is 0"));
    assert!(warn("lizpreciatior__lzlv_70b_fp16_hf").contains("has no metadata.total_size"));
    assert!(warn("chuanli11__Llama-3.2-3B-Instruct-uncensored").contains("stores lm_head.weight"));
    assert!(warn("ByteDance-Seed__UI-TARS-1.5-7B").contains("check the config's dtype"));
}

/// The two real single-tensor safetensors files of the per-tensor reshard parse exactly.
#[test]
fn real_safetensors_samples_parse() {
    let dir =
        fixtures_dir().join("meta-llama__Llama-3.2-3B__per-tensor-reshard/safetensors_samples");
    for f in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let h =
            estimate::safetensors_header::read_shard(&f.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.tensors.len(), 1);
        assert_eq!(h.tensor_bytes, 3072 * 2);
        assert_eq!(h.header_bytes + h.tensor_bytes, h.file_bytes);
    }
}

/// LFS pointers in place of shards are named as such.
#[test]
fn lfs_pointer_shards_are_named() {
    let src = fixtures_dir().join("gopu-inc__Qwen2.5-0.5B-class-fp16-resave");
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for f in ["config.json", "lfs_pointers/model.safetensors"] {
        let to = tmp
            .path()
            .join(Path::new(f).file_name().unwrap_or_default());
        std::fs::copy(src.join(f), to).unwrap_or_else(|e| panic!("{e}"));
    }
    let err = Model::open(tmp.path())
        .map(|_| ())
        .map_err(|e| e.to_string());
    let msg = err.err().unwrap_or_default();
    assert!(
        msg.contains("model.safetensors") && msg.contains("Git LFS pointer"),
        "{msg}"
    );
}

/// The first Qwen's `intermediate_size` is its two MLP halves together (`qwen.py`'s
/// w1, w2 are each half): the activation estimate plans the half, the width each
/// matrix produces (issue 24).
#[test]
fn the_first_qwens_mlp_is_half_its_intermediate_size() {
    let width = |name: &str| match Model::open(&fixtures_dir().join(name)) {
        Ok(m) => m.activation.intermediate,
        Err(e) => panic!("{name}: {e}"),
    };
    assert_eq!(width("Qwen__Qwen-72B"), 49_152 / 2);
    assert_eq!(width("XiaomiMiMo__MiMo-7B"), 11_008);
}
