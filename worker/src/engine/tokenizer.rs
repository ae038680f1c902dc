//! The model's tokenizer and streaming detokenization: the `text` crate's, shared with
//! the supervisor's preflight (loading goes through its capped regular-file read).

pub use text::{StreamDecoder, Tokenizer};

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
