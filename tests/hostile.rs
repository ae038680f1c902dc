//! Hostile and careless input against the real binaries: implausible numbers in the
//! config, files that are FIFOs, devices, directories, oversized or garbage, index
//! entries escaping the folder, runaway templates, bad sampling arguments.
//!
//! Every case asserts the documented exit code and a message naming the problem, no
//! "panicked" text, an end within a generous hang guard (not a timing test) and a peak
//! RSS under a bound (from `wait4`). Cases the preflight must catch run with
//! `MLXSUP_WORKER` pointing nowhere: were a worker spawned, the exit code would differ.
#![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use mlxsup_tests::{mlxsup_guarded, tiny_model, GuardedRun};
use serde_json::{json, Value};

/// The hang guard: far above any case's real duration.
const HANG_GUARD: Duration = Duration::from_secs(60);
/// Peak RSS allowed to any case.
const RSS_BOUND: u64 = 200 << 20;
/// A worker path that does not exist: a case that spawns one cannot end in exit 5.
const NO_WORKER: (&str, &str) = ("MLXSUP_WORKER", "/nonexistent/mlxsup-worker");

/// A fresh copy of the tiny model, to be damaged.
fn model() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m");
    std::fs::create_dir(&m).unwrap();
    for e in std::fs::read_dir(tiny_model()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), m.join(e.file_name())).unwrap();
    }
    (d, m)
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

fn config(m: &Path, field: &str, value: Value) {
    edit_json(&m.join("config.json"), |c| c[field] = value);
}

fn replace_with_fifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn replace_with_link(path: &Path, target: &str) {
    let _ = std::fs::remove_file(path);
    std::os::unix::fs::symlink(target, path).unwrap();
}

fn replace_with_dir(path: &Path) {
    let _ = std::fs::remove_file(path);
    std::fs::create_dir(path).unwrap();
}

/// A sparse file of `len` bytes (never written, never read by a correct reader).
fn replace_with_sparse(path: &Path, len: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
}

fn garbage(path: &Path) {
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(path, bytes).unwrap();
}

/// Runs `mlxsup ARGS` under the guard and checks what every case must hold.
fn check(args: &[&str], env: &[(&str, &str)], code: i32, needle: &str) -> GuardedRun {
    let r = mlxsup_guarded(args, env, HANG_GUARD);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(!r.timed_out, "{args:?} hung; killed after {:?}", r.elapsed);
    assert!(!all.contains("panicked"), "{args:?} panicked:\n{all}");
    assert_eq!(r.code, Some(code), "{args:?}:\n{all}");
    assert!(
        r.peak_rss_bytes < RSS_BOUND,
        "{args:?}: peak RSS {} bytes",
        r.peak_rss_bytes
    );
    assert!(all.contains(needle), "{args:?}: no {needle:?} in:\n{all}");
    r
}

/// `inspect` of the damaged model.
fn inspect(m: &Path, code: i32, needle: &str) {
    check(&["inspect", m.to_str().unwrap()], &[], code, needle);
}

/// `run` of the damaged model, which the preflight must refuse: no worker exists.
fn run_refused(m: &Path, extra: &[&str], code: i32, needle: &str) {
    let mut args = vec!["run", m.to_str().unwrap(), "--max-tokens", "1"];
    args.extend_from_slice(extra);
    check(&args, &[NO_WORKER], code, needle);
}

/// `run` with a real worker.
fn run_real(m: &Path, extra: &[&str], code: i32, needle: &str) {
    let mut args = vec!["run", m.to_str().unwrap(), "--max-tokens", "1"];
    args.extend_from_slice(extra);
    let r = check(&args, &[], code, needle);
    // The RSS bound means something only if the measurement does.
    assert!(
        r.peak_rss_bytes > 1 << 20,
        "peak RSS {} bytes",
        r.peak_rss_bytes
    );
}

macro_rules! case {
    ($name:ident, |$m:ident| $body:block) => {
        #[test]
        fn $name() {
            let (_keep, $m) = model();
            let $m: &Path = &$m;
            $body
        }
    };
}

