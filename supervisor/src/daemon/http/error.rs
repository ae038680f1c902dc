//! Errors in OpenAI's shape, `{"error": {"message", "type", "code", "param"}}`, with our
//! failure's kind, phase, advice and remedy beside them — and the one place a failure
//! kind becomes an HTTP status.

use axum::{
    http::{header, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use protocol::{Failure, FailureKind};
use serde_json::{json, Value};

/// An error the front answers with.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: String,
    pub param: Option<String>,
    pub failure: Option<Box<Failure>>,
}

impl ApiError {
    /// A bad request naming the parameter.
    pub fn bad_request(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error".into(),
            param: Some(param.into()),
            failure: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "model_not_found".into(),
            param: Some("model".into()),
            failure: None,
        }
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message:
                "a valid API key is required: send `Authorization: Bearer KEY` (serve --api-key)"
                    .into(),
            kind: "invalid_api_key".into(),
            param: None,
            failure: None,
        }
    }

    /// A daemon failure: its kind decides the status (a prompt longer than the context
    /// is the client's to fix: 400, OpenAI's `context_length_exceeded`).
    pub fn failure(f: Box<Failure>) -> ApiError {
        let context = f.kind == FailureKind::ContextLengthExceeded;
        ApiError {
            status: status_of(f.kind),
            param: context.then(|| "messages".to_string()),
            message: match &f.message {
                Some(m) if !f.advice.starts_with(m.as_str()) => {
                    format!("{}: {m}; {}", f.kind, f.advice)
                }
                _ => format!("{}: {}", f.kind, f.advice),
            },
            kind: f.kind.as_str().into(),
            failure: Some(f),
        }
    }

    /// The `error` object: OpenAI's fields and our evidence (`code` is the kind too:
    /// `context_length_exceeded` is OpenAI's code for a prompt over the context).
    pub fn body(&self) -> Value {
        let mut e = json!({
            "message": self.message,
            "type": self.kind,
            "code": self.kind,
            "param": self.param,
        });
        if let (Some(f), Value::Object(m)) = (&self.failure, &mut e) {
            m.insert("kind".into(), json!(f.kind));
            m.insert("phase".into(), json!(f.phase));
            m.insert("advice".into(), json!(f.advice));
            m.insert("remedy".into(), json!(f.remedy));
            m.insert("signal".into(), json!(f.signal));
            m.insert("exit_code".into(), json!(f.exit_code));
            m.insert("estimate_bytes".into(), json!(f.estimate_bytes));
            m.insert("budget_bytes".into(), json!(f.budget_bytes));
            m.insert("stderr_tail".into(), json!(f.stderr_tail));
            m.insert("stage".into(), json!(f.stage));
        }
        json!({ "error": e })
    }
}

/// The status of a failure kind.
pub fn status_of(kind: FailureKind) -> StatusCode {
    match kind {
        // mlx-knife's status for a deterministic memory refusal.
        FailureKind::InsufficientMemory => StatusCode::INSUFFICIENT_STORAGE,
        // The client's to fix: a shorter prompt or fewer tokens asked for.
        FailureKind::ContextLengthExceeded => StatusCode::BAD_REQUEST,
        FailureKind::Busy
        | FailureKind::Quarantined
        | FailureKind::ShuttingDown
        | FailureKind::Unloaded
        | FailureKind::SlowClient => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        let h = resp.headers_mut();
        let kind = self.failure.as_ref().map(|f| f.kind);
        match kind {
            // Deterministic: asking again gives the same answer.
            Some(FailureKind::InsufficientMemory)
            | Some(FailureKind::ContextLengthExceeded)
            | Some(FailureKind::Quarantined) => {
                h.insert(
                    HeaderName::from_static("x-should-retry"),
                    HeaderValue::from_static("false"),
                );
            }
            // Sending it again loads the model again.
            Some(FailureKind::Busy) | Some(FailureKind::Unloaded) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Some(FailureKind::ShuttingDown) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        if kind == Some(FailureKind::Quarantined) {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        }
        resp
    }
}
