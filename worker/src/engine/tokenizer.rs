//! The model's tokenizer (`tokenizer.json` through the `tokenizers` crate) and streaming
//! detokenization that never splits a UTF-8 character across two token events.

use std::path::Path;

use protocol::WorkerError;

use super::error::{bad_request, load_failed};

/// A loaded `tokenizer.json`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn load(dir: &Path) -> Result<Tokenizer, WorkerError> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(load_failed(format!("{} is missing", path.display())));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| load_failed(format!("cannot load {}: {e}", path.display())))?;
        Ok(Tokenizer { inner })
    }

    /// A tokenizer from the text of a `tokenizer.json`.
    pub fn from_json(json: &str) -> Result<Tokenizer, WorkerError> {
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| load_failed(format!("cannot parse tokenizer.json: {e}")))?;
        Ok(Tokenizer { inner })
    }

    /// Token ids of `text`; `special` adds the tokenizer's own special tokens (BOS…).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, WorkerError> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| bad_request(format!("cannot tokenize the prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    /// The id of a token string, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// Incremental detokenization: each pushed token yields the text it completes.
///
/// It decodes a short window of recent tokens twice (without and with the new token) and
/// emits the difference, holding it back while it ends in an incomplete UTF-8 sequence
/// (which the decoder renders as U+FFFD).
#[derive(Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Adds a token; returns the newly completed text (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read]);
        let after = tok.decode(&self.ids[self.prefix..]);
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') {
            let text = match after.get(before.len()..) {
                Some(t) if after.starts_with(&before) => t.to_string(),
                _ => after.clone(),
            };
            self.prefix = self.read;
            self.read = self.ids.len();
            text
        } else {
            String::new()
        }
    }

    /// Whatever is still held back (an incomplete sequence at the end), as decoded.
    pub fn flush(&mut self, tok: &Tokenizer) -> String {
        let before = tok.decode(&self.ids[self.prefix..self.read]);
        let after = tok.decode(&self.ids[self.prefix..]);
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        match after.get(before.len()..) {
            Some(t) if after.starts_with(&before) => t.to_string(),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_json(&crate::make_model::tokenizer_json_for(400).to_string()).unwrap()
    }

    #[test]
    fn streaming_never_splits_a_character() {
        let tok = tokenizer();
        let text = "ça — 日本語 🙂 fin";
        let ids = tok.encode(text, false).unwrap();
        // Multi-byte characters are several byte tokens here: the test is meaningful.
        assert!(ids.len() > text.chars().count());
        let mut dec = StreamDecoder::new();
        let mut pieces: Vec<String> = ids.iter().map(|&id| dec.push(&tok, id)).collect();
        pieces.push(dec.flush(&tok));
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        assert!(
            pieces.iter().any(String::is_empty),
            "some token completed no character"
        );
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn an_incomplete_tail_is_flushed_as_decoded() {
        let tok = tokenizer();
        let ids = tok.encode("é", false).unwrap();
        let mut dec = StreamDecoder::new();
        assert_eq!(dec.push(&tok, ids[0]), "");
        assert_eq!(dec.flush(&tok), "\u{FFFD}");
    }

    #[test]
    fn special_tokens_are_single_ids_and_skipped_in_text() {
        let tok = tokenizer();
        let ids = tok.encode("<|im_start|>user", false).unwrap();
        assert_eq!(Some(ids[0]), tok.token_id("<|im_start|>"));
        assert_eq!(tok.decode(&ids), "user");
    }
}
