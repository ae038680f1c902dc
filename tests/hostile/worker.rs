//! The worker re-checks what it loads: spoken to directly over its protocol, with no
//! preflight in front, it refuses each hostile file with an error naming it and survives.
use std::path::Path;

use serde_json::json;

use super::templates::template;
use super::*;

use mlxsup_tests::start_worker;
use protocol::{
    frame, ChatMessage, FromWorker, GenerateRequest, LoadRequest, Prompt, Reply, Request, Sampling,
    ToWorker, WorkerErrorKind,
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
    load_then_sampling(m, prompt, Sampling::default())
}

fn load_then_sampling(
    m: &Path,
    prompt: Option<Prompt>,
    sampling: Sampling,
) -> (WorkerErrorKind, String) {
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
        device: protocol::Device::Default,
        compute: protocol::ComputeDtype::Native,
        kv_bits: None,
        activation: None,
        prefix_cache: 0,
    });
    let reply = match call(1, load) {
        Reply::Loaded(_) => {
            let gen = GenerateRequest {
                prompt: prompt.expect("the damaged model loaded"),
                max_tokens: 1,
                sampling,
                stop: vec![],
                fault: None,
                images: Vec::new(),
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

case!(worker_nan_temperature_is_a_bad_request, |m| {
    for (t, p) in [
        (f32::NAN, 1.0),
        (-1.0, 1.0),
        (f32::INFINITY, 1.0),
        (0.5, 2.0),
        (0.5, 0.0),
    ] {
        let sampling = Sampling {
            temperature: t,
            top_p: p,
            seed: Some(1),
        };
        let (kind, message) = load_then_sampling(m, Some(Prompt::Text("hi".into())), sampling);
        assert_eq!(kind, WorkerErrorKind::BadRequest, "{message}");
        assert!(message.contains("is not"), "{message}");
    }
});

case!(
    worker_token_ids_outside_the_vocabulary_are_a_bad_request,
    |m| {
        let (kind, message) = load_then(m, Some(Prompt::Tokens(vec![1, u32::MAX])));
        assert_eq!(kind, WorkerErrorKind::BadRequest, "{message}");
        assert!(message.contains("outside the vocabulary"), "{message}");
    }
);
