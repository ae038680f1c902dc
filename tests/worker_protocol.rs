//! The worker spoken to directly over its protocol: the soft memory guard refuses a step
//! and the same worker then serves a normal request; telemetry arrives at the configured
//! interval during a long generation; the reported peak is MLX's own.
#![allow(clippy::unwrap_used)]

use std::{os::unix::net::UnixStream, process::Child};

use mlxsup_tests::{start_worker, tiny_model};
use protocol::{
    frame, DoneInfo, Event, FromWorker, GenerateRequest, Limits, LoadInfo, LoadRequest, Prompt,
    Reply, Request, Sampling, Telemetry, ToWorker, WorkerErrorKind,
};

struct Session {
    child: Child,
    stream: UnixStream,
    next: u64,
    _dir: tempfile::TempDir,
}

impl Session {
    fn start() -> Session {
        let (child, stream, dir, _) = start_worker();
        Session {
            child,
            stream,
            next: 1,
            _dir: dir,
        }
    }

    /// Sends a request; returns its reply and the telemetry seen meanwhile.
    fn call(&mut self, body: Request) -> (Reply, Vec<Telemetry>, usize) {
        let id = self.next;
        self.next += 1;
        frame::write_sync(&mut self.stream, &ToWorker::Request { id, body }).unwrap();
        let mut samples = Vec::new();
        let mut tokens = 0;
        loop {
            match frame::read_sync::<FromWorker>(&mut self.stream)
                .unwrap()
                .unwrap()
            {
                FromWorker::Reply { id: rid, body } if rid == id => return (body, samples, tokens),
                FromWorker::Event {
                    event: Event::Telemetry(t),
                    ..
                } => samples.push(t),
                FromWorker::Event {
                    event: Event::Token { .. },
                    ..
                } => tokens += 1,
                _ => {}
            }
        }
    }

    fn load(&mut self, soft_budget: Option<u64>, interval_ms: u32) -> LoadInfo {
        let (reply, _, _) = self.call(Request::Load(LoadRequest {
            model_dir: tiny_model().to_str().unwrap().into(),
            limits: Limits {
                soft_budget,
                ..Default::default()
            },
            prefill_chunk: 2048,
            telemetry_interval_ms: interval_ms,
            fault: None,
            device: protocol::Device::Default,
            compute: protocol::ComputeDtype::Native,
            kv_bits: None,
            activation: None,
            prefix_cache: 0,
        }));
        match reply {
            Reply::Loaded(info) => info,
            other => panic!("load: {other:?}"),
        }
    }

    fn generate(
        &mut self,
        prompt_tokens: usize,
        max_tokens: u32,
    ) -> (Reply, Vec<Telemetry>, usize) {
        self.call(Request::Generate(GenerateRequest {
            prompt: Prompt::Tokens((0..prompt_tokens).map(|i| (i % 200) as u32 + 10).collect()),
            max_tokens,
            sampling: Sampling::default(),
            stop: vec![],
            fault: None,
            images: Vec::new(),
        }))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = frame::write_sync(&mut self.stream, &ToWorker::Shutdown);
        let _ = self.child.wait();
    }
}

fn done(reply: Reply) -> DoneInfo {
    match reply {
        Reply::Done(d) => d,
        other => panic!("expected Done, got {other:?}"),
    }
}

#[test]
fn over_the_soft_budget_a_request_fails_and_the_worker_serves_the_next() {
    let mut s = Session::start();
    // Room for the weights and small steps, not for a 1500-token prefill chunk (its
    // attention scores alone are heads × 1500² × 4 bytes = 36 MB).
    let loaded = s.load(None, 100);
    let budget = loaded.active_bytes + (8 << 20);
    drop(s);
    let mut s = Session::start();
    s.load(Some(budget), 100);
    let (reply, _, tokens) = s.generate(1500, 4);
    match reply {
        Reply::Error(e) => {
            assert_eq!(e.kind, WorkerErrorKind::MemoryBudgetExceeded, "{e:?}");
            assert!(e.message.contains("budget"), "{}", e.message);
        }
        other => panic!("expected the guard to refuse, got {other:?}"),
    }
    assert_eq!(tokens, 0, "no token may come out of a refused request");
    // Same process, same model: a request that fits is served.
    let d = done(s.generate(8, 6).0);
    assert_eq!(d.generated_tokens, 6);
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "the worker must stay alive"
    );
}

#[test]
fn telemetry_arrives_at_the_configured_interval_and_peak_is_mlx_own() {
    let mut s = Session::start();
    s.load(None, 25);
    let (reply, samples, tokens) = s.generate(64, 200);
    let d = done(reply);
    assert_eq!(tokens as u32, d.generated_tokens);
    let span = samples.last().unwrap().t_ms - samples.first().unwrap().t_ms;
    if span >= 200 {
        // Timer samples at 25 ms (plus one at each phase boundary): within a generous
        // tolerance for a loaded 2-core machine.
        let expected = span as f64 / 25.0;
        let got = samples.len() as f64;
        assert!(
            got >= expected * 0.5 && got <= expected * 2.0 + 4.0,
            "{got} samples over {span} ms"
        );
    } else {
        assert!(!samples.is_empty());
    }
    // The done peak is MLX's peak_memory; every sample's peak is too, and never above it.
    let max_sample_peak = samples.iter().map(|t| t.peak_bytes).max().unwrap();
    assert!(
        max_sample_peak <= d.peak_bytes,
        "{max_sample_peak} > {}",
        d.peak_bytes
    );
    assert!(d.peak_bytes >= samples.iter().map(|t| t.active_bytes).max().unwrap());
    assert!(samples.iter().all(|t| t.footprint_bytes > 0));
}
