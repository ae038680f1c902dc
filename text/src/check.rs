//! What the supervisor's preflight checks before a worker is spawned, and the prompt
//! helpers the supervisor and the worker share: every shard the index names is there
//! (its header parsed), `tokenizer.json` and `tokenizer_config.json` parse,
//! `generation_config.json` parses, the chat template compiles.
use std::path::Path;

use estimate::fsread::{
    present, read_capped, read_capped_string, MAX_CONFIG_BYTES, MAX_PROMPT_BYTES,
};
use estimate::json_size::MAX_CONFIG_VALUES;
use estimate::{FileError, Model};
use protocol::Prompt;

use crate::chat::TokenizerConfig;
use crate::error::TextError;
use crate::tokenizer::Tokenizer;

/// File name of the generation config.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// What a model folder holds for text, once checked.
#[derive(Debug)]
pub struct TextFiles {
    /// The parsed tokenizer.
    pub tokenizer: Tokenizer,
    /// The tokenizer config and chat template.
    pub prompts: TokenizerConfig,
}

impl TextFiles {
    /// How many tokens `prompt` is (for a prompt-length check before spawning a worker),
    /// with the files already checked: nothing is read again.
    pub fn count_prompt_tokens(&self, prompt: &Prompt) -> Result<usize, TextError> {
        prompt_ids(&self.tokenizer, &self.prompts, prompt).map(|ids| ids.len())
    }
}

/// Checks everything a worker would load, without MLX, for a model already opened by
/// [`Model::open`] (which read config.json, the index and every shard header): the
/// shards the index names exist, and the tokenizer, tokenizer config, generation config
/// and chat template parse, and the template renders a one-message chat within bounds. Every error names the file; for `mlxsup run` it is exit 5.
pub fn check_loadable(model: &Model) -> Result<TextFiles, TextError> {
    model.require_weights()?;
    let dir = model.dir.as_path();
    let generation = dir.join(GENERATION_CONFIG_FILE);
    if present(&generation) {
        let bytes = read_capped(&generation, MAX_CONFIG_BYTES, GENERATION_CONFIG_FILE)?;
        estimate::json_size::check_values(&generation, &bytes, MAX_CONFIG_VALUES)?;
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .map_err(|e| TextError::load(format!("{}: invalid JSON: {e}", generation.display())))?;
    }
    let tokenizer = Tokenizer::load(dir)?;
    let prompts = TokenizerConfig::load(dir)?;
    prompts.compile()?;
    prompts.trial_render()?;
    Ok(TextFiles { tokenizer, prompts })
}

/// [`Model::open`] then [`check_loadable`]: the whole preflight check of a folder.
pub fn check_model_files(dir: &Path) -> Result<TextFiles, TextError> {
    check_loadable(&Model::open(dir)?)
}

/// The token ids of a prompt, as the worker feeds them: plain text with the tokenizer's
/// special tokens, a chat rendered with the template (which adds its own), token ids as
/// they are.
pub fn prompt_ids(
    tokenizer: &Tokenizer,
    prompts: &TokenizerConfig,
    prompt: &Prompt,
) -> Result<Vec<u32>, TextError> {
    match prompt {
        Prompt::Text(t) => tokenizer.encode(t, true),
        Prompt::Chat(messages) => tokenizer.encode(&prompts.render(messages)?, false),
        Prompt::Tokens(ids) => Ok(ids.clone()),
    }
}

/// How many tokens `prompt` is for the model in `dir` (for a prompt-length check
/// before spawning a worker).
pub fn count_prompt_tokens(dir: &Path, prompt: &Prompt) -> Result<usize, TextError> {
    if let Prompt::Tokens(ids) = prompt {
        return Ok(ids.len());
    }
    let tokenizer = Tokenizer::load(dir)?;
    let prompts = TokenizerConfig::load(dir)?;
    prompt_ids(&tokenizer, &prompts, prompt).map(|ids| ids.len())
}

/// Reads a prompt file: a regular file (symlinks followed), UTF-8, at most
/// [`MAX_PROMPT_BYTES`]; never blocks on a FIFO, never reads a device.
pub fn read_prompt_file(path: &Path) -> Result<String, FileError> {
    read_capped_string(path, MAX_PROMPT_BYTES, "the prompt file")
}
