//! The form for a person: the generated text streamed on stdout; the estimate, load
//! progress (a bar on a terminal), the summary and failure reports on stderr, in color on
//! a terminal unless `NO_COLOR` is set.

use std::io::{IsTerminal, Write};

use estimate::{Bytes, Estimate};
use protocol::{Failure, LoadInfo, Telemetry, VisionPeak};

use super::{LoadCheck, Reporter, Summary};

/// Lines for a person.
pub struct People {
    color: bool,
    bar: Option<indicatif::ProgressBar>,
    /// Generated text was written and its line is not ended yet.
    text_open: bool,
}

impl People {
    pub fn new() -> People {
        People {
            color: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            bar: None,
            text_open: false,
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    fn close_text(&mut self) {
        if self.text_open {
            println!();
            self.text_open = false;
        }
    }
}

impl Reporter for People {
    /// A line on stderr, after the generated text's line is ended.
    fn note(&mut self, line: &str) {
        self.close_text();
        eprintln!("{line}");
    }

    fn estimate(&mut self, est: &Estimate) {
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

    fn estimate_event(&mut self, est: &protocol::estimate::Estimate) {
        self.note(&format!(
            "mlxsup: {}: {} of {} budget at context {}{}: {}",
            est.model,
            Bytes(est.total_bytes.get()),
            Bytes(est.budget_bytes.get()),
            est.context,
            if est.compute_f32 { ", f32 compute" } else { "" },
            est.verdict.as_str(),
        ));
    }

    fn note_event(&mut self, text: &str) {
        self.note(&format!("mlxsup: {text}"));
    }

    fn progress(&mut self, done: u64, total: u64) {
        if !std::io::stderr().is_terminal() || total == 0 {
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

    fn loaded(&mut self, info: &LoadInfo, check: Option<LoadCheck>, warning: Option<&str>) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
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

    fn token(&mut self, _id: u32, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        self.text_open = true;
    }

    fn vision(&mut self, v: &VisionPeak) {
        self.note(&format!(
            "mlxsup: vision tower: {} image{}, {} patches, used {} (predicted {})",
            v.patches.len(),
            if v.patches.len() == 1 { "" } else { "s" },
            v.patches.iter().sum::<u64>(),
            Bytes(v.activation_bytes),
            Bytes(v.predicted_bytes),
        ));
    }

    /// Samples are summed up in the summary, not shown one by one.
    fn telemetry(&mut self, _t: &Telemetry) {}

    fn done(&mut self, s: &Summary<'_>) {
        let d = s.done;
        let planned = format!(
            "planned {}{}",
            Bytes(s.estimate_bytes),
            s.planned_context
                .map_or(String::new(), |c| format!(" at context {c}"))
        );
        let versus = match (s.used, s.error_pct) {
            (Some(u), Some(e)) => format!(
                "estimate {} at the {} tokens used ({e:+.1}%), {planned}",
                Bytes(u.estimate_used_bytes),
                u.context_used
            ),
            _ => planned,
        };
        let weights = s
            .load_check
            .map_or(String::new(), |c| format!("; {}", c.describe()));
        self.note(&format!(
            "mlxsup: {} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s ({}{}); MLX peak {} vs {versus}{weights}; footprint peak {} over {} samples",
            d.prompt_tokens,
            d.prompt_tps,
            d.generated_tokens,
            d.generation_tps,
            serde_json::to_value(d.finish).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            s.compute_dtype.map(|c| format!(", {c}")).unwrap_or_default(),
            Bytes(d.peak_bytes),
            Bytes(s.max_footprint),
            s.samples,
        ));
    }

    fn failure(&mut self, f: &Failure) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
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