const U64_MAX: u64 = u64::MAX;

// --- (a) layer counts that sized a per-layer Vec -------------------------------------

case!(layers_u64_max_inspect, |m| {
    config(m, "num_hidden_layers", json!(U64_MAX));
    inspect(
        m,
        5,
        "`num_hidden_layers` = 18446744073709551615 is outside the accepted range 1..=1024",
    );
});
case!(layers_u64_max_run, |m| {
    config(m, "num_hidden_layers", json!(U64_MAX));
    run_refused(
        m,
        &[],
        5,
        "config.json: `num_hidden_layers` = 18446744073709551615",
    );
});
case!(layers_1e12_inspect, |m| {
    config(m, "num_hidden_layers", json!(1_000_000_000_000u64));
    inspect(m, 5, "`num_hidden_layers` = 1000000000000");
});
case!(layers_1e9_run, |m| {
    config(m, "num_hidden_layers", json!(1_000_000_000u64));
    run_refused(m, &[], 5, "`num_hidden_layers` = 1000000000");
});
case!(layers_zero, |m| {
    config(m, "num_hidden_layers", json!(0));
    inspect(m, 5, "accepted range 1..=1024");
});

// --- (b) widths that wrapped or were truncated ---------------------------------------

case!(hidden_u64_max, |m| {
    config(m, "hidden_size", json!(U64_MAX));
    inspect(
        m,
        5,
        "`hidden_size` = 18446744073709551615 is outside the accepted range 1..=131072",
    );
});
case!(intermediate_u64_max, |m| {
    config(m, "intermediate_size", json!(U64_MAX));
    inspect(m, 5, "`intermediate_size` = 18446744073709551615");
});
case!(hidden_2_32_plus_128_run, |m| {
    config(m, "hidden_size", json!((1u64 << 32) + 128));
    run_refused(m, &[], 5, "`hidden_size` = 4294967424");
});
case!(vocab_u64_max_run, |m| {
    config(m, "vocab_size", json!(U64_MAX));
    run_refused(m, &[], 5, "`vocab_size` = 18446744073709551615");
});
case!(heads_huge, |m| {
    config(m, "num_attention_heads", json!(1u64 << 40));
    inspect(m, 5, "`num_attention_heads` = 1099511627776");
});
case!(intermediate_negative, |m| {
    config(m, "intermediate_size", json!(-5));
    inspect(m, 5, "`intermediate_size` = -5");
});
case!(hidden_float_huge, |m| {
    config(m, "hidden_size", json!(1e300));
    inspect(m, 5, "`hidden_size` = 1e+300");
});
case!(hidden_fractional, |m| {
    config(m, "hidden_size", json!(64.5));
    inspect(m, 5, "`hidden_size` = 64.5");
});
case!(head_dim_huge_run, |m| {
    config(m, "head_dim", json!(1u64 << 33));
    run_refused(m, &[], 5, "`head_dim` = 8589934592");
});
case!(kv_heads_huge_run, |m| {
    config(m, "num_key_value_heads", json!(U64_MAX));
    run_refused(m, &[], 5, "`num_key_value_heads`");
});
case!(rope_theta_negative_run, |m| {
    config(m, "rope_theta", json!(-1.0));
    run_refused(m, &[], 5, "`rope_theta` = -1.0");
});
case!(eos_token_id_past_u32_run, |m| {
    config(m, "eos_token_id", json!([509, 4294967301u64]));
    run_refused(m, &[], 5, "`eos_token_id` = 4294967301");
});
case!(max_positions_huge, |m| {
    config(m, "max_position_embeddings", json!(U64_MAX));
    inspect(m, 5, "`max_position_embeddings`");
});
case!(sliding_window_huge, |m| {
    config(m, "sliding_window", json!(1e30));
    inspect(m, 5, "`sliding_window`");
});
case!(quant_bits_99, |m| {
    config(m, "quantization", json!({"bits": 99, "group_size": 64}));
    inspect(
        m,
        5,
        "`quantization.bits` = 99 is outside the accepted range 1..=16",
    );
});
case!(quant_group_zero, |m| {
    config(m, "quantization", json!({"bits": 4, "group_size": 0}));
    inspect(m, 5, "`quantization.group_size` = 0");
});
case!(text_config_hidden_huge, |m| {
    config(m, "text_config", json!({"hidden_size": U64_MAX}));
    inspect(m, 5, "`text_config.hidden_size`");
});
case!(vision_config_image_size_huge, |m| {
    config(
        m,
        "vision_config",
        json!({"hidden_size": 64, "image_size": U64_MAX}),
    );
    inspect(m, 5, "`vision_config.image_size`");
});

