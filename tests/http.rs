//! The daemon's OpenAI-compatible HTTP front, driven by the real `openai` Python client
//! (installed into .venv by `make setup`; written by nobody here) and by curl-like raw
//! requests, against a real `mlxsup serve --http` with real workers and real MLX.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mlxsup_tests::daemon::{gen_args, http, openai, Daemon};
use serde_json::Value;

/// What `mlxsup generate` prints for the same request: (text, prompt tokens, generated).
fn generate(d: &Daemon, model: &str, prompt: &str, tokens: &str, chat: bool) -> (String, u64, u64) {
    let mut args = gen_args(model, prompt, tokens);
    if chat {
        args.push("--chat");
    }
    let out = d.cli(&args);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let done = &out.named("done")[0];
    (
        out.text(),
        done["prompt_tokens"].as_u64().unwrap(),
        done["generated_tokens"].as_u64().unwrap(),
    )
}

#[test]
fn chat_and_completions_streamed_or_not_equal_generate() {
    let (d, base) = http(&[]);
    let prompt = "The quick brown fox";
    let v = openai(&base, "basic", &["a", prompt, "12"]);
    let (chat, chat_prompt, chat_gen) = generate(&d, "a", prompt, "12", true);
    let (text, text_prompt, text_gen) = generate(&d, "a", prompt, "12", false);
    assert_eq!(v["chat"], chat.as_str(), "{v:#}");
    assert_eq!(v["chat_stream"], chat.as_str());
    assert_eq!(v["text"], text.as_str());
    assert_eq!(v["text_stream"], text.as_str());
    for (key, p, g) in [
        ("chat_usage", chat_prompt, chat_gen),
        ("chat_stream_usage", chat_prompt, chat_gen),
        ("text_usage", text_prompt, text_gen),
        ("text_stream_usage", text_prompt, text_gen),
    ] {
        assert_eq!(v[key]["prompt_tokens"], p, "{key}: {v:#}");
        assert_eq!(v[key]["completion_tokens"], g, "{key}");
        assert_eq!(v[key]["total_tokens"], p + g, "{key}");
    }
    assert_eq!(v["chat_finish"], "length");
    assert_eq!(v["chat_stream_finish"], "length");
    let models: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(models, ["a", "b", "c", "d"]);
}

#[test]
fn a_refusal_is_507_with_our_kind_and_no_retry() {
    let (_d, base) = http(&["--budget", "1MiB"]);
    let v = openai(&base, "refusal", &["a"]);
    assert_eq!(v["raised"], "APIStatusError", "{v:#}");
    assert_eq!(v["status"], 507);
    assert_eq!(v["body"]["type"], "insufficient_memory");
    assert_eq!(v["body"]["kind"], "insufficient_memory");
    assert_eq!(v["should_retry"], "false");
    assert!(
        v["body"]["advice"].as_str().unwrap().contains("--force"),
        "{v:#}"
    );
}

#[test]
fn a_crash_mid_stream_raises_api_error_at_once_and_the_next_request_is_served() {
    let (_d, base) = http(&["--allow-fault-injection"]);
    let v = openai(&base, "crash", &["a"]);
    assert_eq!(v["raised"], "APIError", "{v:#}");
    assert_eq!(v["kind"], "killed_by_os");
    assert_eq!(
        v["chunks_before"], 3,
        "every token before the death arrives"
    );
    let ms = v["latency_ms"].as_f64().unwrap();
    eprintln!("worker death → openai.APIError in the client: {ms:.1} ms");
    assert!(v["next_ok"].as_bool().unwrap());
}

#[test]
fn a_client_that_goes_away_cancels_its_request() {
    let (_d, base) = http(&[]);
    let v = openai(&base, "disconnect", &["a"]);
    assert_eq!(v["state"], "ready", "{v:#}");
    eprintln!(
        "client disconnect → worker ready in {:.1} ms",
        v["ready_ms"].as_f64().unwrap()
    );
    assert_eq!(v["next_tokens"], 4);
}

