//! Files that are not regular files (c) and reads without a bound (d): FIFOs, devices,
//! directories, dangling links and sparse oversized files, as model files and as prompt
//! files.
use std::path::Path;

use super::*;

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
        "config.json is 1099511627776 bytes, over the 4194304-byte limit",
    );
});
case!(index_oversized, |m| {
    replace_with_sparse(&m.join("model.safetensors.index.json"), 1 << 40);
    inspect(m, 5, "over the 50331648-byte limit");
});
case!(tokenizer_config_oversized_run, |m| {
    replace_with_sparse(&m.join("tokenizer_config.json"), 1 << 30);
    run_refused(m, &[], 5, "over the 8388608-byte limit");
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

// --- files just under their caps, shaped to inflate when parsed: RSS stays bounded ------

/// `prefix` + `item,` repeated + `suffix`, `len` bytes in all (within a few bytes).
fn inflating(path: &Path, prefix: &str, item: &str, suffix: &str, len: usize) {
    let n = (len - prefix.len() - suffix.len()) / (item.len() + 1);
    let mut s = String::with_capacity(len);
    s.push_str(prefix);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(item);
    }
    s.push_str(suffix);
    std::fs::write(path, s).unwrap();
}

/// config.json with a `junk` array of `items` zeros (each `0,`: two bytes).
fn config_with_junk(m: &Path, items: usize) {
    let cfg = std::fs::read_to_string(m.join("config.json")).unwrap();
    let open = cfg.trim_end().trim_end_matches('}').to_string() + r#", "junk": ["#;
    let len = open.len() + 2 + 2 * items;
    inflating(&m.join("config.json"), &open, "0", "]}", len);
}

case!(config_at_its_byte_cap_of_tiny_values, |m| {
    // 2 million values in 4 MiB: refused by the value count before a tree is built.
    config_with_junk(m, (4 << 20) / 2 - 1000);
    inspect(m, 5, "config.json: it has more than 200000 JSON values");
});
case!(config_just_under_its_value_cap, |m| {
    config_with_junk(m, 199_000);
    inspect(m, 0, "qwen3");
});
case!(index_at_its_cap_of_tiny_entries, |m| {
    // ~32 MB of `"k":"f"` entries, under the 48 MiB cap: 5 times MAX_INDEX_ENTRIES,
    // stopped while parsing.
    let path = m.join("model.safetensors.index.json");
    let n = 2_500_000;
    let mut s = String::from(r#"{"weight_map":{"#);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("\"{i:x}\":\"f\""));
    }
    s.push_str("}}");
    std::fs::write(&path, s).unwrap();
    inspect(m, 5, "`weight_map` = more than 500000 entries");
});
case!(tokenizer_config_at_its_byte_cap_of_tiny_values, |m| {
    inflating(
        &m.join("tokenizer_config.json"),
        r#"{"chat_template": "{% for %}", "junk": ["#,
        "0",
        "]}",
        (8 << 20) - 16,
    );
    run_refused(
        m,
        &[],
        5,
        "tokenizer_config.json: it has more than 1000000 JSON values",
    );
});
case!(tokenizer_config_just_under_its_value_cap, |m| {
    // Valid and large, with a template that does not compile: the whole file is parsed
    // before the refusal.
    let open = r#"{"chat_template": "{% for %}", "junk": ["#;
    inflating(
        &m.join("tokenizer_config.json"),
        open,
        "0",
        "]}",
        open.len() + 2 + 2 * 990_000,
    );
    run_refused(m, &[], 5, "the chat template does not compile");
});
case!(generation_config_at_its_cap_of_tiny_values, |m| {
    inflating(
        &m.join("generation_config.json"),
        r#"{"eos_token_id": ["#,
        "0",
        "], x}",
        (4 << 20) - 16,
    );
    run_refused(
        m,
        &[],
        5,
        "generation_config.json: it has more than 200000 JSON values",
    );
});
case!(
    config_and_index_both_at_their_worst_stay_under_the_rss_bound,
    |m| {
        // Each just under its value or entry cap: all of it is read and kept.
        config_with_junk(m, 199_000);
        let mut s = String::from(r#"{"weight_map":{"#);
        for i in 0..499_999 {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!("\"{i:x}\":\"f\""));
        }
        s.push_str("}}");
        std::fs::write(m.join("model.safetensors.index.json"), s).unwrap();
        inspect(
            m,
            5,
            "index names shard `f`, which is missing from the folder",
        );
    }
);
case!(
    tokenizer_of_too_many_values_is_refused_before_parsing,
    |m| {
        // 10 MB of `0,`: under the byte cap, over MAX_TOKENIZER_VALUES; parsing it with the
        // tokenizers crate would take gigabytes.
        inflating(
            &m.join("tokenizer.json"),
            r#"{"junk": ["#,
            "0",
            "]}",
            10 << 20,
        );
        run_refused(
            m,
            &[],
            5,
            "tokenizer.json: it has more than 4000000 JSON values",
        );
    }
);
case!(
    shard_header_of_too_many_values_is_refused_before_parsing,
    |m| {
        // A 12 MB header of `0,` in its metadata: under the header byte cap, over its value cap.
        let json = format!(
            r#"{{"__metadata__":{{"x":[{}0]}}}}"#,
            "0,".repeat(6_000_000)
        );
        let mut b = (json.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(json.as_bytes());
        std::fs::write(m.join("model.safetensors"), b).unwrap();
        inspect(
            m,
            5,
            "model.safetensors: bad safetensors header: it has more than 2000000 JSON values",
        );
    }
);