// --- (c) FIFOs, devices, directories instead of files --------------------------------

case!(config_fifo_inspect, |m| {
    replace_with_fifo(&m.join("config.json"));
    inspect(
        m,
        5,
        "config.json: config.json is a FIFO, not a regular file",
    );
});
case!(config_fifo_run, |m| {
    replace_with_fifo(&m.join("config.json"));
    run_refused(m, &[], 5, "is a FIFO");
});
case!(config_dev_zero, |m| {
    replace_with_link(&m.join("config.json"), "/dev/zero");
    inspect(m, 5, "config.json is a character device");
});
case!(config_directory, |m| {
    replace_with_dir(&m.join("config.json"));
    inspect(m, 5, "config.json is a directory");
});
case!(config_missing, |m| {
    std::fs::remove_file(m.join("config.json")).unwrap();
    inspect(m, 5, "missing config.json");
});
case!(config_dangling_symlink, |m| {
    replace_with_link(&m.join("config.json"), "/nonexistent/config.json");
    inspect(m, 5, "config.json is missing");
});
case!(config_symlink_to_a_regular_file_is_fine, |m| {
    let elsewhere = m.parent().unwrap().join("real-config.json");
    std::fs::rename(m.join("config.json"), &elsewhere).unwrap();
    replace_with_link(&m.join("config.json"), elsewhere.to_str().unwrap());
    inspect(m, 0, "qwen3");
});
case!(index_fifo_inspect, |m| {
    replace_with_fifo(&m.join("model.safetensors.index.json"));
    inspect(m, 5, "model.safetensors.index.json is a FIFO");
});
case!(shard_directory_inspect, |m| {
    replace_with_dir(&m.join("model.safetensors"));
    inspect(m, 5, "model.safetensors: the shard is a directory");
});
case!(shard_fifo_inspect, |m| {
    replace_with_fifo(&m.join("model.safetensors"));
    inspect(m, 5, "the shard is a FIFO");
});
case!(shard_dev_zero, |m| {
    replace_with_link(&m.join("model.safetensors"), "/dev/zero");
    inspect(m, 5, "the shard is a character device");
});
case!(tokenizer_fifo_run, |m| {
    replace_with_fifo(&m.join("tokenizer.json"));
    run_refused(m, &[], 5, "tokenizer.json: tokenizer.json is a FIFO");
});
case!(tokenizer_config_fifo_run, |m| {
    replace_with_fifo(&m.join("tokenizer_config.json"));
    run_refused(m, &[], 5, "tokenizer_config.json is a FIFO");
});
case!(generation_config_fifo_run, |m| {
    replace_with_fifo(&m.join("generation_config.json"));
    run_refused(m, &[], 5, "generation_config.json is a FIFO");
});
case!(chat_template_fifo_run, |m| {
    edit_json(&m.join("tokenizer_config.json"), |t| {
        t.as_object_mut().unwrap().remove("chat_template");
    });
    replace_with_fifo(&m.join("chat_template.jinja"));
    run_refused(m, &["--chat"], 5, "chat_template.jinja is a FIFO");
});
case!(tokenizer_directory_run, |m| {
    replace_with_dir(&m.join("tokenizer.json"));
    run_refused(m, &[], 5, "tokenizer.json is a directory");
});
case!(model_path_is_a_fifo, |m| {
    let p = m.parent().unwrap().join("fifo-model");
    replace_with_fifo(&p);
    check(
        &["inspect", p.to_str().unwrap()],
        &[],
        5,
        "not a model directory",
    );
});
case!(model_path_is_a_file, |m| {
    check(
        &["inspect", m.join("config.json").to_str().unwrap()],
        &[],
        5,
        "not a model directory",
    );
});
case!(model_path_missing, |m| {
    let p = m.join("nope");
    run_refused(&p, &[], 5, "not a model directory");
});

