//! Chat templates (`chat_template` of tokenizer_config.json, or chat_template.jinja)
//! rendered with minijinja the way Hugging Face's `apply_chat_template` renders them.

use std::path::Path;

use minijinja::{context, syntax::SyntaxConfig, Environment, Error, ErrorKind};
use protocol::{ChatMessage, WorkerError};
use serde_json::Value;

use super::error::{bad_request, load_failed};

/// What tokenizer_config.json says about prompts.
#[derive(Debug, Default)]
pub struct TokenizerConfig {
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

fn token_text(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl TokenizerConfig {
    /// Reads tokenizer_config.json (absent: no template) and chat_template.jinja.
    pub fn load(dir: &Path) -> Result<TokenizerConfig, WorkerError> {
        let path = dir.join("tokenizer_config.json");
        let mut cfg = TokenizerConfig::default();
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| load_failed(format!("cannot read {}: {e}", path.display())))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| load_failed(format!("{} is not valid JSON: {e}", path.display())))?;
            cfg.bos_token = token_text(v.get("bos_token"));
            cfg.eos_token = token_text(v.get("eos_token"));
            cfg.chat_template = match v.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => None,
            };
        }
        let jinja = dir.join("chat_template.jinja");
        if cfg.chat_template.is_none() && jinja.exists() {
            cfg.chat_template = Some(
                std::fs::read_to_string(&jinja)
                    .map_err(|e| load_failed(format!("cannot read {}: {e}", jinja.display())))?,
            );
        }
        Ok(cfg)
    }

    /// Renders `messages` with the template, ending with the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, WorkerError> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            bad_request("the model has no chat template (tokenizer_config.json chat_template)")
        })?;
        render(
            template,
            messages,
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
        )
        .map_err(|e| bad_request(format!("cannot render the chat template: {e:#}")))
    }
}

fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// Renders a Hugging Face chat template.
pub fn render(
    template: &str,
    messages: &[ChatMessage],
    bos: Option<&str>,
    eos: Option<&str>,
) -> Result<String, Error> {
    let mut env = Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()?,
    );
    env.add_template("chat", template)?;
    let msgs: Vec<Value> = messages
        .iter()
        .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
        .collect();
    env.get_template("chat")?.render(context! {
        messages => minijinja::Value::from(minijinja::value::Serde(&msgs)),
        add_generation_prompt => true,
        bos_token => bos.unwrap_or(""),
        eos_token => eos.unwrap_or(""),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.
mod tests {
    use super::*;

    #[test]
    fn chatml_renders() {
        let t = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] | trim + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let msgs = vec![ChatMessage {
            role: "user".into(),
            content: " hi ".into(),
        }];
        let out = render(t, &msgs, None, None).map_err(|e| e.to_string());
        assert_eq!(
            out.as_deref(),
            Ok("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = "{{ raise_exception('no system role') }}";
        assert!(render(t, &[], None, None).is_err());
    }
}
