//! The prefix cache end to end (issue 22): a real `mlxsup serve --http`, real workers,
//! real MLX, the real `openai` client. A chat resent whole every turn reuses the earlier
//! turns' KV (`usage.prompt_tokens_details.cached_tokens`, streamed usage too) and
//! answers exactly as a daemon without the cache; `ps` shows the cache's bytes and hit
//! rate; `--prefix-cache off` and a bound smaller than an entry cache nothing; a
//! sliding-window model past its window answers the same with the cache as without.
#![allow(clippy::unwrap_used)]

use mlxsup_tests::{
    daemon::{http, openai},
    mlxsup,
};
use serde_json::Value;

fn ints(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

const PROMPT: &str = "Write a short story about a lighthouse keeper and the sea.";

#[test]
fn later_turns_report_cached_tokens_and_answer_as_without_the_cache() {
    let (_d, base) = http(&[]);
    let (_off, off_base) = http(&["--prefix-cache", "off"]);
    let v = openai(&base, "multiturn", &["a", PROMPT, "12", "3"]);
    let w = openai(&off_base, "multiturn", &["a", PROMPT, "12", "3"]);
    eprintln!("cached per turn: {} of {}", v["cached"], v["prompt_tokens"]);
    assert_eq!(
        v["texts"], w["texts"],
        "greedy answers with and without the cache"
    );
    assert_eq!(v["completion"], w["completion"]);
    assert_eq!(v["prompt_tokens"], w["prompt_tokens"]);
    let (cached, prompt) = (ints(&v["cached"]), ints(&v["prompt_tokens"]));
    assert_eq!(cached[0], 0, "nothing is cached before the first turn");
    for t in 1..cached.len() {
        // Every earlier turn's prompt is a prefix of this one's (the template renders the
        // history the same way): at least that much is reused, never the whole prompt.
        assert!(
            cached[t] >= prompt[t - 1] && cached[t] < prompt[t],
            "turn {}: {cached:?} of {prompt:?}",
            t + 1
        );
    }
    let completion = ints(&v["completion_cached"]);
    assert_eq!(completion[0], 0, "a new prompt: {v:#}");
    assert!(completion[1] > 0, "the continuation reuses it: {v:#}");
    assert_eq!(ints(&w["cached"]), [0, 0, 0], "--prefix-cache off");
    assert_eq!(ints(&w["completion_cached"]), [0, 0]);
    // `ps`: the cache's bytes, bound and hit rate (3 hits in 5 generations).
    let ps = &v["ps"][0];
    assert!(ps["prefix_cache_bytes"].as_u64().unwrap() > 0, "{ps:#}");
    let limit = ps["prefix_cache_limit_bytes"].as_u64().unwrap();
    assert!(limit >= ps["prefix_cache_bytes"].as_u64().unwrap());
    assert_eq!(ps["prefix_cache_hit_rate"].as_f64().unwrap(), 3.0 / 5.0);
    let off = &w["ps"][0];
    assert_eq!(off["prefix_cache_limit_bytes"], 0, "{off:#}");
    assert_eq!(off["prefix_cache_bytes"], 0);
    assert_eq!(off["prefix_cache_hit_rate"], Value::Null);
}

#[test]
fn a_bound_smaller_than_an_entry_caches_nothing() {
    let (_d, base) = http(&["--prefix-cache", "1K"]);
    let v = openai(&base, "multiturn", &["a", PROMPT, "8", "2"]);
    assert_eq!(ints(&v["cached"]), [0, 0], "{v:#}");
    assert_eq!(ints(&v["completion_cached"]), [0, 0]);
    let ps = &v["ps"][0];
    assert_eq!(ps["prefix_cache_limit_bytes"], 1024, "{ps:#}");
    assert_eq!(ps["prefix_cache_bytes"], 0);
}

/// A tiny mistral whose every layer slides over `window` tokens.
fn sliding_model(dir: &std::path::Path, window: &str) -> String {
    let model = dir.join(format!("mistral-w{window}"));
    let m = model.to_str().unwrap();
    let made = mlxsup(&[
        "make-model",
        m,
        "--arch",
        "mistral",
        "--sliding-window",
        window,
        "--hidden",
        "64",
        "--layers",
        "2",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--intermediate",
        "128",
        "--vocab",
        "512",
    ]);
    assert_eq!(made.code, Some(0), "{}", made.stderr);
    m.to_string()
}

#[test]
fn a_sliding_window_model_answers_the_same_with_the_cache_past_its_window_and_within() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, base) = http(&[]);
    let (_off, off_base) = http(&["--prefix-cache", "off"]);
    // Past the window: the rings have wrapped, so an entry is reused only when the new
    // prompt extends all of it, never rewound.
    let m = sliding_model(dir.path(), "8");
    let v = openai(&base, "multiturn", &[&m, PROMPT, "12", "3"]);
    let w = openai(&off_base, "multiturn", &[&m, PROMPT, "12", "3"]);
    let prompt = ints(&v["prompt_tokens"]);
    assert!(
        prompt[0] > 8,
        "the prompt alone is past the window: {prompt:?}"
    );
    eprintln!(
        "sliding window 8: cached per turn {} of {prompt:?}",
        v["cached"]
    );
    assert_eq!(v["texts"], w["texts"], "{v:#}\n{w:#}");
    assert_eq!(v["completion"], w["completion"]);
    // Within the window (a ring that has not wrapped rewinds): reused, same answers.
    let m = sliding_model(dir.path(), "512");
    let v = openai(&base, "multiturn", &[&m, PROMPT, "12", "3"]);
    let w = openai(&off_base, "multiturn", &[&m, PROMPT, "12", "3"]);
    let (cached, prompt) = (ints(&v["cached"]), ints(&v["prompt_tokens"]));
    eprintln!("sliding window 512: cached per turn {cached:?} of {prompt:?}");
    assert!(
        cached[1] >= prompt[0] && cached[2] >= prompt[1],
        "{cached:?} of {prompt:?}"
    );
    assert_eq!(v["texts"], w["texts"], "{v:#}\n{w:#}");
    assert_eq!(v["completion"], w["completion"]);
}