// --- (d) unbounded reads ---------------------------------------------------------------

case!(tokenizer_dev_zero_run, |m| {
    replace_with_link(&m.join("tokenizer.json"), "/dev/zero");
    run_refused(m, &[], 5, "tokenizer.json is a character device");
});
case!(tokenizer_oversized_run, |m| {
    replace_with_sparse(&m.join("tokenizer.json"), 1 << 40);
    run_refused(m, &[], 5, "bytes, over the 67108864-byte limit");
});
case!(config_oversized, |m| {
    replace_with_sparse(&m.join("config.json"), 1 << 40);
    inspect(
        m,
        5,
        "config.json is 1099511627776 bytes, over the 16777216-byte limit",
    );
});
case!(index_oversized, |m| {
    replace_with_sparse(&m.join("model.safetensors.index.json"), 1 << 40);
    inspect(m, 5, "over the 67108864-byte limit");
});
case!(tokenizer_config_oversized_run, |m| {
    replace_with_sparse(&m.join("tokenizer_config.json"), 1 << 30);
    run_refused(m, &[], 5, "over the 16777216-byte limit");
});
case!(prompt_file_dev_zero, |m| {
    run_refused(
        m,
        &["--prompt-file", "/dev/zero"],
        2,
        "/dev/zero: the prompt file is a character device",
    );
});
case!(prompt_file_fifo, |m| {
    let p = m.parent().unwrap().join("prompt");
    replace_with_fifo(&p);
    run_refused(
        m,
        &["--prompt-file", p.to_str().unwrap()],
        2,
        "the prompt file is a FIFO",
    );
});
case!(prompt_file_directory, |m| {
    run_refused(
        m,
        &["--prompt-file", m.to_str().unwrap()],
        2,
        "the prompt file is a directory",
    );
});
case!(prompt_file_missing, |m| {
    let p = m.join("no-prompt.txt");
    run_refused(
        m,
        &["--prompt-file", p.to_str().unwrap()],
        2,
        "the prompt file is missing",
    );
});
case!(prompt_file_oversized, |m| {
    let p = m.parent().unwrap().join("prompt");
    replace_with_sparse(&p, 17 << 20);
    run_refused(
        m,
        &["--prompt-file", p.to_str().unwrap()],
        2,
        "over the 16777216-byte limit",
    );
});
case!(prompt_file_not_utf8, |m| {
    let p = m.parent().unwrap().join("prompt");
    std::fs::write(&p, [0xff, 0xfe, 0x00]).unwrap();
    run_refused(
        m,
        &["--prompt-file", p.to_str().unwrap()],
        2,
        "the prompt file is not UTF-8",
    );
});

// --- (f) templates that never end --------------------------------------------------------

fn template(m: &Path, t: &str) {
    edit_json(&m.join("tokenizer_config.json"), |c| {
        c["chat_template"] = json!(t)
    });
}

