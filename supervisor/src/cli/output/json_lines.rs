//! The JSON Lines form (`--json`): one object a line on stdout, `"event"` naming it, as
//! docs/CONTRACT.md describes; nothing for a person.

use std::io::Write;

use estimate::Estimate;
use protocol::{DoneInfo, Failure, LoadInfo, Telemetry, VisionPeak};
use serde::Serialize;

use super::{vision_error_pct, LoadCheck, Reporter, Summary, UsedEstimate};

/// JSON Lines on stdout.
pub struct JsonLines;

/// One JSON line: the value's fields with `"event": name` first.
fn emit<T: Serialize>(name: &str, value: &T) {
    let mut obj = serde_json::Map::new();
    obj.insert("event".into(), name.into());
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(value) {
        obj.extend(fields);
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::Value::Object(obj));
    let _ = out.flush();
}

impl Reporter for JsonLines {
    fn note(&mut self, _line: &str) {}

    fn estimate(&mut self, est: &Estimate) {
        emit("estimate", est);
    }

    fn estimate_event(&mut self, est: &protocol::estimate::Estimate) {
        if let Ok(fields) = serde_json::from_str::<serde_json::Value>(est.report.get()) {
            emit("estimate", &fields);
        }
    }

    fn note_event(&mut self, text: &str) {
        #[derive(Serialize)]
        struct Note<'a> {
            text: &'a str,
        }
        emit("note", &Note { text });
    }

    fn progress(&mut self, _done: u64, _total: u64) {}

    fn loaded(&mut self, info: &LoadInfo, check: Option<LoadCheck>, warning: Option<&str>) {
        #[derive(Serialize)]
        struct Loaded<'a> {
            #[serde(flatten)]
            info: &'a LoadInfo,
            #[serde(flatten)]
            check: Option<LoadCheck>,
            weight_warning: Option<&'a str>,
        }
        emit(
            "loaded",
            &Loaded {
                info,
                check,
                weight_warning: warning,
            },
        );
    }

    fn token(&mut self, id: u32, text: &str) {
        #[derive(Serialize)]
        struct Token<'a> {
            text: &'a str,
            id: u32,
        }
        emit("token", &Token { text, id });
    }

    fn vision(&mut self, v: &VisionPeak) {
        #[derive(Serialize)]
        struct Vision<'a> {
            #[serde(flatten)]
            peak: &'a VisionPeak,
            error_pct: Option<f64>,
        }
        emit(
            "vision",
            &Vision {
                peak: v,
                error_pct: vision_error_pct(v),
            },
        );
    }

    fn telemetry(&mut self, t: &Telemetry) {
        emit("telemetry", t);
    }

    fn done(&mut self, s: &Summary<'_>) {
        #[derive(Serialize)]
        struct Done<'a> {
            #[serde(flatten)]
            done: &'a DoneInfo,
            estimate_bytes: u64,
            planned_context: Option<u64>,
            #[serde(flatten)]
            used: Option<UsedEstimate>,
            estimate_error_pct: Option<f64>,
            #[serde(flatten)]
            load_check: Option<LoadCheck>,
            max_footprint_bytes: u64,
            telemetry_samples: u64,
            compute_dtype: Option<&'a str>,
        }
        emit(
            "done",
            &Done {
                done: s.done,
                estimate_bytes: s.estimate_bytes,
                planned_context: s.planned_context,
                used: s.used,
                estimate_error_pct: s.error_pct,
                load_check: s.load_check,
                max_footprint_bytes: s.max_footprint,
                telemetry_samples: s.samples,
                compute_dtype: s.compute_dtype,
            },
        );
    }

    fn failure(&mut self, f: &Failure) {
        emit("failure", f);
    }
}