#[test]
fn sixteen_streaming_clients_all_complete_with_the_solo_text() {
    let (d, base) = http(&[]);
    let prompt = "Once upon a time";
    let want_a = generate(&d, "a", prompt, "16", true).0;
    let want_b = generate(&d, "b", prompt, "16", true).0;
    let v = openai(&base, "concurrent", &["a", "b", prompt, "16"]);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 16);
    for r in results {
        let want = if r["model"] == "a" { &want_a } else { &want_b };
        assert_eq!(r["text"], want.as_str(), "{r:#}");
    }
}

#[test]
fn bad_requests_name_the_field_and_the_key_is_checked() {
    let (_d, base) = http(&[]);
    let v = openai(&base, "errors", &["a"]);
    assert_eq!(v["unknown_model"][0], 404, "{v:#}");
    assert_eq!(v["unknown_model"][1], "model");
    assert_eq!(v["bad_temperature"][0], 400);
    assert_eq!(v["bad_temperature"][1], "temperature");
    assert_eq!(v["too_long"][0], 400, "{v:#}");
    assert_eq!(v["too_long"][1], "context_length_exceeded");
    assert_eq!(v["too_long"][2], "context_length_exceeded");
    assert_eq!(v["bad_json"][0], 400);
    assert_eq!(v["bad_json"][1], "body");
    let (_d, base) = http(&["--api-key", "s3cret"]);
    let v = openai(&base, "auth", &["a", "s3cret"]);
    assert_eq!(v["wrong_key"], 401, "{v:#}");
    assert_eq!(v["right_key"], 2);
}

#[test]
fn health_and_ps_answer_plain_http() {
    let (d, base) = http(&[]);
    let origin = base.trim_end_matches("/v1");
    let get = |path: &str| -> Value {
        use std::io::{Read, Write};
        let host = origin.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(host).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{path}: {head}"
        );
        serde_json::from_str(body).unwrap()
    };
    assert_eq!(get("/health")["status"], "ok");
    assert_eq!(d.cli(&gen_args("a", "hi", "2")).code, Some(0));
    let ps = get("/api/ps");
    assert_eq!(ps["models"][0]["state"], "ready", "{ps:#}");
    assert!(ps["models"][0]["footprint_bytes"].as_u64().unwrap() > 0);
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn image_url_data_urls_give_the_text_of_run_and_remote_urls_are_400() {
    let vl = tempfile::tempdir().unwrap();
    let model = vl.path().join("vl");
    let m = model.to_str().unwrap();
    let made = mlxsup_tests::mlxsup(&[
        "make-model",
        m,
        "--arch",
        "qwen2_5_vl",
        "--hidden",
        "128",
        "--layers",
        "4",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--intermediate",
        "256",
        "--vocab",
        "1024",
        "--seed",
        "7",
    ]);
    assert_eq!(made.code, Some(0), "{}", made.stderr);
    let png = vl.path().join("wide.png");
    image::ImageBuffer::from_fn(300, 200, |x, y| {
        image::Rgb(
            [0u32, 1, 2].map(|c| ((x * (3 + c) + y * 5 + c * 70 + (x * y) % 17) % 256) as u8),
        )
    })
    .save(&png)
    .unwrap();
    let prompt = "Describe the picture.";
    let run = mlxsup_tests::mlxsup(&[
        "run",
        m,
        "--image",
        png.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-tokens",
        "12",
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let text: String = run
        .named("token")
        .iter()
        .filter_map(|e| e["text"].as_str())
        .collect();
    let (d, base) = http(&["--models", vl.path().to_str().unwrap()]);
    let v = openai(&base, "image", &["vl", prompt, "12", png.to_str().unwrap()]);
    assert_eq!(v["text"], text.as_str(), "{v:#}");
    // And `mlxsup generate --image` through the daemon, by name (its folder from `ls`).
    let mut args = gen_args("vl", prompt, "12");
    args.extend(["--image", png.to_str().unwrap()]);
    let out = d.cli(&args);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.text(), text, "generate --image");
    assert_eq!(v["usage"]["completion_tokens"], 12, "{v:#}");
    assert_eq!(v["remote"][0], 400, "{v:#}");
    assert_eq!(v["remote"][1], "messages[0].content[0].image_url", "{v:#}");
    assert!(
        v["remote"][2]
            .as_str()
            .unwrap_or("")
            .contains("no outbound requests"),
        "{v:#}"
    );
    for key in ["truncated", "not_image"] {
        assert_eq!(v[key][0], 400, "{key}: {v:#}");
        assert_eq!(
            v[key][1], "messages[0].content[1].image_url",
            "{key}: {v:#}"
        );
    }
}

#[test]
fn images_that_do_not_fit_the_loaded_model_are_507() {
    let vl = tempfile::tempdir().unwrap();
    let m = vl.path().join("vl");
    let made = mlxsup_tests::mlxsup(&[
        "make-model",
        m.to_str().unwrap(),
        "--arch",
        "qwen2_5_vl",
        "--hidden",
        "128",
        "--layers",
        "2",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--intermediate",
        "256",
        "--vocab",
        "1024",
    ]);
    assert_eq!(made.code, Some(0), "{}", made.stderr);
    let png = |name: &str, w: u32, h: u32| {
        let p = vl.path().join(name);
        image::ImageBuffer::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
        })
        .save(&p)
        .unwrap();
        p.to_str().unwrap().to_string()
    };
    let small = png("small.png", 64, 64);
    let big: Vec<String> = (0..4)
        .map(|i| png(&format!("big{i}.png"), 1120, 840))
        .collect();
    // The daemon plans the text model at ~632 MiB (its KV cache and prefill at the default
    // context); the tower runs before the prefill, so images count only past that: four
    // 1120x840 images (4800 patches each) need ~1 GB of tower, over the 800 MiB budget.
    let (_d, base) = http(&[
        "--models",
        vl.path().to_str().unwrap(),
        "--budget",
        "800MiB",
    ]);
    let mut args = vec!["vl", small.as_str()];
    args.extend(big.iter().map(String::as_str));
    let v = openai(&base, "image_refusal", &args);
    assert_eq!(v["small"], 2, "{v:#}");
    assert_eq!(v["big"][0], 507, "{v:#}");
    assert_eq!(v["big"][1], "insufficient_memory", "{v:#}");
}

