//! The end of the worker's stderr: a bounded ring of lines, each also logged.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Read},
    sync::{Arc, Mutex},
};

/// At most this many lines and bytes are kept.
const MAX_LINES: usize = 64;
const MAX_BYTES: usize = 16 * 1024;

#[derive(Clone, Default)]
pub struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl Tail {
    fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.push_back(line);
        let mut bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
        while lines.len() > MAX_LINES || (bytes > MAX_BYTES && lines.len() > 1) {
            if let Some(l) = lines.pop_front() {
                bytes -= l.len() + 1;
            }
        }
    }

    /// The kept lines, joined.
    pub fn text(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Reads `pipe` to its end on a thread; `done` fires at EOF.
pub fn collect(
    pipe: impl Read + Send + 'static,
    tail: Tail,
    done: tokio::sync::oneshot::Sender<()>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    tracing::debug!(target: "mlxsup::worker", "{line}");
                    tail.push(line);
                }
            }
        }
        let _ = done.send(());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_end() {
        let t = Tail::default();
        for i in 0..200 {
            t.push(format!("line {i}"));
        }
        let text = t.text();
        assert!(text.ends_with("line 199"));
        assert!(!text.contains("line 100\n"));
        assert_eq!(text.lines().count(), MAX_LINES);
        t.push("x".repeat(40_000));
        assert_eq!(t.text().len(), 40_000, "a single huge line is kept alone");
    }
}
