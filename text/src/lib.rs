//! The text side of mlxsup, with no MLX: the tokenizer and the chat template of a model
//! folder, loaded through capped regular-file reads, templates rendered within fuel and
//! output bounds, and [`check_model_files`] — everything the supervisor's preflight can
//! check before a worker is spawned. The worker uses the same code to load what it runs.
pub mod chat;
pub mod check;
pub mod error;
pub mod tokenizer;

pub use chat::{render, TokenizerConfig, MAX_RENDERED_BYTES, TEMPLATE_FUEL};
pub use check::{
    check_loadable, check_model_files, count_prompt_tokens, prompt_ids, read_prompt_file, TextFiles,
};
pub use error::{TextError, TextErrorKind};
pub use tokenizer::{StreamDecoder, Tokenizer};
