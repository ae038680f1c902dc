//! What `mlxsup run` shows: JSON Lines events (`--json`, docs/CONTRACT.md) or a person's view
//! (streamed text on stdout; estimate, progress, summary and failure reports on stderr).

use std::io::{IsTerminal, Write};

use estimate::{Bytes, Estimate};
use protocol::{DoneInfo, Failure, LoadInfo, Telemetry};
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
        if self.json {
            self.emit("estimate", est);
            return;
        }
        let verdict = match est.verdict {
            estimate::Verdict::Fits => self.paint("1;32", est.verdict.as_str()),
            estimate::Verdict::Tight => self.paint("1;33", est.verdict.as_str()),
            estimate::Verdict::DoesNotFit => self.paint("1;31", est.verdict.as_str()),
        };
        self.note(&format!(
            "mlxsup: {} ({}): weights {}{} + KV {} (context {}) + activations {} + overhead {} = {} of {} budget: {verdict}",
            est.model,
            est.architecture,
            Bytes(est.weights.bytes),
            if est.weights.compute_f32 { " (as f32 compute)" } else { "" },
            Bytes(est.kv_cache.bytes),
            est.kv_cache.context,
            Bytes(est.activation_bytes),
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
        if self.json {
            self.emit("estimate", &fields);
            return;
        }
        let n = |k: &str| fields.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let kv = fields.get("kv_cache");
        let context = kv.and_then(|k| k.get("context")).and_then(|v| v.as_u64());
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
        if self.json {
            self.emit("loaded", info);
            return;
        }
        self.note(&format!(
            "mlxsup: loaded {} in {} ms on the {}, computing in {}: MLX holds {} (peak {})",
            info.architecture,
            info.load_ms,
            info.device,
            info.compute_dtype,
            Bytes(info.active_bytes),
            Bytes(info.peak_bytes)
        ));
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

    pub fn done(&mut self, d: &DoneInfo, estimate_bytes: u64) {
        if self.json {
            #[derive(Serialize)]
            struct Done<'a> {
                #[serde(flatten)]
                done: &'a DoneInfo,
                estimate_bytes: u64,
                max_footprint_bytes: u64,
                telemetry_samples: u64,
                compute_dtype: Option<&'a str>,
            }
            self.emit(
                "done",
                &Done {
                    done: d,
                    estimate_bytes,
                    max_footprint_bytes: self.max_footprint,
                    telemetry_samples: self.samples,
                    compute_dtype: self.compute_dtype.as_deref(),
                },
            );
            return;
        }
        let ratio = if estimate_bytes > 0 {
            format!(
                " ({:.0}% of it)",
                d.peak_bytes as f64 / estimate_bytes as f64 * 100.0
            )
        } else {
            String::new()
        };
        self.note(&format!(
            "mlxsup: {} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s ({}{}); MLX peak {} vs estimate {}{ratio}; footprint peak {} over {} samples",
            d.prompt_tokens,
            d.prompt_tps,
            d.generated_tokens,
            d.generation_tps,
            serde_json::to_value(d.finish).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            self.compute_dtype.as_deref().map(|c| format!(", {c}")).unwrap_or_default(),
            Bytes(d.peak_bytes),
            Bytes(estimate_bytes),
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
        if f.kind == protocol::FailureKind::InsufficientMemory {
            let head = self.paint("1;31", "refused by the preflight: insufficient_memory");
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
