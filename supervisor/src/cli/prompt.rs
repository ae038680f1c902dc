//! The prompt and sampling flags shared by `mlxsup run` and `mlxsup generate`, and the
//! generation request they make.

use std::path::PathBuf;

use protocol::{ChatMessage, Fault, GenerateRequest, Prompt, Sampling};

#[derive(clap::Args, Clone, Debug)]
pub struct PromptArgs {
    /// The prompt.
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
    /// Sampling temperature (finite, >= 0); 0 is greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = crate::cli::args::parse_temperature)]
    pub temp: f32,
    /// Nucleus sampling threshold, in (0, 1].
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = crate::cli::args::parse_top_p)]
    pub top_p: f32,
    /// Random seed for sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Render the prompt with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Stop when the text ends with this (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
}

impl PromptArgs {
    /// A plain prompt with the defaults.
    pub fn text(prompt: &str, max_tokens: u32) -> PromptArgs {
        PromptArgs {
            prompt: Some(prompt.into()),
            prompt_file: None,
            max_tokens,
            temp: 0.0,
            top_p: 1.0,
            seed: None,
            chat: false,
            stop: vec![],
        }
    }

    /// The prompt, read from its file if it has one. The error is for a person.
    pub fn prompt(&self) -> Result<Prompt, String> {
        let text = match (&self.prompt, &self.prompt_file) {
            (Some(p), _) => p.clone(),
            // A regular file of at most 16 MiB: never a FIFO that blocks or /dev/zero.
            (None, Some(f)) => text::read_prompt_file(f).map_err(|e| format!("mlxsup: {e}"))?,
            (None, None) => "Hello! Who are you?".to_string(),
        };
        Ok(if self.chat {
            Prompt::Chat(vec![ChatMessage {
                role: "user".into(),
                content: text,
            }])
        } else {
            Prompt::Text(text)
        })
    }

    /// The worker's generation request for `prompt`.
    pub fn request(&self, prompt: Prompt, fault: Option<Fault>) -> GenerateRequest {
        GenerateRequest {
            prompt,
            max_tokens: self.max_tokens,
            sampling: Sampling {
                temperature: self.temp,
                top_p: self.top_p,
                seed: self.seed,
            },
            stop: self.stop.clone(),
            fault,
            images: Vec::new(),
        }
    }
}
