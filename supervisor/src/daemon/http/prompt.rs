//! The prompt of a chat or completion request: chat messages with their text parts
//! joined and their `image_url` parts set aside (images.rs reads them), or the one text
//! prompt of a completion.

use protocol::{ChatMessage, Prompt};

use super::{
    error::ApiError,
    images::RawImage,
    openai::{ChatRequest, CompletionRequest, Content, PromptText},
};

pub fn chat_prompt(req: &ChatRequest) -> Result<(Prompt, Vec<RawImage>), ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("messages", "messages is empty"));
    }
    let mut out = Vec::with_capacity(req.messages.len());
    let mut images = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let content = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        ("image_url", _) => {
                            let param = format!("messages[{i}].content[{j}].image_url");
                            let Some(u) = &p.image_url else {
                                return Err(ApiError::bad_request(
                                    &param,
                                    "an image_url part without its image_url object",
                                ));
                            };
                            images.push(RawImage {
                                message: i as u32,
                                param,
                                url: u.url.clone(),
                            });
                        }
                        (kind, _) => {
                            return Err(ApiError::bad_request(
                                &format!("messages[{i}].content"),
                                format!(
                                "content parts of type `{kind}` are not supported by this model"
                            ),
                            ))
                        }
                    }
                }
                text
            }
        };
        out.push(ChatMessage {
            role: m.role.clone(),
            content,
        });
    }
    Ok((Prompt::Chat(out), images))
}

pub fn text_prompt(req: &CompletionRequest) -> Result<Prompt, ApiError> {
    match &req.prompt {
        PromptText::One(p) => Ok(Prompt::Text(p.clone())),
        PromptText::Many(v) if v.len() == 1 => Ok(Prompt::Text(v[0].clone())),
        PromptText::Many(_) => Err(ApiError::bad_request(
            "prompt",
            "exactly one prompt per request is supported",
        )),
    }
}