case!(template_nested_range_loops, |m| {
    template(
        m,
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    );
    run_refused(
        m,
        &["--chat"],
        5,
        "tokenizer_config.json: cannot render the chat template",
    );
});
case!(template_endless_output, |m| {
    template(
        m,
        "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
    );
    run_refused(m, &["--chat"], 5, "the rendered prompt passed");
});
case!(template_does_not_compile, |m| {
    template(m, "{% for %}");
    run_refused(m, &["--chat"], 5, "the chat template does not compile");
});
case!(template_jinja_does_not_compile, |m| {
    edit_json(&m.join("tokenizer_config.json"), |t| {
        t.as_object_mut().unwrap().remove("chat_template");
    });
    std::fs::write(m.join("chat_template.jinja"), "{{ }").unwrap();
    run_refused(
        m,
        &["--chat"],
        5,
        "chat_template.jinja: the chat template does not compile",
    );
});
case!(template_deep_recursion, |m| {
    template(m, "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
    run_refused(m, &["--chat"], 5, "recursion limit exceeded");
});

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

// --- (h) arguments and index entries ---------------------------------------------------

case!(temp_negative, |m| {
    run_refused(m, &["--temp=-1"], 2, "not a finite temperature");
});
case!(temp_nan, |m| {
    run_refused(m, &["--temp", "NaN"], 2, "not a finite temperature");
});
case!(temp_infinite, |m| {
    run_refused(m, &["--temp", "inf"], 2, "not a finite temperature");
});
case!(top_p_two, |m| {
    run_refused(m, &["--top-p", "2"], 2, "is not in (0, 1]");
});
case!(top_p_zero, |m| {
    run_refused(m, &["--top-p", "0"], 2, "is not in (0, 1]");
});
case!(top_p_nan, |m| {
    run_refused(m, &["--top-p", "NaN"], 2, "is not in (0, 1]");
});
case!(prefill_chunk_zero, |m| {
    run_refused(m, &["--prefill-chunk", "0"], 2, "--prefill-chunk");
});
case!(context_zero, |m| {
    run_refused(m, &["--context", "0"], 2, "--context");
});
case!(context_u64_max_is_refused_not_overflowed, |m| {
    run_refused(m, &["--context", "18446744073709551615"], 3, "does not fit");
});
case!(index_entry_escaping_the_folder, |m| {
    std::fs::write(
        m.join("model.safetensors.index.json"),
        r#"{"weight_map":{"model.embed_tokens.weight":"../../../../etc/passwd"}}"#,
    )
    .unwrap();
    inspect(
        m,
        5,
        "\"../../../../etc/passwd\", which is not a plain file name inside the model folder",
    );
});
case!(index_entry_absolute, |m| {
    std::fs::write(
        m.join("model.safetensors.index.json"),
        r#"{"weight_map":{"a":"/etc/passwd"}}"#,
    )
    .unwrap();
    run_refused(m, &[], 5, "not a plain file name");
});
case!(index_total_size_negative, |m| {
    std::fs::write(
        m.join("model.safetensors.index.json"),
        r#"{"metadata":{"total_size":-5},"weight_map":{"a":"model.safetensors"}}"#,
    )
    .unwrap();
    inspect(
        m,
        5,
        "`metadata.total_size` = -5 is outside the accepted range",
    );
});

// --- controls: the undamaged model works, with a real worker ---------------------------

case!(control_run, |m| {
    run_real(m, &[], 0, "generated");
});
case!(control_chat_run, |m| {
    run_real(
        m,
        &["--chat", "--temp", "0.7", "--top-p", "0.9", "--seed", "1"],
        0,
        "generated",
    );
});
case!(control_prompt_file, |m| {
    let p = m.parent().unwrap().join("prompt.txt");
    std::fs::write(&p, "Hello there").unwrap();
    run_real(m, &["--prompt-file", p.to_str().unwrap()], 0, "generated");
});

// --- the worker re-checks what it loads (spoken to directly, no preflight) -------------

mod worker {
    use super::*;
    use mlxsup_tests::start_worker;
    use protocol::{
        frame, ChatMessage, FromWorker, GenerateRequest, LoadRequest, Prompt, Reply, Request,
        Sampling, ToWorker, WorkerErrorKind,
    };

    /// The worker's peak RSS so far (`VmHWM`), in bytes.
    fn peak_rss(pid: u32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb * 1024
    }

    /// Loads `m` (and, if it loads, generates `prompt`) in a fresh worker; returns the
    /// reply that was not a success. The worker must answer within the hang guard, stay
    /// under the RSS bound, and still be alive to shut down cleanly.
    fn load_then(m: &Path, prompt: Option<Prompt>) -> (WorkerErrorKind, String) {
        let (mut child, mut stream, _dir, _) = start_worker();
        stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
        let mut call = |id, body| {
            frame::write_sync(&mut stream, &ToWorker::Request { id, body }).unwrap();
            loop {
                match frame::read_sync::<FromWorker>(&mut stream) {
                    Ok(Some(FromWorker::Reply { id: rid, body })) if rid == id => return body,
                    Ok(Some(_)) => {}
                    other => panic!("the worker hung or died: {other:?}"),
                }
            }
        };
        let load = Request::Load(LoadRequest {
            model_dir: m.to_str().unwrap().into(),
            limits: Default::default(),
            prefill_chunk: 64,
            telemetry_interval_ms: 1000,
            fault: None,
        });
        let reply = match call(1, load) {
            Reply::Loaded(_) => {
                let gen = GenerateRequest {
                    prompt: prompt.expect("the damaged model loaded"),
                    max_tokens: 1,
                    sampling: Sampling {
                        temperature: 0.0,
                        top_p: 1.0,
                        seed: None,
                    },
                    stop: vec![],
                    fault: None,
                };
                call(2, Request::Generate(gen))
            }
            other => other,
        };
        let rss = peak_rss(child.id());
        let _ = frame::write_sync(&mut stream, &ToWorker::Shutdown);
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "the worker did not shut down cleanly: {status:?}"
        );
        assert!(rss < RSS_BOUND, "worker peak RSS {rss} bytes");
        match reply {
            Reply::Error(e) => {
                assert!(!e.message.contains("panicked"), "{}", e.message);
                (e.kind, e.message)
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn load_failed(m: &Path, needle: &str) {
        let (kind, message) = load_then(m, None);
        assert_eq!(kind, WorkerErrorKind::LoadFailed, "{message}");
        assert!(message.contains(needle), "no {needle:?} in {message}");
    }

    case!(worker_hidden_2_32_plus_128, |m| {
        config(m, "hidden_size", json!((1u64 << 32) + 128));
        load_failed(
            m,
            "`hidden_size` = 4294967424 is outside the accepted range",
        );
    });
    case!(worker_layers_u64_max, |m| {
        config(m, "num_hidden_layers", json!(U64_MAX));
        load_failed(m, "`num_hidden_layers` = 18446744073709551615");
    });
    case!(worker_tokenizer_fifo, |m| {
        replace_with_fifo(&m.join("tokenizer.json"));
        load_failed(m, "tokenizer.json is a FIFO");
    });
    case!(worker_tokenizer_dev_zero, |m| {
        replace_with_link(&m.join("tokenizer.json"), "/dev/zero");
        load_failed(m, "tokenizer.json is a character device");
    });
    case!(worker_generation_config_fifo, |m| {
        replace_with_fifo(&m.join("generation_config.json"));
        load_failed(m, "generation_config.json is a FIFO");
    });
    case!(worker_tokenizer_config_fifo, |m| {
        replace_with_fifo(&m.join("tokenizer_config.json"));
        load_failed(m, "tokenizer_config.json is a FIFO");
    });
    case!(worker_config_fifo, |m| {
        replace_with_fifo(&m.join("config.json"));
        load_failed(m, "config.json is a FIFO");
    });
    case!(worker_index_escaping_the_folder, |m| {
        std::fs::write(
            m.join("model.safetensors.index.json"),
            r#"{"weight_map":{"model.embed_tokens.weight":"../../../../etc/passwd"}}"#,
        )
        .unwrap();
        load_failed(m, "not a plain file name");
    });
    case!(worker_shard_header_garbage, |m| {
        garbage(&m.join("model.safetensors"));
        load_failed(m, "bad safetensors header");
    });
    case!(worker_runaway_template_is_a_bad_request, |m| {
        template(
            m,
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        );
        let chat = Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        }]);
        let (kind, message) = load_then(m, Some(chat));
        assert_eq!(kind, WorkerErrorKind::BadRequest, "{message}");
        assert!(
            message.contains("tokenizer_config.json: cannot render"),
            "{message}"
        );
        assert!(message.contains("fuel"), "{message}");
    });
}
