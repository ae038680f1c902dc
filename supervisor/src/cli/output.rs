//! What `mlxsup run` and `generate` show: JSON Lines events (`--json`, docs/CONTRACT.md)
//! or a person's view (streamed text on stdout; estimate, progress, summary and failure
//! reports on stderr). [`Output`] keeps what a run's events tell (the peaks, the planned
//! context, the post-load check) and hands each event to the one [`Reporter`] of the
//! chosen form: [`json_lines::JsonLines`] or [`people::People`].

mod json_lines;
mod people;

use estimate::{Bytes, Estimate};
use protocol::{DoneInfo, Failure, LoadInfo, Telemetry, VisionPeak};
use serde::Serialize;

/// One output form: how each event of a run is shown. Every method is one event; what
/// the events add up to is [`Output`]'s, and comes in as arguments.
pub trait Reporter {
    /// A line for a person (nothing in JSON Lines).
    fn note(&mut self, line: &str);
    /// The preflight's estimate.
    fn estimate(&mut self, est: &Estimate);
    /// The estimate as the daemon sends it: its typed figures and the `inspect --json`
    /// object.
    fn estimate_event(&mut self, est: &protocol::estimate::Estimate);
    /// A line from the daemon for a person (`{"event": "note"}` in JSON).
    fn note_event(&mut self, text: &str);
    /// Loading progress, in bytes of weights.
    fn progress(&mut self, done: u64, total: u64);
    /// The model is loaded; the post-load check and its warning when there is one.
    fn loaded(&mut self, info: &LoadInfo, check: Option<LoadCheck>, warning: Option<&str>);
    /// Newly decoded text.
    fn token(&mut self, id: u32, text: &str);
    /// The vision tower ran: what it used against what was predicted for it.
    fn vision(&mut self, v: &VisionPeak);
    /// A memory sample.
    fn telemetry(&mut self, t: &Telemetry);
    /// The summary of a finished generation.
    fn done(&mut self, s: &Summary<'_>);
    /// The failure report.
    fn failure(&mut self, f: &Failure);
}

/// What the summary of a finished generation says: the worker's numbers and what the
/// run's events added up to.
pub struct Summary<'a> {
    pub done: &'a DoneInfo,
    pub estimate_bytes: u64,
    pub planned_context: Option<u64>,
    /// The estimate at the context the run used, when known.
    pub used: Option<UsedEstimate>,
    /// (estimate at the used context − peak) / peak, in percent.
    pub error_pct: Option<f64>,
    pub load_check: Option<LoadCheck>,
    pub max_footprint: u64,
    pub samples: u64,
    pub compute_dtype: Option<&'a str>,
}

/// The sink for one run's events: what they tell, and the form that shows them.
pub struct Output {
    report: Box<dyn Reporter>,
    /// The highest footprint and MLX peak seen in telemetry.
    pub max_footprint: u64,
    pub max_mlx_peak: u64,
    pub samples: u64,
    /// The compute dtype the worker reported at load.
    compute_dtype: Option<String>,
    /// The estimate's weight bytes and planned context (from the estimate event).
    planned_weights: Option<u64>,
    planned_context: Option<u64>,
    /// The post-load check, once the worker has loaded.
    pub load_check: Option<LoadCheck>,
    /// What the vision tower used, for a run with images.
    pub vision: Option<VisionPeak>,
}

/// Post-load validation: MLX's active memory right after the load against the weight
/// bytes the estimate predicted (mlxcel's acceptance criterion).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LoadCheck {
    /// The estimate's weight bytes.
    pub predicted_weight_bytes: u64,
    /// MLX active memory after the load.
    pub active_bytes: u64,
    /// active − predicted.
    pub weight_delta_bytes: i64,
    /// (active − predicted) / predicted, in percent.
    pub weight_delta_pct: f64,
}

/// Above this |delta|, the post-load check is a warning.
pub const WEIGHT_DELTA_WARN_PCT: f64 = 2.0;

impl LoadCheck {
    pub fn new(predicted_weight_bytes: u64, active_bytes: u64) -> LoadCheck {
        let delta = active_bytes as i128 - predicted_weight_bytes as i128;
        LoadCheck {
            predicted_weight_bytes,
            active_bytes,
            weight_delta_bytes: delta.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
            weight_delta_pct: if predicted_weight_bytes > 0 {
                delta as f64 / predicted_weight_bytes as f64 * 100.0
            } else {
                0.0
            },
        }
    }

    /// The warning, when the delta is over [`WEIGHT_DELTA_WARN_PCT`].
    pub fn warning(&self) -> Option<String> {
        (self.weight_delta_pct.abs() > WEIGHT_DELTA_WARN_PCT).then(|| {
            format!(
                "after the load MLX holds {} but the estimate predicted {} of weights ({:+.1}%)",
                Bytes(self.active_bytes),
                Bytes(self.predicted_weight_bytes),
                self.weight_delta_pct
            )
        })
    }

