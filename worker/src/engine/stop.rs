//! Stop sequences over streamed text: text that might be the start of a stop sequence is
//! held back until it is known not to be, so a stop sequence is never streamed.

/// Watches the generated text for stop sequences.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What to do with newly decoded text.
#[derive(Debug, PartialEq, Eq)]
pub enum StopStep {
    /// Stream this text (possibly empty) and go on.
    Emit(String),
    /// A stop sequence was reached: stream this text (what preceded it) and finish.
    Stop(String),
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Feeds newly decoded text.
    pub fn push(&mut self, text: &str) -> StopStep {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return StopStep::Emit(std::mem::take(&mut self.held));
        }
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let out = self.held[..at].to_string();
            self.held.clear();
            return StopStep::Stop(out);
        }
        // Keep the longest suffix that is a proper prefix of some stop sequence.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let out = self.held[..keep].to_string();
        self.held.drain(..keep);
        StopStep::Emit(out)
    }

    /// The text held back, at the end of generation.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.
mod tests {
    use super::*;

    #[test]
    fn stop_sequence_split_across_tokens_is_never_streamed() {
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("hello E"), StopStep::Emit("hello ".into()));
        assert_eq!(m.push("N"), StopStep::Emit(String::new()));
        assert_eq!(m.push("D and more"), StopStep::Stop(String::new()));
    }

    #[test]
    fn false_start_is_released() {
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("E"), StopStep::Emit(String::new()));
        assert_eq!(m.push("x"), StopStep::Emit("Ex".into()));
        assert_eq!(m.push("EN"), StopStep::Emit(String::new()));
        assert_eq!(m.flush(), "EN");
    }

    #[test]
    fn text_before_stop_in_same_chunk_is_kept() {
        let mut m = StopMatcher::new(&["\n\n".to_string(), "ab".to_string()]);
        assert_eq!(m.push("xyab\n\nz"), StopStep::Stop("xy".into()));
    }

    #[test]
    fn no_stops_passes_through() {
        let mut m = StopMatcher::new(&[]);
        assert_eq!(m.push("é"), StopStep::Emit("é".into()));
    }
}
