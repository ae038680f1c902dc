//! `tokenizer.json` and `tokenizer_config.json` from a GGUF file's tokenizer metadata:
//! byte-level BPE (`tokenizer.ggml.model = gpt2`, with the pre-tokenizer its
//! `tokenizer.ggml.pre` names) or SentencePiece BPE (`llama`: merges derived from the
//! pieces and scores, byte fallback), with token types, special ids and chat template.
use estimate::gguf::{GgufHeader, MetaValue};
use serde_json::{json, Map, Value};

/// GGUF token types (llama.cpp's `llama_token_type`).
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;
const BYTE: i64 = 6;

/// Split regexes (the GPT-2 one is ByteLevel's own, `use_regex`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// The pre-tokenizer of a `tokenizer.ggml.pre` value, as Hugging Face writes it.
fn pre_tokenizer(pre: &str) -> Result<Value, String> {
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        // SmolLM: single digits, then the GPT-2 split.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama-bpe" | "llama3" | "smaug-bpe" => json!({"type": "Sequence", "pretokenizers": [
            split(LLAMA3_REGEX), byte_level(false)]}),
        "qwen2" | "qwen35" => json!({"type": "Sequence", "pretokenizers": [
            split(QWEN2_REGEX), byte_level(false)]}),
        other => {
            return Err(format!(
                "tokenizer pre-type {other:?} is not supported yet (supported: default, gpt2, smollm, llama-bpe, qwen2)"
            ))
        }
    })
}

/// Merges for a SentencePiece BPE vocabulary, which GGUF stores with scores and no
/// merges, derived as Hugging Face's converter does: every split of a piece into two
/// pieces of the vocabulary, ordered by the vocabulary ids of the halves within a piece,
/// then by the piece's score, highest first (stable).
fn spm_merges(h: &GgufHeader, tokens: &[&str], types: &[i64]) -> Result<Vec<Value>, String> {
    let scores: Vec<f64> = h
        .get("tokenizer.ggml.scores")
        .and_then(MetaValue::as_array)
        .ok_or("tokenizer.ggml.scores is missing (a SentencePiece vocabulary needs it)")?
        .iter()
        .map(|v| v.as_f64().unwrap_or(0.0))
        .collect();
    if scores.len() != tokens.len() {
        return Err(format!(
            "tokenizer.ggml.scores has {} entries for {} tokens",
            scores.len(),
            tokens.len()
        ));
    }
    let mut ids: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        ids.entry(t).or_insert(i);
    }
    let mut merges: Vec<(usize, usize, f64)> = Vec::new();
    for (piece, (score, ty)) in tokens.iter().zip(scores.iter().zip(types)) {
        if *ty == CONTROL || *ty == UNKNOWN || *ty == BYTE {
            continue;
        }
        let mut local: Vec<(usize, usize, f64)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = piece.split_at(at);
                Some((*ids.get(l)?, *ids.get(r)?, *score))
            })
            .collect();
        local.sort_by_key(|&(l, r, _)| (l, r));
        merges.extend(local);
    }
    merges.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok(merges
        .into_iter()
        .map(|(l, r, _)| json!([tokens[l], tokens[r]]))
        .collect())
}

fn strings<'a>(h: &'a GgufHeader, key: &str) -> Result<Vec<&'a str>, String> {
    let items = h
        .get(key)
        .and_then(MetaValue::as_array)
        .ok_or_else(|| format!("{key} is missing"))?;
    items
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| format!("{key} holds a non-string"))
        })
        .collect()
}