    /// The delta in words: `weights +0.0% vs the predicted 5 MiB`.
    pub fn describe(&self) -> String {
        format!(
            "weights {:+.1}% vs the predicted {}",
            self.weight_delta_pct,
            Bytes(self.predicted_weight_bytes)
        )
    }
}

/// The estimate at the context a run actually used (prompt + generated), beside the one
/// it was planned with: what the summary compares the peak with.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct UsedEstimate {
    /// Prompt + generated tokens.
    pub context_used: u64,
    /// The estimate at that context.
    pub estimate_used_bytes: u64,
}

impl Output {
    /// JSON Lines on stdout when `json`, else the view for a person.
    pub fn new(json: bool) -> Output {
        let report: Box<dyn Reporter> = if json {
            Box::new(json_lines::JsonLines)
        } else {
            Box::new(people::People::new())
        };
        Output {
            report,
            max_footprint: 0,
            max_mlx_peak: 0,
            samples: 0,
            compute_dtype: None,
            planned_weights: None,
            planned_context: None,
            load_check: None,
            vision: None,
        }
    }

    /// A line for a person, on stderr (nothing in JSON Lines).
    pub fn note(&mut self, line: &str) {
        self.report.note(line);
    }

    pub fn estimate(&mut self, est: &Estimate) {
        self.planned_weights = Some(est.weights.bytes);
        self.planned_context = Some(est.kv_cache.context);
        self.report.estimate(est);
    }

    /// The estimate as the daemon sends it: its typed figures, and the `inspect --json`
    /// object for JSON output.
    pub fn estimate_event(&mut self, est: &protocol::estimate::Estimate) {
        self.planned_context = Some(est.context);
        self.planned_weights = Some(est.weights_bytes.get());
        self.report.estimate_event(est);
    }

    /// A line from the daemon for a person (`{"event": "note"}` in JSON).
    pub fn note_event(&mut self, text: &str) {
        self.report.note_event(text);
    }

    pub fn progress(&mut self, done: u64, total: u64) {
        self.report.progress(done, total);
    }

    pub fn loaded(&mut self, info: &LoadInfo) {
        self.compute_dtype = Some(info.compute_dtype.clone());
        let check = self
            .planned_weights
            .map(|w| LoadCheck::new(w, info.active_bytes));
        self.load_check = check;
        let warning = check.and_then(|c| c.warning());
        self.report.loaded(info, check, warning.as_deref());
    }

    pub fn token(&mut self, id: u32, text: &str) {
        self.report.token(id, text);
    }

    /// The vision tower ran: what it used against what was predicted for it.
    pub fn vision(&mut self, v: &VisionPeak) {
        self.vision = Some(v.clone());
        self.report.vision(v);
    }

    pub fn telemetry(&mut self, t: &Telemetry) {
        self.samples += 1;
        self.max_footprint = self.max_footprint.max(t.footprint_bytes);
        self.max_mlx_peak = self.max_mlx_peak.max(t.peak_bytes);
        self.report.telemetry(t);
    }

    /// The summary. `used` is the estimate at the context the run used, when known.
    pub fn done(&mut self, d: &DoneInfo, estimate_bytes: u64, used: Option<UsedEstimate>) {
        let error_pct = used
            .filter(|u| d.peak_bytes > 0 && u.estimate_used_bytes > 0)
            .map(|u| {
                (u.estimate_used_bytes as f64 - d.peak_bytes as f64) / d.peak_bytes as f64 * 100.0
            });
        self.report.done(&Summary {
            done: d,
            estimate_bytes,
            planned_context: self.planned_context,
            used,
            error_pct,
            load_check: self.load_check,
            max_footprint: self.max_footprint,
            samples: self.samples,
            compute_dtype: self.compute_dtype.as_deref(),
        });
    }

    pub fn failure(&mut self, f: &Failure) {
        self.report.failure(f);
    }
}

/// (predicted − measured) / measured of the vision term, in percent.
fn vision_error_pct(v: &VisionPeak) -> Option<f64> {
    (v.activation_bytes > 0).then(|| {
        (v.predicted_bytes as f64 - v.activation_bytes as f64) / v.activation_bytes as f64 * 100.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weight_check_warns_over_two_percent_naming_both_figures() {
        let ok = LoadCheck::new(100 << 20, (100 << 20) + (1 << 20));
        assert!(ok.warning().is_none());
        assert!((ok.weight_delta_pct - 1.0).abs() < 1e-9);
        let off = LoadCheck::new(100 << 20, 103 << 20);
        let w = off.warning().unwrap_or_default();
        assert!(
            w.contains("103 MiB") && w.contains("100 MiB") && w.contains("+3.0%"),
            "{w}"
        );
        let under = LoadCheck::new(100 << 20, 90 << 20);
        assert_eq!(under.weight_delta_bytes, -(10 << 20));
        assert!(under.warning().is_some());
    }
}