/// A raw HTTP/1.0 request on its own connection: (status, head, the connection to read
/// the rest of the body from, what was read of the body so far).
fn post(base: &str, path: &str, body: &Value, headers: &[(&str, &str)]) -> RawResponse {
    use std::io::{Read, Write};
    let host = base
        .trim_end_matches("/v1")
        .trim_start_matches("http://")
        .to_string();
    let mut s = std::net::TcpStream::connect(&host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.to_string();
    let mut req = format!(
        "POST /v1{path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let split = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the connection closed before the head: {got:?}");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    RawResponse {
        status,
        head,
        body: got[split + 4..].to_vec(),
        conn: s,
    }
}

struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
    conn: std::net::TcpStream,
}

impl RawResponse {
    /// Reads until `needle` is in the body (or the end), and returns the body so far.
    fn read_until(&mut self, needle: &str) -> String {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&self.body).contains(needle) {
            match self.conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.body.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// The whole body as JSON (a non-streamed answer).
    fn json(&mut self) -> Value {
        let text = self.read_until("\u{0}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// A streamed request for a model that is busy with another request (stalled in its
/// decode, so it stays busy) starts its stream with a token.
fn stalled_stream(base: &str) -> RawResponse {
    let mut r = post(
        base,
        "/completions",
        &serde_json::json!({"model": "a", "prompt": "hi", "max_tokens": 8, "stream": true}),
        &[("x-mlxsup-inject-fault", "stall@decode:2")],
    );
    assert_eq!(r.status, 200, "{}", r.head);
    r.read_until("\"text\"");
    r
}

/// Soak finding: a streamed request whose prompt and `max_tokens` pass the context is
/// refused 400 `context_length_exceeded` before any stream — when the model had to be
/// loaded for it, and when it waits behind a request that does not end (its prompt is
/// checked against the loaded model at once, not when its turn comes).
#[test]
fn a_streamed_prompt_over_the_context_is_400_before_the_stream_loaded_or_not() {
    let (d, base) = http(&["--allow-fault-injection"]);
    // A million tokens asked for pass the context the model loads at (and its maximum).
    let over =
        serde_json::json!({"model": "a", "prompt": "hi", "max_tokens": 1_000_000, "stream": true});
    assert!(d.ps().is_empty(), "nothing loaded yet: {:#?}", d.ps());
    let mut r = post(&base, "/completions", &over, &[]);
    assert_eq!(
        r.status,
        400,
        "{} {:?}",
        r.head,
        String::from_utf8_lossy(&r.body)
    );
    let e = r.json();
    assert_eq!(e["error"]["code"], "context_length_exceeded", "{e:#}");
    assert_eq!(e["error"]["type"], "context_length_exceeded", "{e:#}");
    assert_eq!(e["error"]["param"], "messages", "{e:#}");
    assert_eq!(r.header("x-should-retry").as_deref(), Some("false"));
    assert!(e["error"]["remedy"]["min_context"].as_u64().unwrap() > 1_000_000);
    // Busy with a request that stays in flight: the refusal still comes first.
    let busy = stalled_stream(&base);
    let mut r = post(&base, "/completions", &over, &[]);
    assert_eq!(
        r.status,
        400,
        "{} {:?}",
        r.head,
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    drop(busy);
}

/// Soak finding: requests cancelled because their model was unloaded fail with a kind,
/// `unloaded`: 503 with `Retry-After` for one that waited, one SSE error event for the
/// one that was streaming.
#[test]
fn requests_of_a_model_that_is_unloaded_fail_unloaded_with_retry_after() {
    let (d, base) = http(&["--allow-fault-injection"]);
    let mut busy = stalled_stream(&base);
    let waiting = {
        let base = base.clone();
        std::thread::spawn(move || {
            let mut r = post(
                &base,
                "/completions",
                &serde_json::json!({"model": "a", "prompt": "hi", "max_tokens": 2}),
                &[],
            );
            let retry = r.header("retry-after");
            (r.status, retry, r.json())
        })
    };
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while d.model("a")["queued"] != 1 {
        assert!(
            std::time::Instant::now() < until,
            "never queued: {:#?}",
            d.ps()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.cli(&["unload", "a"]).code, Some(0));
    let (status, retry, e) = waiting.join().unwrap();
    assert_eq!(status, 503, "{e:#}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(e["error"]["type"], "unloaded", "{e:#}");
    assert_eq!(e["error"]["kind"], "unloaded", "{e:#}");
    let stream = busy.read_until("[DONE]");
    assert!(stream.contains("\"kind\":\"unloaded\""), "{stream}");
    // Sent again, it loads the model again.
    let mut again = post(
        &base,
        "/completions",
        &serde_json::json!({"model": "a", "prompt": "hi", "max_tokens": 2}),
        &[],
    );
    let status = again.status;
    assert_eq!(status, 200, "{:#}", again.json());
}

/// A folder whose `model_type` the worker does not run: a copy of the tiny model named
/// `mamba` (the estimator still plans it as a generic decoder).
fn unsupported_family() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(mlxsup_tests::tiny_model()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("\"qwen3\"", "\"mamba\""),
    )
    .unwrap();
    dir
}

/// Issue 21: a family the worker cannot run is refused by the daemon before a worker is
/// spawned — HTTP 400 naming it and the supported list, `load` exit 5 — where it used to
/// fail in the worker (`load_failed`, HTTP 500 / exit 4).
#[test]
fn an_unsupported_family_is_refused_before_a_worker_runs() {
    use std::io::{Read, Write};
    let (d, base) = http(&[]);
    let model = unsupported_family();
    let path = model.path().to_str().unwrap();
    let host = base
        .trim_end_matches("/v1")
        .trim_start_matches("http://")
        .to_string();
    let body = serde_json::json!({"model": path, "max_tokens": 2,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let mut s = std::net::TcpStream::connect(&host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(" 400 "), "{resp}");
    let v: Value = serde_json::from_str(body).unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"mamba\""), "{v:#}");
    assert!(message.contains("supported: llama, mistral"), "{v:#}");

    let out = d.cli(&["load", path, "--json"]);
    assert_eq!(out.code, Some(5), "{} {}", out.stdout, out.stderr);
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("mamba"),
        "{} {}",
        out.stdout,
        out.stderr
    );
    for m in d.ps() {
        assert!(m["pid"].is_null(), "a worker was spawned: {m:#}");
    }
}
