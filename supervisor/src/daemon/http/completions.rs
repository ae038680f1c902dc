//! `POST /v1/chat/completions` and `POST /v1/completions`, streamed (SSE) or not. A
//! request goes to the model's actor like any client's (JIT load under admission, the
//! queue, the restart policy); the front only translates. A client that goes away
//! cancels its request.

use std::{
    convert::Infallible,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use axum::{
    extract::{rejection::JsonRejection, State},
    http::HeaderMap,
    response::{
        sse::{Event as SseEvent, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json,
};
use protocol::{
    control::{ControlEvent, ControlReply, FromDaemon, GenerateModel},
    Device, Event, FinishReason, GenerateRequest, Prompt,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{
    error::ApiError,
    images,
    openai::{
        AssistantMessage, ChatChoice, ChatChunk, ChatCompletion, ChatRequest, ChunkChoice,
        CompletionRequest, Delta, Sampling, TextChoice, TextCompletion, Usage,
    },
    prompt, App,
};
use crate::daemon::models::{Job, ModelCmd, Responder};

/// `: keep-alive` comments while a long prompt is processed.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a streamed request waits for its first token, once its prompt is known to
/// fit the loaded model, before the response starts: a failure before then (refused,
/// busy, a worker that dies at load) gets its HTTP status; after, it is one SSE error
/// event.
const FIRST_TOKEN_WAIT: Duration = Duration::from_secs(1);
/// Tokens generated when the request does not say.
const DEFAULT_MAX_TOKENS: u32 = 512;
/// Tests only (with `serve --allow-fault-injection`): a fault for the worker.
const FAULT_HEADER: &str = "x-mlxsup-inject-fault";

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        FinishReason::Eos | FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

/// Which endpoint, for the shapes of its answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

/// Checks the sampling fields and makes the daemon's request.
fn request(
    app: &App,
    s: &Sampling,
    prompt: Prompt,
    headers: &HeaderMap,
) -> Result<GenerateModel, ApiError> {
    if s.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("n", "only n = 1 is supported"));
    }
    let temperature = s.temperature.unwrap_or(1.0);
    if !temperature.is_finite() || !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request(
            "temperature",
            format!("temperature {temperature} is not in 0..=2"),
        ));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !top_p.is_finite() || top_p <= 0.0 || top_p > 1.0 {
        return Err(ApiError::bad_request(
            "top_p",
            format!("top_p {top_p} is not in (0, 1]"),
        ));
    }
    let max_tokens = s
        .max_completion_tokens
        .or(s.max_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    if max_tokens == 0 {
        return Err(ApiError::bad_request(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    let fault = match headers.get(FAULT_HEADER) {
        Some(v) if app.allow_faults => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request(FAULT_HEADER, "not text"))
                .and_then(|t| {
                    crate::fault::parse_fault(t).map_err(|e| ApiError::bad_request(FAULT_HEADER, e))
                })?,
        ),
        _ => None,
    };
    Ok(GenerateModel {
        model: s.model.clone(),
        request: GenerateRequest {
            prompt,
            max_tokens,
            sampling: protocol::Sampling {
                temperature,
                top_p,
                seed: s.seed,
            },
            stop: s.stop.clone().map(|s| s.into_vec()).unwrap_or_default(),
            fault,
            images: Vec::new(),
        },
        context: None,
        keep_alive: None,
        force: false,
        device: Device::Default,
        compute: protocol::ComputePolicy::Auto,
        kv_bits: None,
    })
}

fn json_error(e: JsonRejection) -> ApiError {
    ApiError::bad_request("body", e.body_text())
}

pub async fn chat(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Response {
    let result = async {
        let Json(req) = body.map_err(json_error)?;
        let (prompt, raw) = prompt::chat_prompt(&req)?;
        let mut gen = request(&app, &req.sampling, prompt, &headers)?;
        if !raw.is_empty() {
            let dir = {
                let shared = std::sync::Arc::clone(&app.shared);
                let name = req.sampling.model.clone();
                tokio::task::spawn_blocking(move || shared.registry.resolve(&name))
                    .await
                    .map_err(|e| ApiError::not_found(format!("looking the model up failed: {e}")))?
                    .map_err(ApiError::not_found)?
            };
            gen.request.images = tokio::task::spawn_blocking(move || images::prepare(&dir, &raw))
                .await
                .map_err(|e| {
                    ApiError::bad_request("messages", format!("decoding the images failed: {e}"))
                })??;
        }
        Ok::<_, ApiError>((gen, req.sampling))
    }
    .await;
    match result {
        Ok((gen, s)) => answer(app, gen, s, Kind::Chat).await,
        Err(e) => e.into_response(),
    }
}

pub async fn completions(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    let result = async {
        let Json(req) = body.map_err(json_error)?;
        let prompt = prompt::text_prompt(&req)?;
        let gen = request(&app, &req.sampling, prompt, &headers)?;
        Ok::<_, ApiError>((gen, req.sampling))
    }
    .await;
    match result {
        Ok((gen, s)) => answer(app, gen, s, Kind::Text).await,
        Err(e) => e.into_response(),
    }
}

/// What the daemon sends a request, as the front needs it.
enum Next {
    Token(String),
    Reply(ControlReply),
}

async fn next(rx: &mut mpsc::Receiver<FromDaemon>) -> Option<Next> {
    while let Some(msg) = rx.recv().await {
        match msg {
            FromDaemon::Event {
                event: ControlEvent::Worker(Event::Token { text, .. }),
                ..
            } => return Some(Next::Token(text)),
            FromDaemon::Reply { body, .. } => return Some(Next::Reply(body)),
            _ => {}
        }
    }
    None
}

/// A reply that is not `Done`, as an API error.
fn reply_error(reply: ControlReply) -> ApiError {
    match reply {
        ControlReply::Failed(f) => ApiError::failure(f),
        ControlReply::BadRequest { message } => ApiError::bad_request("model", message),
        ControlReply::Cancelled => ApiError {
            status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            message: "the request was cancelled".into(),
            kind: "cancelled".into(),
            param: None,
            failure: None,
        },
        other => ApiError {
            status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("unexpected reply from the daemon: {other:?}"),
            kind: "internal_error".into(),
            param: None,
            failure: None,
        },
    }
}

async fn answer(app: App, gen: GenerateModel, s: Sampling, kind: Kind) -> Response {
    // A name is looked up in the model folders (directory listings): off the runtime.
    let found = {
        let shared = std::sync::Arc::clone(&app.shared);
        let name = gen.model.clone();
        tokio::task::spawn_blocking(move || shared.slot_for(&name)).await
    };
    let slot = match found {
        Ok(Ok(slot)) => slot,
        Ok(Err(message)) => return ApiError::not_found(message).into_response(),
        Err(e) => {
            return ApiError::not_found(format!("looking the model up failed: {e}")).into_response()
        }
    };
    let (tx, mut rx) = mpsc::channel(crate::daemon::models::CLIENT_BUFFER);
    let cancel = CancellationToken::new();
    // Dropped when the client goes away (axum drops this future, or the stream).
    let guard = cancel.clone().drop_guard();
    // A stream starts once the prompt is known to fit the loaded model's context.
    let (checked_tx, checked) = oneshot::channel();
    let job = Job {
        req: gen,
        resp: Responder::new(0, tx),
        cancel,
        checked: s.stream.then_some(checked_tx),
    };
    if slot.cmds.send(ModelCmd::Generate(job)).is_err() {
        return ApiError::bad_request("model", "the daemon is shutting down").into_response();
    }
    let id = format!(
        "{}-{}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    );
    let created = now_secs();
    let model = s.model.clone();
    if !s.stream {
        let mut text = String::new();
        loop {
            match next(&mut rx).await {
                Some(Next::Token(t)) => text.push_str(&t),
                Some(Next::Reply(ControlReply::Done(d))) => {
                    drop(guard);
                    let usage = Usage::of(&d.done);
                    let finish = finish_reason(d.done.finish);
                    return match kind {
                        Kind::Chat => Json(ChatCompletion {
                            id,
                            object: "chat.completion",
                            created,
                            model,
                            choices: vec![ChatChoice {
                                index: 0,
                                message: AssistantMessage {
                                    role: "assistant",
                                    content: text,
                                },
                                finish_reason: finish,
                            }],
                            usage,
                        })
                        .into_response(),
                        Kind::Text => Json(TextCompletion {
                            id,
                            object: "text_completion",
                            created,
                            model,
                            choices: vec![TextChoice {
                                index: 0,
                                text,
                                finish_reason: Some(finish),
                                logprobs: None,
                            }],
                            usage: Some(usage),
                        })
                        .into_response(),
                    };
                }
                Some(Next::Reply(other)) => return reply_error(other).into_response(),
                None => return reply_error(ControlReply::Cancelled).into_response(),
            }
        }
    }
    // Streamed: an early failure still gets its status. A refusal (a prompt over the
    // context, checked once the model is loaded, however long that takes) comes before
    // the check's word; then the first token is waited for briefly.
    let early = tokio::select! {
        biased;
        _ = checked => None,
        n = next(&mut rx) => Some(n),
    };
    let first = match early {
        Some(n) => Ok(n),
        None => tokio::time::timeout(FIRST_TOKEN_WAIT, next(&mut rx)).await,
    };
    let first = match first {
        Ok(Some(Next::Reply(ControlReply::Done(d)))) => Some(Next::Reply(ControlReply::Done(d))),
        Ok(Some(Next::Reply(other))) => return reply_error(other).into_response(),
        Ok(None) => return reply_error(ControlReply::Cancelled).into_response(),
        Ok(Some(Next::Token(t))) => Some(Next::Token(t)),
        Err(_) => None,
    };
    let include_usage = s.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let chunks = Chunks {
        id,
        created,
        model,
        kind,
    };
    let (etx, erx) = mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        let _guard = guard;
        stream(chunks, first, rx, etx, include_usage).await;
    });
    let body = futures::stream::unfold(erx, |mut erx| async move {
        erx.recv().await.map(|e| (Ok::<_, Infallible>(e), erx))
    });
    Sse::new(body)
        .keep_alive(
            KeepAlive::new()
                .interval(KEEP_ALIVE_INTERVAL)
                .text("keep-alive"),
        )
        .into_response()
}

/// Builds the stream's chunks in the endpoint's shape.
struct Chunks {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

impl Chunks {
    fn event(
        &self,
        text: Option<String>,
        role: bool,
        finish: Option<&'static str>,
        usage: Option<Usage>,
    ) -> SseEvent {
        let data = match self.kind {
            Kind::Chat => serde_json::to_string(&ChatChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                choices: if usage.is_some() && text.is_none() && finish.is_none() {
                    vec![]
                } else {
                    vec![ChunkChoice {
                        index: 0,
                        delta: Delta {
                            role: role.then_some("assistant"),
                            content: text,
                        },
                        finish_reason: finish,
                    }]
                },
                usage,
            }),
            Kind::Text => serde_json::to_string(&TextCompletion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: if usage.is_some() && text.is_none() && finish.is_none() {
                    vec![]
                } else {
                    vec![TextChoice {
                        index: 0,
                        text: text.unwrap_or_default(),
                        finish_reason: finish,
                        logprobs: None,
                    }]
                },
                usage,
            }),
        };
        SseEvent::default().data(data.unwrap_or_default())
    }
}

/// Pumps the daemon's events into SSE events until the end; a client gone (the
/// receiver dropped) ends it, and the guard then cancels the request.
async fn stream(
    chunks: Chunks,
    first: Option<Next>,
    mut rx: mpsc::Receiver<FromDaemon>,
    out: mpsc::Sender<SseEvent>,
    include_usage: bool,
) {
    if chunks.kind == Kind::Chat
        && out
            .send(chunks.event(None, true, None, None))
            .await
            .is_err()
    {
        return;
    }
    let mut pending = first;
    loop {
        let item = match pending.take() {
            Some(n) => Some(n),
            None => tokio::select! {
                n = next(&mut rx) => n,
                _ = out.closed() => return,
            },
        };
        let event = match item {
            Some(Next::Token(t)) => chunks.event(Some(t), false, None, None),
            Some(Next::Reply(ControlReply::Done(d))) => {
                let finish = finish_reason(d.done.finish);
                if out
                    .send(chunks.event(None, false, Some(finish), None))
                    .await
                    .is_err()
                {
                    return;
                }
                if include_usage {
                    let usage = Usage::of(&d.done);
                    let _ = out.send(chunks.event(None, false, None, Some(usage))).await;
                }
                let _ = out.send(SseEvent::default().data("[DONE]")).await;
                return;
            }
            Some(Next::Reply(other)) => {
                // After the stream began: one event carrying the error, then the end.
                let body = reply_error(other).body();
                let _ = out.send(SseEvent::default().data(body.to_string())).await;
                return;
            }
            None => return,
        };
        if out.send(event).await.is_err() {
            return;
        }
    }
}
