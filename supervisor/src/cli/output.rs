//! What `mlxsup run` shows: JSON Lines events (`--json`, docs/CONTRACT.md) or a person's view
//! (streamed text on stdout; estimate, progress, summary and failure reports on stderr).

use std::io::{IsTerminal, Write};

use estimate::{Bytes, Estimate};
use protocol::{DoneInfo, Failure, LoadInfo, Telemetry, VisionPeak};
use serde::Serialize;

/// The sink for one run's events.
pub struct Output {
    json: bool,
    color: bool,
    bar: Option<indicatif::ProgressBar>,
    /// The highest footprint and MLX peak seen in telemetry.
    pub max_footprint: u64,
    pub max_mlx_peak: u64,
    pub samples: u64,
    text_open: bool,
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
    pub fn new(json: bool) -> Output {
        Output {
            json,
            color: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            bar: None,
            max_footprint: 0,
            max_mlx_peak: 0,
            samples: 0,
            text_open: false,
            compute_dtype: None,
            planned_weights: None,
            planned_context: None,
            load_check: None,
            vision: None,
        }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// One JSON line: the value's fields with `"event": name` first.
    fn emit<T: Serialize>(&self, name: &str, value: &T) {
        let mut obj = serde_json::Map::new();
        obj.insert("event".into(), name.into());
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(value) {
            obj.extend(fields);
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", serde_json::Value::Object(obj));
        let _ = out.flush();
    }

    /// A line for a person, on stderr.
    pub fn note(&mut self, line: &str) {
        if self.json {
            return;
        }
        self.close_text();
        eprintln!("{line}");
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    pub fn estimate(&mut self, est: &Estimate) {
        self.planned_weights = Some(est.weights.bytes);
        self.planned_context = Some(est.kv_cache.context);
        if self.json {
            self.emit("estimate", est);
            return;
        }
        let verdict = match est.verdict {
            estimate::Verdict::Fits => self.paint("1;32", est.verdict.as_str()),
            estimate::Verdict::Tight => self.paint("1;33", est.verdict.as_str()),
            estimate::Verdict::DoesNotFit => self.paint("1;31", est.verdict.as_str()),
        };
        let text = format!(
            "KV {} (context {}) + activations {}",
            Bytes(est.kv_cache.bytes),
            est.kv_cache.context,
            Bytes(est.activation.bytes),
        );
        let run = match &est.vision {
            // The tower runs first and frees what it allocated: the larger phase counts.
            Some(v) => format!(
                "the larger of ({text}) and the vision tower {} ({} image{})",
                Bytes(v.activation_bytes),
                v.images,
                if v.images == 1 { "" } else { "s" }
            ),
            None => text,
        };
        self.note(&format!(
            "mlxsup: {} ({}): weights {}{} + {run} + overhead {} = {} of {} budget: {verdict}",
            est.model,
            est.architecture,
            Bytes(est.weights.bytes),
            if est.weights.compute_f32 {
                " (as f32 compute)"
            } else {
                ""
            },
            Bytes(est.overhead_bytes),
            Bytes(est.total_bytes),
            Bytes(est.budget_bytes),
        ));
    }

    /// The estimate as the daemon sends it (the JSON object of `inspect --json`).
    pub fn estimate_json(&mut self, json: &str) {
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(json)
        else {
            return;
        };
        let kv = fields.get("kv_cache");
        let context = kv.and_then(|k| k.get("context")).and_then(|v| v.as_u64());
        self.planned_context = context;
        self.planned_weights = fields
            .get("weights")
            .and_then(|w| w.get("bytes"))
            .and_then(|v| v.as_u64());
        if self.json {
            self.emit("estimate", &fields);
            return;
        }
        let n = |k: &str| fields.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let f32 = fields
            .get("weights")
            .and_then(|w| w.get("compute_f32"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        self.note(&format!(
            "mlxsup: {}: {} of {} budget at context {}{}: {}",
            fields.get("model").and_then(|v| v.as_str()).unwrap_or("?"),
            Bytes(n("total_bytes")),
            Bytes(n("budget_bytes")),
            context.unwrap_or(0),
            if f32 { ", f32 compute" } else { "" },
            fields
                .get("verdict")
                .and_then(|v| v.as_str())
                .unwrap_or("?"),
        ));
    }

    /// A line from the daemon for a person (`{"event": "note"}` in JSON).
    pub fn note_event(&mut self, text: &str) {
        if self.json {
            #[derive(Serialize)]
            struct Note<'a> {
                text: &'a str,
            }
            self.emit("note", &Note { text });
            return;
        }
        self.note(&format!("mlxsup: {text}"));
    }

    pub fn progress(&mut self, done: u64, total: u64) {
        if self.json || !std::io::stderr().is_terminal() || total == 0 {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "loading {bar:30} {binary_bytes}/{binary_total_bytes} {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        bar.set_position(done);
    }

    pub fn loaded(&mut self, info: &LoadInfo) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.compute_dtype = Some(info.compute_dtype.clone());
        let check = self
            .planned_weights
            .map(|w| LoadCheck::new(w, info.active_bytes));
        self.load_check = check;
        let warning = check.and_then(|c| c.warning());
        if self.json {
            #[derive(Serialize)]
            struct Loaded<'a> {
                #[serde(flatten)]
                info: &'a LoadInfo,
                #[serde(flatten)]
                check: Option<LoadCheck>,
                weight_warning: Option<&'a str>,
            }
            self.emit(
                "loaded",
                &Loaded {
                    info,
                    check,
                    weight_warning: warning.as_deref(),
                },
            );
            return;
        }
        self.note(&format!(
            "mlxsup: loaded {} in {} ms on the {}, computing in {}: MLX holds {} (peak {}){}",
            info.architecture,
            info.load_ms,
            info.device,
            info.compute_dtype,
            Bytes(info.active_bytes),
            Bytes(info.peak_bytes),
            check.map_or(String::new(), |c| format!(", {}", c.describe()))
        ));
        if let Some(w) = warning {
            self.note(&format!("mlxsup: warning: {w}"));
        }
    }

    pub fn token(&mut self, id: u32, text: &str) {
        if self.json {
            #[derive(Serialize)]
            struct Token<'a> {
                text: &'a str,
                id: u32,
            }
            self.emit("token", &Token { text, id });
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        self.text_open = true;
    }

    /// The vision tower ran: what it used against what was predicted for it.
    pub fn vision(&mut self, v: &VisionPeak) {
        self.vision = Some(v.clone());
        if self.json {
            #[derive(Serialize)]
            struct Vision<'a> {
                #[serde(flatten)]
                peak: &'a VisionPeak,
                error_pct: Option<f64>,
            }
            self.emit(
                "vision",
                &Vision {
                    peak: v,
                    error_pct: vision_error_pct(v),
                },
            );
            return;
        }
        self.note(&format!(
            "mlxsup: vision tower: {} image{}, {} patches, used {} (predicted {})",
            v.patches.len(),
            if v.patches.len() == 1 { "" } else { "s" },
            v.patches.iter().sum::<u64>(),
            Bytes(v.activation_bytes),
            Bytes(v.predicted_bytes),
        ));
    }

    pub fn telemetry(&mut self, t: &Telemetry) {
        self.samples += 1;
        self.max_footprint = self.max_footprint.max(t.footprint_bytes);
        self.max_mlx_peak = self.max_mlx_peak.max(t.peak_bytes);
        if self.json {
            self.emit("telemetry", t);
        }
    }

    fn close_text(&mut self) {
        if self.text_open {
            println!();
            self.text_open = false;
        }
    }

    /// The summary. `used` is the estimate at the context the run used, when known.
    pub fn done(&mut self, d: &DoneInfo, estimate_bytes: u64, used: Option<UsedEstimate>) {
        let error_pct = used
            .filter(|u| d.peak_bytes > 0 && u.estimate_used_bytes > 0)
            .map(|u| {
                (u.estimate_used_bytes as f64 - d.peak_bytes as f64) / d.peak_bytes as f64 * 100.0
            });
        if self.json {
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
            self.emit(
                "done",
                &Done {
                    done: d,
                    estimate_bytes,
                    planned_context: self.planned_context,
                    used,
                    estimate_error_pct: error_pct,
                    load_check: self.load_check,
                    max_footprint_bytes: self.max_footprint,
                    telemetry_samples: self.samples,
                    compute_dtype: self.compute_dtype.as_deref(),
                },
            );
            return;
        }
        let planned = format!(
            "planned {}{}",
            Bytes(estimate_bytes),
            self.planned_context
                .map_or(String::new(), |c| format!(" at context {c}"))
        );
        let versus = match (used, error_pct) {
            (Some(u), Some(e)) => format!(
                "estimate {} at the {} tokens used ({e:+.1}%), {planned}",
                Bytes(u.estimate_used_bytes),
                u.context_used
            ),
            _ => planned,
        };
        let weights = self
            .load_check
            .map_or(String::new(), |c| format!("; {}", c.describe()));
        self.note(&format!(
            "mlxsup: {} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s ({}{}); MLX peak {} vs {versus}{weights}; footprint peak {} over {} samples",
            d.prompt_tokens,
            d.prompt_tps,
            d.generated_tokens,
            d.generation_tps,
            serde_json::to_value(d.finish).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            self.compute_dtype.as_deref().map(|c| format!(", {c}")).unwrap_or_default(),
            Bytes(d.peak_bytes),
            Bytes(self.max_footprint),
            self.samples,
        ));
    }

    pub fn failure(&mut self, f: &Failure) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
        if self.json {
            self.emit("failure", f);
            return;
        }
        if f.kind.is_refusal() {
            let head = self.paint("1;31", &format!("refused by the preflight: {}", f.kind));
            let msg = f.message.as_deref().unwrap_or_default();
            self.note(&format!("mlxsup: {head}: {msg}\n  advice:   {}", f.advice));
            return;
        }
        let head = self.paint("1;31", &format!("worker failed: {}", f.kind));
        let how = match (&f.signal, f.exit_code) {
            (Some(s), _) => format!("{s}{}", if f.core_dumped { " (core dumped)" } else { "" }),
            (None, Some(c)) => format!("exit code {c}"),
            (None, None) => "still alive".into(),
        };
        let mut lines = vec![format!(
            "mlxsup: {head} during {} after {} ms ({how})",
            f.phase, f.duration_ms
        )];
        if let Some(m) = &f.message {
            lines.push(format!("  message:  {m}"));
        }
        let peak = f.peak_bytes.map_or("?".into(), |p| Bytes(p).to_string());
        let est = f
            .estimate_bytes
            .map_or("?".into(), |p| Bytes(p).to_string());
        let budget = f.budget_bytes.map_or("?".into(), |p| Bytes(p).to_string());
        lines.push(format!(
            "  memory:   peak {peak}, estimate {est}, budget {budget}"
        ));
        if let Some(t) = f.last_telemetry.last() {
            lines.push(format!(
                "  last sample at {} ms: MLX active {}, footprint {}",
                t.t_ms,
                Bytes(t.active_bytes),
                Bytes(t.footprint_bytes)
            ));
        }
        if !f.stderr_tail.is_empty() {
            lines.push("  stderr tail:".into());
            for l in f
                .stderr_tail
                .lines()
                .rev()
                .take(6)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                lines.push(format!("    {l}"));
            }
        }
        lines.push(format!("  advice:   {}", f.advice));
        self.note(&lines.join("\n"));
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
