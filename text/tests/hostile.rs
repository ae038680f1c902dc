//! Random bytes into every file the text side reads (tokenizer.json,
//! tokenizer_config.json, chat_template.jinja, generation_config.json, prompt files) and
//! random templates: never a panic, always an error naming the file or a result.
#![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

use std::path::Path;

use proptest::prelude::*;
use protocol::ChatMessage;
use text::{Tokenizer, TokenizerConfig};

const CONFIG: &str = r#"{"model_type":"llama","hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,
"num_key_value_heads":2,"intermediate_size":128,"vocab_size":256,"torch_dtype":"bfloat16"}"#;

/// A tokenizer.json that parses: a word-level vocabulary.
const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"[UNK]":0,"hello":1,"world":2},"unk_token":"[UNK]"}}"#;

/// A folder with a config, an (empty-data) shard and a valid tokenizer.
fn folder() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), CONFIG).unwrap();
    let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut shard = (header.len() as u64).to_le_bytes().to_vec();
    shard.extend_from_slice(header);
    shard.extend_from_slice(&[0; 4]);
    std::fs::write(d.path().join("model.safetensors"), shard).unwrap();
    std::fs::write(d.path().join("tokenizer.json"), TOKENIZER).unwrap();
    d
}

const FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
];

#[test]
fn a_valid_folder_passes_and_counts_tokens() {
    let d = folder();
    let files = text::check_model_files(d.path()).unwrap();
    assert_eq!(
        files.tokenizer.encode("hello world", false).unwrap(),
        vec![1, 2]
    );
    let prompt = protocol::Prompt::Text("hello world x".into());
    assert_eq!(text::count_prompt_tokens(d.path(), &prompt), Ok(3));
    assert_eq!(files.count_prompt_tokens(&prompt), Ok(3));
}

#[test]
fn each_bad_file_is_named() {
    for f in FILES {
        let d = folder();
        std::fs::write(d.path().join(f), b"\xff{{ not json or jinja %}").unwrap();
        if f == "chat_template.jinja" {
            // Read only when tokenizer_config.json has no template.
            std::fs::write(d.path().join("tokenizer_config.json"), "{}").unwrap();
        }
        let e = text::check_model_files(d.path()).unwrap_err();
        assert!(e.message.contains(f), "{f}: {e}");
    }
}

#[test]
fn chat_prompts_count_through_the_template() {
    let d = folder();
    std::fs::write(
        d.path().join("tokenizer_config.json"),
        r#"{"chat_template": "{% for m in messages %}{{ m.content }} {% endfor %}world"}"#,
    )
    .unwrap();
    let chat = protocol::Prompt::Chat(vec![ChatMessage {
        role: "user".into(),
        content: "hello hello".into(),
    }]);
    assert_eq!(text::count_prompt_tokens(d.path(), &chat), Ok(3));
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_bytes_in_any_text_file_never_panic(
        which in 0usize..4,
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let d = folder();
        write(d.path(), FILES[which], &bytes);
        let _ = text::check_model_files(d.path());
        let _ = text::read_prompt_file(&d.path().join(FILES[which]));
    }

    #[test]
    fn random_json_tokenizers_never_panic(s in r#"\{("[a-z_]{1,8}": ?(null|[0-9]{1,3}|"[a-zA-Z]{0,6}"|\[\]|\{\}), ?){0,6}"model": ?\{"type": ?"(BPE|WordLevel|WordPiece|Unigram)"(, ?"[a-z_]{1,8}": ?(null|[0-9]{1,3}|"[a-z]{0,4}"|\[\]|\{\})){0,4}\}\}"#) {
        let _ = Tokenizer::from_json(&s);
    }

    #[test]
    fn random_templates_never_panic(t in r#"(\{\{ ?|\{% ?|[a-z ]|messages|range\(9+\)|for |in |endfor|if |endif| ?%\}| ?\}\}|\[0\]|\.content|\+|\*|~|'x'){0,24}"#) {
        let cfg = TokenizerConfig { chat_template: Some(t), ..TokenizerConfig::default() };
        let _ = cfg.compile();
        let _ = cfg.trial_render();
        let _ = cfg.render(&[ChatMessage { role: "user".into(), content: "hi".into() }]);
    }
}
