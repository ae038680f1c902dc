//! End-to-end tests of the real `mlxsup inspect` binary: the table, the `--json` shape of
//! docs/CONTRACT.md, exit 5 naming the bad file, exit 2 on usage errors.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../estimate/tests/fixtures/models"
);

fn fixture(name: &str) -> PathBuf {
    let p = Path::new(FIXTURES).join(name);
    assert!(
        p.is_dir(),
        "fixtures missing: {} (they live in the repo: estimate/tests/fixtures/models)",
        p.display()
    );
    p
}

fn mlxsup(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlxsup"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run mlxsup: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn table_for_people() {
    let m = fixture("meta-llama__Meta-Llama-3-8B");
    let out = mlxsup(&[
        "inspect",
        m.to_str().unwrap_or_default(),
        "--budget",
        "64GiB",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    for needle in [
        "(llama)",
        "weights",
        "15 GiB",
        "index_total_size",
        "kv cache",
        "context 8192",
        "activations",
        "total",
        "budget",
        "64 GiB",
        "verdict",
        "fits",
        "advice",
    ] {
        assert!(s.contains(needle), "missing `{needle}` in:\n{s}");
    }
    assert!(!s.contains('\x1b'), "no color when not a terminal");
}

#[test]
fn json_has_the_contract_shape() {
    let m = fixture("lmstudio-community__Qwen3-14B-MLX-4bit");
    let out = mlxsup(&[
        "inspect",
        m.to_str().unwrap_or_default(),
        "--json",
        "--budget",
        "8GiB",
        "--context",
        "4096",
        "--batch",
        "2",
        "--kv-bits",
        "8",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    assert_eq!(v["architecture"], "qwen3");
    assert!(v["model"]
        .as_str()
        .is_some_and(|s| s.ends_with("Qwen3-14B-MLX-4bit")));
    assert_eq!(v["weights"]["bytes"], 8_307_783_680u64);
    assert_eq!(v["weights"]["source"], "index_total_size");
    let kv = &v["kv_cache"];
    assert_eq!(kv["context"], 4096);
    assert_eq!(kv["batch"], 2);
    assert_eq!(kv["kv_bits"], 8);
    // 40 layers × K,V × 8 heads × (128 + 2 groups × 2 × 2 bytes).
    assert_eq!(kv["bytes_per_token"], 40 * 2 * 8 * 136);
    assert_eq!(kv["bytes"], 40 * 2 * 8 * 136 * 4096 * 2);
    for k in [
        "activation_bytes",
        "overhead_bytes",
        "total_bytes",
        "budget_bytes",
    ] {
        assert!(v[k].as_u64().is_some_and(|n| n > 0), "{k}: {}", v[k]);
    }
    let sum = ["activation_bytes", "overhead_bytes"]
        .iter()
        .map(|k| v[k].as_u64().unwrap_or(0))
        .sum::<u64>()
        + v["weights"]["bytes"].as_u64().unwrap_or(0)
        + kv["bytes"].as_u64().unwrap_or(0);
    assert_eq!(v["total_bytes"].as_u64(), Some(sum));
    assert_eq!(v["budget_bytes"], 8u64 << 30);
    assert!(["fits", "tight", "does_not_fit"].contains(&v["verdict"].as_str().unwrap_or("")));
    assert!(v["advice"].as_str().is_some_and(|a| !a.is_empty()));
}

#[test]
fn kv_bits_null_and_verdicts() {
    let m = fixture("xiilab__SmolLM2-135M-KoAlpaca-finetune");
    let m = m.to_str().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_slice(&mlxsup(&["inspect", m, "--json", "--budget", "8GiB"]).stdout)
            .unwrap_or_default();
    assert!(v["kv_cache"]["kv_bits"].is_null());
    assert_eq!(v["verdict"], "fits");
    let v: serde_json::Value =
        serde_json::from_slice(&mlxsup(&["inspect", m, "--json", "--budget", "100MB"]).stdout)
            .unwrap_or_default();
    assert_eq!(v["verdict"], "does_not_fit");
    assert!(
        v["advice"].as_str().unwrap_or("").contains("--quant-bits"),
        "{}",
        v["advice"]
    );
    let big = fixture("meta-llama__Meta-Llama-3-8B");
    let v: serde_json::Value = serde_json::from_slice(
        &mlxsup(&[
            "inspect",
            big.to_str().unwrap_or_default(),
            "--json",
            "--budget",
            "16GiB",
        ])
        .stdout,
    )
    .unwrap_or_default();
    assert_eq!(v["verdict"], "does_not_fit");
    assert!(
        v["advice"].as_str().unwrap_or("").contains("--context"),
        "{}",
        v["advice"]
    );
}

#[test]
fn bad_models_exit_5_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = tmp.path();
    let out = mlxsup(&["inspect", d.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        text(&out.stderr).contains("config.json"),
        "{}",
        text(&out.stderr)
    );

    std::fs::copy(
        fixture("meta-llama__Llama-3.2-1B").join("config.json"),
        d.join("config.json"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut shard = 400u64.to_le_bytes().to_vec();
    shard.extend_from_slice(br#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#);
    std::fs::write(d.join("model.safetensors"), &shard).unwrap_or_else(|e| panic!("{e}"));
    let out = mlxsup(&[
        "inspect",
        d.to_str().unwrap_or_default(),
        "--budget",
        "1GiB",
    ]);
    assert_eq!(out.status.code(), Some(5));
    let err = text(&out.stderr);
    assert!(
        err.contains("model.safetensors") && err.contains("past the end"),
        "{err}"
    );

    let out = mlxsup(&["inspect", "/nonexistent/model"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(text(&out.stderr).contains("/nonexistent/model"));
}

#[test]
fn config_only_folder_plans_before_download() {
    let m = fixture("meta-llama__Llama-3.2-1B");
    let out = mlxsup(&[
        "inspect",
        m.to_str().unwrap_or_default(),
        "--json",
        "--budget",
        "8GiB",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(v["weights"]["source"], "config");
    assert_eq!(v["kv_cache"]["context"], 32768);
    assert_eq!(v["context_capped"], true);
}

#[test]
fn usage_errors_exit_2() {
    let m = fixture("meta-llama__Llama-3.2-1B");
    let m = m.to_str().unwrap_or_default();
    for args in [
        vec!["inspect"],
        vec!["inspect", m, "--kv-bits", "3"],
        vec!["inspect", m, "--budget", "12 parsecs"],
        vec!["inspect", m, "--context", "0"],
        vec!["inspect", m, "--quant-bits", "7"],
        vec!["inspect", m, "--no-such-flag"],
    ] {
        let out = mlxsup(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}
