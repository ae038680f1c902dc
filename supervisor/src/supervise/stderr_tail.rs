//! The end of the worker's stderr: a bounded ring of bounded lines, each also logged.
//! A worker that writes without newlines costs the supervisor [`MAX_LINE`] bytes, no more.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Read},
    sync::{Arc, Mutex},
};

/// At most this many lines and bytes are kept.
const MAX_LINES: usize = 64;
const MAX_BYTES: usize = 16 * 1024;
/// A longer line is cut here, marked, and the rest of it up to its newline discarded.
pub const MAX_LINE: usize = 4096;
const CUT: &str = " [… line cut]";

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
        read_lines(BufReader::new(pipe), |line| {
            tracing::debug!(target: "mlxsup::worker", "{line}");
            tail.push(line);
        });
        let _ = done.send(());
    });
}

/// Splits `reader` into lines of at most [`MAX_LINE`] bytes, holding no more than that.
fn read_lines(mut reader: impl BufRead, mut emit: impl FnMut(String)) {
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    let finish = |line: &mut Vec<u8>, cut: bool, emit: &mut dyn FnMut(String)| {
        let mut text = String::from_utf8_lossy(line).trim_end().to_string();
        if cut {
            text.push_str(CUT);
        }
        emit(text);
        line.clear();
    };
    loop {
        let buf = match reader.fill_buf() {
            Ok([]) | Err(_) => break,
            Ok(b) => b,
        };
        let (chunk, newline) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        if chunk.len() > room {
            cut = true;
        }
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = chunk.len() + usize::from(newline);
        reader.consume(used);
        if newline {
            finish(&mut line, cut, &mut emit);
            cut = false;
        }
    }
    if !line.is_empty() || cut {
        finish(&mut line, cut, &mut emit);
    }
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

    #[test]
    fn lines_are_bounded_even_without_newlines() {
        let mut input = b"short\n".to_vec();
        input.extend(std::iter::repeat_n(b'y', 10 * MAX_LINE));
        input.extend_from_slice(b"\nafter\nno newline at the end");
        let mut got = Vec::new();
        read_lines(std::io::Cursor::new(input), |l| got.push(l));
        assert_eq!(
            got.len(),
            4,
            "{:?}",
            got.iter().map(|l| l.len()).collect::<Vec<_>>()
        );
        assert_eq!(got[0], "short");
        assert_eq!(got[1].len(), MAX_LINE + CUT.len());
        assert!(got[1].ends_with(CUT));
        assert_eq!(got[2], "after");
        assert_eq!(got[3], "no newline at the end");
    }

    #[test]
    fn an_endless_line_holds_at_most_max_line() {
        // 64 MiB without a newline, read through a small buffer: memory stays bounded
        // (the line vector never grows past MAX_LINE).
        struct Endless(usize);
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Ok(0);
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(b'z');
                self.0 -= n;
                Ok(n)
            }
        }
        let mut got = Vec::new();
        read_lines(BufReader::new(Endless(64 << 20)), |l| got.push(l.len()));
        assert_eq!(got, vec![MAX_LINE + CUT.len()]);
    }
}
