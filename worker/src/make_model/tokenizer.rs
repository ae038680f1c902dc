//! `make-model`'s tokenizer: a small real byte-level BPE learnt from a built-in corpus,
//! with the three special tokens of a ChatML template.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Value};

pub(super) const ENDOFTEXT: &str = "<|endoftext|>";
pub(super) const IM_START: &str = "<|im_start|>";
pub(super) const IM_END: &str = "<|im_end|>";

/// The ChatML template written into tokenizer_config.json.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const CORPUS: &str = "The quick brown fox jumps over the lazy dog. A model that runs out of memory should \
fail with a clear message, and the process that supervises it should keep running. The worker loads \
the weights, the supervisor watches the memory, and the user reads the report. Tokens stream one by \
one as the model generates them; the text is decoded as it arrives. There is the memory, there is the \
model, and there is the machine that runs them both. Hello, world! How are you today? I am fine, thank \
you, and the weather is nice. Numbers like 1, 2, 3, 10, 42 and 2048 appear in the text too. \
Que la lumière soit: façon, déjà, naïve, où, ça — et les guillemets « français ».";

/// GPT-2's byte → printable character map of byte-level BPE.
pub fn bytes_to_unicode() -> Vec<char> {
    let printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut map = vec!['\0'; 256];
    for &b in &printable {
        map[b as usize] = char::from_u32(b).unwrap_or('?');
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            map[b as usize] = char::from_u32(256 + n).unwrap_or('?');
            n += 1;
        }
    }
    map
}

/// Byte-level BPE: the 256 byte tokens, merges learnt from a small built-in corpus and
/// then filled up with byte pairs, and the three special tokens at the top ids.
pub(super) fn build_bpe(vocab_size: usize) -> (Vec<String>, Vec<(String, String)>) {
    let map = bytes_to_unicode();
    let mut vocab: Vec<String> = (0..256).map(|b| map[b].to_string()).collect();
    let mut known: HashSet<String> = vocab.iter().cloned().collect();
    let n_merges = vocab_size - 256 - 3;
    let mut merges: Vec<(String, String)> = Vec::new();
    // Words with their leading space, as the ByteLevel pre-tokenizer splits them.
    let mut words: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for (i, w) in CORPUS.split(' ').enumerate() {
        let text = if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        };
        let syms: Vec<String> = text.bytes().map(|b| map[b as usize].to_string()).collect();
        *words.entry(syms).or_default() += 1;
    }
    while merges.len() < n_merges {
        let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (w, c) in &words {
            for p in w.windows(2) {
                *counts.entry((p[0].clone(), p[1].clone())).or_default() += c;
            }
        }
        let best = counts
            .into_iter()
            .filter(|(_, c)| *c >= 2)
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
        let Some(((a, b), _)) = best else { break };
        let joined = format!("{a}{b}");
        words = words
            .into_iter()
            .map(|(w, c)| {
                let mut out = Vec::with_capacity(w.len());
                let mut i = 0;
                while i < w.len() {
                    if i + 1 < w.len() && w[i] == a && w[i + 1] == b {
                        out.push(joined.clone());
                        i += 2;
                    } else {
                        out.push(w[i].clone());
                        i += 1;
                    }
                }
                (out, c)
            })
            .fold(BTreeMap::new(), |mut m, (w, c)| {
                *m.entry(w).or_default() += c;
                m
            });
        if known.insert(joined.clone()) {
            vocab.push(joined);
            merges.push((a, b));
        }
    }
    // Fill up with token + byte pairs, letters first, in a fixed order.
    let order: Vec<usize> = (b'a'..=b'z')
        .chain(b'A'..=b'Z')
        .chain(b'0'..=b'9')
        .map(|b| b as usize)
        .chain(0..256)
        .collect();
    let mut i = 0;
    while merges.len() < n_merges && i < vocab.len() {
        let left = vocab[i].clone();
        for &b in &order {
            if merges.len() >= n_merges {
                break;
            }
            let right = map[b].to_string();
            let joined = format!("{left}{right}");
            if known.insert(joined.clone()) {
                vocab.push(joined);
                merges.push((left.clone(), right));
            }
        }
        i += 1;
    }
    for s in [ENDOFTEXT, IM_START, IM_END] {
        vocab.push(s.to_string());
    }
    (vocab, merges)
}

/// The `tokenizer.json` that `make_model` writes for a vocabulary of `vocab_size` ids.
pub fn tokenizer_json_for(vocab_size: usize) -> Value {
    let (vocab, merges) = build_bpe(vocab_size.max(300));
    tokenizer_json(&vocab, &merges)
}

pub(super) fn tokenizer_json(vocab: &[String], merges: &[(String, String)]) -> Value {
    let n = vocab.len();
    let specials = &vocab[n - 3..];
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(k, s)| json!({"id": n - 3 + k, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let vocab_map: serde_json::Map<String, Value> = vocab[..n - 3]
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let merges: Vec<Value> = merges.iter().map(|(a, b)| json!([a, b])).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab_map, "merges": merges
        }
    })
}

pub(super) fn tokenizer_config(first_special: usize) -> Value {
    let decoder: serde_json::Map<String, Value> = [ENDOFTEXT, IM_START, IM_END]
        .iter()
        .enumerate()
        .map(|(k, s)| {
            ((first_special + k).to_string(), json!({"content": s, "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true}))
        })
        .collect();
    json!({
        "add_bos_token": false,
        "add_eos_token": false,
        "added_tokens_decoder": decoder,
        "bos_token": null,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "eos_token": IM_END,
        "model_max_length": 32768,
        "pad_token": ENDOFTEXT,
        "tokenizer_class": "PreTrainedTokenizerFast"
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn bpe_fills_the_vocab_exactly() {
        for size in [300usize, 512, 4096] {
            let (vocab, merges) = build_bpe(size);
            assert_eq!(vocab.len(), size);
            assert_eq!(merges.len(), size - 259);
            let unique: HashSet<&String> = vocab.iter().collect();
            assert_eq!(unique.len(), size);
        }
    }
}
