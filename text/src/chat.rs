//! Chat templates (`chat_template` of tokenizer_config.json, or chat_template.jinja),
//! read through capped regular-file reads and rendered with minijinja the way Hugging
//! Face's `apply_chat_template` renders them — within bounds: [`TEMPLATE_FUEL`]
//! instructions and [`MAX_RENDERED_BYTES`] of output, so a template that loops forever
//! or writes without end is an error naming it.

use std::io::Write;
use std::path::{Path, PathBuf};

use estimate::fsread::{
    present, read_capped, read_capped_string, MAX_TEMPLATE_BYTES, MAX_TOKENIZER_CONFIG_BYTES,
};
use minijinja::{context, syntax::SyntaxConfig, Environment, Error, ErrorKind};
use protocol::ChatMessage;
use serde_json::Value;

use crate::error::TextError;

/// Instructions a template may execute per render. Real chat templates need a few
/// thousand per message; this is ample for long conversations and stops a runaway loop
/// within seconds.
pub const TEMPLATE_FUEL: u64 = 10_000_000;

/// Largest rendered prompt: the prompt-file cap plus room for the template's markup.
pub const MAX_RENDERED_BYTES: usize = 32 << 20;

/// How minijinja reports running out of fuel.
const FUEL_MESSAGE: &str = "ran out of fuel";
/// How [`render`] reports passing the output cap.
const CAP_MESSAGE: &str = "the rendered prompt passed";

/// Render errors that mean the template itself is broken, not the request.
const BROKEN: [&str; 3] = [FUEL_MESSAGE, CAP_MESSAGE, "recursion limit exceeded"];

/// Most JSON values a tokenizer_config.json may have (thousands of added tokens at
/// about seven values each fit many times over).
pub const MAX_TOKENIZER_CONFIG_VALUES: u64 = 1_000_000;

/// File name of the tokenizer config.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// File name of a standalone chat template.
pub const TEMPLATE_FILE: &str = "chat_template.jinja";

/// What tokenizer_config.json says about prompts.
#[derive(Debug, Default)]
pub struct TokenizerConfig {
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Where the template came from, for errors (`…/tokenizer_config.json`).
    pub template_source: Option<PathBuf>,
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
    pub fn load(dir: &Path) -> Result<TokenizerConfig, TextError> {
        let path = dir.join(TOKENIZER_CONFIG_FILE);
        let mut cfg = TokenizerConfig::default();
        if present(&path) {
            let bytes = read_capped(&path, MAX_TOKENIZER_CONFIG_BYTES, TOKENIZER_CONFIG_FILE)?;
            estimate::json_size::check_values(&path, &bytes, MAX_TOKENIZER_CONFIG_VALUES)?;
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| TextError::load(format!("{}: invalid JSON: {e}", path.display())))?;
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
            if cfg.chat_template.is_some() {
                cfg.template_source = Some(path);
            }
        }
        let jinja = dir.join(TEMPLATE_FILE);
        if cfg.chat_template.is_none() && present(&jinja) {
            cfg.chat_template = Some(read_capped_string(
                &jinja,
                MAX_TEMPLATE_BYTES,
                TEMPLATE_FILE,
            )?);
            cfg.template_source = Some(jinja);
        }
        Ok(cfg)
    }

    /// The template's origin, for messages.
    pub fn template_name(&self) -> String {
        self.template_source.as_ref().map_or_else(
            || "the chat template".to_string(),
            |p| p.display().to_string(),
        )
    }

    /// Checks the template compiles (without rendering it).
    pub fn compile(&self) -> Result<(), TextError> {
        match self.chat_template.as_deref() {
            Some(t) => environment(t).map(|_| ()).map_err(|e| {
                TextError::load(format!(
                    "{}: the chat template does not compile: {e:#}",
                    self.template_name()
                ))
            }),
            None => Ok(()),
        }
    }

    /// Renders the template once for a one-message conversation: a template that runs
    /// out of fuel, past the output cap or past the recursion limit on that is broken
    /// whatever the request, and is
    /// an error naming it. Other render errors (`raise_exception` on roles) depend on the
    /// request and are left to it.
    pub fn trial_render(&self) -> Result<(), TextError> {
        if self.chat_template.is_none() {
            return Ok(());
        }
        let probe = [ChatMessage {
            role: "user".into(),
            content: "Hello".into(),
        }];
        match self.render(&probe) {
            Err(e) if BROKEN.iter().any(|m| e.message.contains(m)) => {
                Err(TextError::load(e.message))
            }
            _ => Ok(()),
        }
    }

    /// Renders `messages` with the template, ending with the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, TextError> {
        self.render_with_images(messages, &[])
    }

    /// [`TokenizerConfig::render`] for a vision-language model: message `i` starts with
    /// `images[i]` images (missing entries: none), passed to the template as mlx-vlm
    /// and transformers pass them — the content a list of `{"type": "image"}` parts then
    /// one `{"type": "text", "text": …}` part.
    pub fn render_with_images(
        &self,
        messages: &[ChatMessage],
        images: &[usize],
    ) -> Result<String, TextError> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            TextError::request(
                "the model has no chat template (tokenizer_config.json chat_template)",
            )
        })?;
        render_parts(
            template,
            messages,
            images,
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
        )
        .map_err(|e| {
            TextError::request(format!(
                "{}: cannot render the chat template: {e:#}",
                self.template_name()
            ))
        })
    }
}

fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn environment(template: &str) -> Result<Environment<'_>, Error> {
    let mut env = Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()?,
    );
    env.add_template("chat", template)?;
    Ok(env)
}

/// A writer that refuses to grow past a cap (an I/O error ends the render).
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
}

impl Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.cap {
            return Err(std::io::Error::other(format!(
                "the rendered prompt passed {} bytes",
                self.cap
            )));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders a Hugging Face chat template, within [`TEMPLATE_FUEL`] and
/// [`MAX_RENDERED_BYTES`].
pub fn render(
    template: &str,
    messages: &[ChatMessage],
    bos: Option<&str>,
    eos: Option<&str>,
) -> Result<String, Error> {
    render_parts(template, messages, &[], bos, eos)
}

/// [`render`] with `images[i]` image parts ahead of message `i`'s text.
pub fn render_parts(
    template: &str,
    messages: &[ChatMessage],
    images: &[usize],
    bos: Option<&str>,
    eos: Option<&str>,
) -> Result<String, Error> {
    let env = environment(template)?;
    let msgs: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| match images.get(i).copied().unwrap_or(0) {
            0 => serde_json::json!({"role": m.role, "content": m.content}),
            n => {
                let mut parts = vec![serde_json::json!({"type": "image"}); n];
                parts.push(serde_json::json!({"type": "text", "text": m.content}));
                serde_json::json!({"role": m.role, "content": parts})
            }
        })
        .collect();
    let mut out = CappedWriter {
        buf: Vec::new(),
        cap: MAX_RENDERED_BYTES,
    };
    let rendered = env.get_template("chat")?.render_captured_to(
        context! {
            messages => minijinja::Value::from(minijinja::value::Serde(&msgs)),
            add_generation_prompt => true,
            bos_token => bos.unwrap_or(""),
            eos_token => eos.unwrap_or(""),
        },
        &mut out,
    );
    if let Err(e) = rendered {
        // minijinja reports only "I/O error"; say which bound was hit.
        if out.buf.len() >= out.cap / 2 && e.kind() == ErrorKind::WriteFailure {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("{CAP_MESSAGE} {MAX_RENDERED_BYTES} bytes"),
            ));
        }
        return Err(e);
    }
    String::from_utf8(out.buf).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            "the rendered prompt is not UTF-8",
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn user(text: &str) -> Vec<ChatMessage> {
        vec![ChatMessage {
            role: "user".into(),
            content: text.into(),
        }]
    }

    #[test]
    fn chatml_renders() {
        let t = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] | trim + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let out = render(t, &user(" hi "), None, None).map_err(|e| e.to_string());
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

    #[test]
    fn nested_loops_run_out_of_fuel() {
        let t = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let start = Instant::now();
        let e = render(t, &[], None, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfFuel, "{e}");
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn endless_output_is_capped() {
        let t = "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}";
        let e = render(t, &[], None, None).unwrap_err();
        assert!(format!("{e:#}").contains("passed"), "{e:#}");
    }

    #[test]
    fn errors_name_the_template_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(TEMPLATE_FILE), "{% for %}").unwrap();
        let cfg = TokenizerConfig::load(d.path()).unwrap();
        let e = cfg.compile().unwrap_err();
        assert!(
            e.message
                .contains("chat_template.jinja: the chat template does not compile"),
            "{e}"
        );
        std::fs::write(
            d.path().join(TOKENIZER_CONFIG_FILE),
            r#"{"chat_template": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"}"#,
        )
        .unwrap();
        let cfg = TokenizerConfig::load(d.path()).unwrap();
        assert!(cfg.compile().is_ok());
        let e = cfg.render(&user("hi")).unwrap_err();
        assert!(
            e.message.contains("tokenizer_config.json: cannot render"),
            "{e}"
        );
        assert!(e.message.contains("fuel"), "{e}");
        let e = cfg.trial_render().unwrap_err();
        assert_eq!(e.kind, crate::TextErrorKind::Load);
    }

    #[test]
    fn trial_render_leaves_request_dependent_errors_to_the_request() {
        let cfg = TokenizerConfig {
            chat_template: Some("{{ raise_exception('roles must alternate') }}".into()),
            ..TokenizerConfig::default()
        };
        assert!(cfg.trial_render().is_ok());
        assert!(cfg.render(&[]).is_err());
    }
}
