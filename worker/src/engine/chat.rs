//! Chat templates: the `text` crate's loading (capped reads) and bounded rendering
//! (minijinja fuel and an output cap), shared with the supervisor's preflight.

pub use text::TokenizerConfig;
