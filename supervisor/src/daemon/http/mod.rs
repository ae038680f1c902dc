//! The OpenAI-compatible HTTP front of the daemon (`serve --http ADDR`), on axum and the
//! daemon's runtime: chat and text completions ([`completions`], SSE when streamed),
//! the model list, health, and a status endpoint in the spirit of Ollama's `/api/ps`.
//! It is a front: admission, queues and the restart policy are the daemon's; errors are
//! OpenAI's shape with our failure inside ([`error`]).

pub mod completions;
pub mod error;
pub mod images;
pub mod openai;
pub mod prompt;

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::header,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::json;

use super::Shared;
use error::ApiError;
use openai::ModelCard;

/// What the handlers share.
#[derive(Clone)]
pub struct App {
    pub shared: Arc<Shared>,
    /// Requests must carry `Authorization: Bearer KEY`.
    pub api_key: Option<Arc<str>>,
    /// Tests: honour the fault-injection header.
    pub allow_faults: bool,
}

/// The routes.
pub fn router(app: App) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(completions::chat))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(models))
        .route("/api/ps", get(ps))
        .route_layer(middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .with_state(app)
}

async fn auth(State(app): State<App>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

async fn health(State(app): State<App>) -> Response {
    let s = app.shared.status();
    Json(json!({
        "status": "ok",
        "version": s.version,
        "pid": s.pid,
        "uptime_ms": s.uptime_ms,
        "models": s.models,
    }))
    .into_response()
}

/// `GET /v1/models`: every model the daemon can see or holds.
async fn models(State(app): State<App>) -> Response {
    let shared = Arc::clone(&app.shared);
    let listed = tokio::task::spawn_blocking(move || (shared.ls(), shared.ps())).await;
    let Ok((entries, rows)) = listed else {
        return ApiError::bad_request("model", "listing the models failed").into_response();
    };
    let state_of = |path: &str| {
        rows.iter()
            .find(|r| std::fs::canonicalize(path).is_ok_and(|p| p.display().to_string() == r.model))
            .map(|r| json!(r.state).as_str().unwrap_or("").to_string())
    };
    let mut data: Vec<ModelCard> = entries
        .iter()
        .map(|e| ModelCard {
            id: e.name.clone(),
            object: "model",
            created: 0,
            owned_by: "mlxsup",
            path: e.model.clone(),
            loaded: e.loaded,
            state: state_of(&e.model).unwrap_or_else(|| "unloaded".into()),
            size_bytes: e.size_bytes.get(),
            estimate_bytes: e.estimate_bytes.get(),
            context: e.context,
            verdict: e.verdict.clone(),
        })
        .collect();
    // Models asked for by path, outside the registry.
    for r in &rows {
        if !data.iter().any(|c| c.id == r.name || c.path == r.model) {
            data.push(ModelCard {
                id: r.model.clone(),
                object: "model",
                created: 0,
                owned_by: "mlxsup",
                path: r.model.clone(),
                loaded: r.pid.is_some(),
                state: json!(r.state).as_str().unwrap_or("").to_string(),
                size_bytes: 0,
                estimate_bytes: r.estimate_bytes,
                context: r.context,
                verdict: String::new(),
            });
        }
    }
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// `GET /api/ps`: the daemon's models with their telemetry, as `mlxsup ps --json`.
async fn ps(State(app): State<App>) -> Response {
    let rows: Vec<serde_json::Value> = app
        .shared
        .ps()
        .iter()
        .map(crate::daemon::ps_json::status_json)
        .collect();
    Json(json!({ "models": rows })).into_response()
}
