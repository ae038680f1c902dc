//! The model's tokenizer (`tokenizer.json` through the `tokenizers` crate, read through a
//! capped regular-file read) and streaming detokenization that never splits a UTF-8
//! character across two token events.

use std::path::Path;

use estimate::fsread::{read_capped_string, MAX_TOKENIZER_BYTES};

use crate::error::TextError;

/// File name of the tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Most JSON values (keys included) a `tokenizer.json` may have. The largest real ones
/// (262k-token vocabularies with 500k merges) have about 2 million; the `tokenizers`
/// crate keeps each in a hash map or two, so this bounds the parse's memory as the size
/// cap bounds the read.
pub const MAX_TOKENIZER_VALUES: u64 = 4_000_000;

/// A loaded `tokenizer.json`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`: a regular file of at most [`MAX_TOKENIZER_BYTES`].
    pub fn load(dir: &Path) -> Result<Tokenizer, TextError> {
        let path = dir.join(TOKENIZER_FILE);
        let json = read_capped_string(&path, MAX_TOKENIZER_BYTES, TOKENIZER_FILE)?;
        estimate::json_size::count_values(json.as_bytes(), MAX_TOKENIZER_VALUES)
            .map_err(|e| TextError::load(format!("{}: {e}", path.display())))?;
        Tokenizer::parse(&json)
            .map_err(|e| TextError::load(format!("{}: cannot load: {e}", path.display())))
    }

    /// A tokenizer from the text of a `tokenizer.json`.
    pub fn from_json(json: &str) -> Result<Tokenizer, TextError> {
        Tokenizer::parse(json)
            .map_err(|e| TextError::load(format!("cannot parse tokenizer.json: {e}")))
    }

    fn parse(json: &str) -> Result<Tokenizer, String> {
        json.parse::<tokenizers::Tokenizer>()
            .map(|inner| Tokenizer { inner })
            .map_err(|e| e.to_string())
    }

    /// Token ids of `text`; `special` adds the tokenizer's own special tokens (BOS…).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, TextError> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| TextError::request(format!("cannot tokenize the prompt: {e}")))?;
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