/// The two files, as JSON values: `(tokenizer.json, tokenizer_config.json)`.
pub fn tokenizer_files(h: &GgufHeader) -> Result<(Value, Value), String> {
    let model = h
        .get("tokenizer.ggml.model")
        .and_then(MetaValue::as_str)
        .ok_or("tokenizer.ggml.model is missing")?;
    let tokens = strings(h, "tokenizer.ggml.tokens")?;
    let types: Vec<i64> = match h.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .as_array()
            .ok_or("tokenizer.ggml.token_type is not an array")?
            .iter()
            .map(|t| match t {
                MetaValue::Int(i) => *i,
                MetaValue::Uint(u) => *u as i64,
                _ => 1,
            })
            .collect(),
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            types.len(),
            tokens.len()
        ));
    }
    let mut vocab = Map::new();
    for (id, t) in tokens.iter().enumerate() {
        // A repeated token string keeps its first id, as Hugging Face's vocab does.
        vocab.entry(t.to_string()).or_insert(json!(id));
    }
    let id_of = |key: &str| h.get(key).and_then(MetaValue::as_u64);
    let (normalizer, pre_tokenizer, decoder_json, model_json, default_bos) = match model {
        "gpt2" => {
            // GPT-2 GGUFs without `pre` predate the field and used the GPT-2 split.
            let pre = h
                .get("tokenizer.ggml.pre")
                .and_then(MetaValue::as_str)
                .unwrap_or("default");
            let merges = strings(h, "tokenizer.ggml.merges")?;
            (
                Value::Null,
                pre_tokenizer(pre)?,
                json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
                json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                    "vocab": vocab, "merges": merges}),
                false,
            )
        }
        "llama" => {
            let prefix = h
                .get("tokenizer.ggml.add_space_prefix")
                .and_then(MetaValue::as_bool)
                .unwrap_or(true);
            let unk = id_of("tokenizer.ggml.unknown_token_id")
                .and_then(|i| tokens.get(i as usize))
                .map(|s| s.to_string());
            let merges = spm_merges(h, &tokens, &types)?;
            let mut norms = vec![json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"})];
            if prefix {
                norms.insert(0, json!({"type": "Prepend", "prepend": "\u{2581}"}));
            }
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            (
                json!({"type": "Sequence", "normalizers": norms}),
                Value::Null,
                json!({"type": "Sequence", "decoders": decoders}),
                json!({"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                    "vocab": vocab, "merges": merges}),
                true,
            )
        }
        other => {
            return Err(format!(
                "tokenizer model {other:?} is not supported yet (byte-level BPE \"gpt2\" and SentencePiece BPE \"llama\" are)"
            ))
        }
    };
    let mut added = Vec::new();
    let mut decoder = Map::new();
    for (id, (t, ty)) in tokens.iter().zip(&types).enumerate() {
        if *ty == CONTROL || *ty == USER_DEFINED || *ty == UNKNOWN {
            let special = *ty != USER_DEFINED;
            let entry = json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": !special, "special": special});
            decoder.insert(id.to_string(), {
                let mut e = entry.clone();
                if let Some(o) = e.as_object_mut() {
                    o.remove("id");
                }
                e
            });
            added.push(entry);
        }
    }
    let text_of = |key: &str| {
        id_of(key)
            .and_then(|i| tokens.get(i as usize))
            .map(|s| s.to_string())
    };
    let add_bos = h
        .get("tokenizer.ggml.add_bos_token")
        .and_then(MetaValue::as_bool)
        .unwrap_or(default_bos);
    let bos = text_of("tokenizer.ggml.bos_token_id");
    let post_processor = match (&bos, add_bos) {
        (Some(b), true) => {
            let id = id_of("tokenizer.ggml.bos_token_id").unwrap_or(0);
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {b: {"id": b, "ids": [id], "tokens": [b]}}})
        }
        _ => Value::Null,
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder_json,
        "model": model_json,
    });
    let mut cfg = Map::new();
    cfg.insert("add_bos_token".into(), json!(add_bos));
    cfg.insert(
        "add_eos_token".into(),
        json!(h
            .get("tokenizer.ggml.add_eos_token")
            .and_then(MetaValue::as_bool)
            .unwrap_or(false)),
    );
    cfg.insert("added_tokens_decoder".into(), Value::Object(decoder));
    for (key, field) in [
        ("tokenizer.ggml.bos_token_id", "bos_token"),
        ("tokenizer.ggml.eos_token_id", "eos_token"),
        ("tokenizer.ggml.unknown_token_id", "unk_token"),
        ("tokenizer.ggml.padding_token_id", "pad_token"),
    ] {
        if let Some(t) = text_of(key) {
            cfg.insert(field.into(), json!(t));
        }
    }
    if let Some(t) = h.get("tokenizer.chat_template").and_then(MetaValue::as_str) {
        cfg.insert("chat_template".into(), json!(t));
    }
    cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
    cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    if let Some(ctx) = h
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .and_then(|a| h.get(&format!("{a}.context_length")))
        .and_then(MetaValue::as_u64)
    {
        cfg.insert("model_max_length".into(), json!(ctx));
    }
    Ok((tokenizer, Value::Object(cfg)))
}
