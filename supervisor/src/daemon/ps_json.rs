//! A model's `ps` row as JSON (`ps --json`, `load --json`, the HTTP front's `/api/ps`):
//! the control protocol's fields, with `keep_alive_until` in RFC 3339 beside them.

use std::time::Duration;

use protocol::control::ModelStatus;
use serde_json::{json, Value};

/// A model's row as JSON: `keep_alive_until` in RFC 3339 beside the raw fields.
pub fn status_json(s: &ModelStatus) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    let until = s.keep_alive_until_ms.map(|ms| {
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
            .to_string()
    });
    if let Value::Object(m) = &mut v {
        m.insert("keep_alive_until".into(), json!(until));
    }
    v
}
