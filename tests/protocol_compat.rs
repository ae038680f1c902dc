//! Clients of older control minors against today's daemon: a client speaking control 1.0
//! — its frames recorded by the 1.0 build (protocol/tests/fixtures/control-1.0) — completes
//! a generate, and every frame the daemon sends it is valid at 1.0; so do clients of
//! 1.1 to 1.4, from their own builds' frames. Likewise supervisors of worker 1.0 to 1.5
//! with today's worker, and today's CLI with daemons of 1.0 to 1.4.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    process::{Command, Stdio},
    time::Duration,
};

use mlxsup_tests::{bin, daemon::Daemon, mlxsup_env, repo, tiny_model};
use protocol::{
    compute::ComputeDtype,
    control::{ControlEvent, ControlReply, FromDaemon},
    frame, Device, Event, FinishReason, FromWorker, GenerateRequest, Limits, LoadRequest, Prompt,
    Reply, Request, Sampling, ToWorker, Wire,
};

fn recorded(minor: u16, name: &str) -> Vec<u8> {
    std::fs::read(repo().join(format!(
        "protocol/tests/fixtures/control-1.{minor}/{name}.bin"
    )))
    .unwrap()
}

fn write_frame(s: &mut UnixStream, body: &[u8]) {
    s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    s.write_all(body).unwrap();
}

fn read_frame(s: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    body
}

/// Speaks `minor` with recorded frames: its hello, then its generate of model `a`; returns
/// every frame after the daemon's hello, each checked valid at `minor`, until the reply.
fn generate_at(d: &Daemon, minor: u16) -> Vec<FromDaemon> {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    // A guard against a hung daemon, not a timing assertion.
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    write_frame(&mut s, &recorded(minor, "to_hello"));
    let hello: FromDaemon = frame::decode(&read_frame(&mut s)).unwrap();
    let FromDaemon::Hello(h) = hello else {
        panic!("first frame: {hello:?}")
    };
    assert_eq!(h.version, protocol::control::version::CURRENT);
    write_frame(&mut s, &recorded(minor, "to_generate_live"));
    let wire = Wire::control(minor);
    let mut got = Vec::new();
    loop {
        let body = read_frame(&mut s);
        let msg: FromDaemon = frame::decode_at(&body, wire)
            .unwrap_or_else(|e| panic!("a frame invalid at 1.{minor}: {e}: {body:?}"));
        let again = frame::encode_at(&msg, wire).unwrap().unwrap();
        assert_eq!(again, body, "not 1.{minor}'s layout: {msg:?}");
        let done = matches!(msg, FromDaemon::Reply { .. });
        got.push(msg);
        if done {
            return got;
        }
    }
}

#[test]
fn clients_of_control_1_0_to_1_4_generate_against_todays_daemon() {
    let d = Daemon::start(&[]);
    for minor in 0..=4 {
        let got = generate_at(&d, minor);
        let tokens: Vec<&str> = got
            .iter()
            .filter_map(|m| match m {
                FromDaemon::Event {
                    id: 1,
                    event: ControlEvent::Worker(Event::Token { text, .. }),
                } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        let Some(FromDaemon::Reply {
            id: 1,
            body: ControlReply::Done(done),
        }) = got.last()
        else {
            panic!("no done: {got:?}")
        };
        assert_eq!(done.done.generated_tokens, 6, "{got:?}");
        assert_eq!(done.done.finish, FinishReason::Length);
        assert_eq!(tokens.len(), 6, "{got:?}");
        // 1.0 and 1.1 have no `context_used`: it reads as 0 (1.2 added it).
        if minor < 2 {
            assert_eq!(done.context_used, 0);
        } else {
            assert!(done.context_used > 6, "{done:?}");
        }
        if minor == 0 {
            // The first generate loaded the model: the estimate reached the 1.0 client as
            // the JSON text it always was, typed on our side.
            let est = got.iter().find_map(|m| match m {
                FromDaemon::Event {
                    event: ControlEvent::Estimate(e),
                    ..
                } => Some(e),
                _ => None,
            });
            let est = est.unwrap_or_else(|| panic!("no estimate: {got:?}"));
            assert!(est.total_bytes.get() > 0 && est.report.get().starts_with('{'));
        }
    }
}

/// Reads frames from a worker until the reply to `id`, each checked valid at `wire`.
fn worker_reply(s: &mut UnixStream, id: u64, wire: Wire) -> (protocol::Reply, Vec<Event>) {
    let mut events = Vec::new();
    loop {
        let body = read_frame(s);
        let msg: FromWorker = frame::decode_at(&body, wire)
            .unwrap_or_else(|e| panic!("a frame invalid at {wire:?}: {e}: {body:?}"));
        let again = frame::encode_at(&msg, wire).unwrap().unwrap();
        assert_eq!(again, body, "not {wire:?}'s layout: {msg:?}");
        match msg {
            FromWorker::Reply { id: rid, body } if rid == id => return (body, events),
            FromWorker::Event { event, .. } => events.push(event),
            other => panic!("unexpected: {other:?}"),
        }
    }
}

/// A supervisor of every released worker minor (1.0 to 1.5: its hello and requests as
/// that build wrote them) loads and generates with today's worker, which answers in the
/// supervisor's minor.
#[test]
fn supervisors_of_worker_1_0_to_1_5_load_and_generate_with_todays_worker() {
    let model = tiny_model();
    for minor in 0..=5u16 {
        let wire = Wire::worker(minor);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut child = Command::new(bin("mlxsup-worker"))
            .arg("--socket")
            .arg(&path)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        let fixture = |name: &str| {
            std::fs::read(repo().join(format!(
                "protocol/tests/fixtures/worker-1.{minor}/{name}.bin"
            )))
            .unwrap()
        };
        write_frame(&mut s, &fixture("to_hello"));
        let hello: FromWorker = frame::decode(&read_frame(&mut s)).unwrap();
        assert!(matches!(hello, FromWorker::Hello(h) if h.version == protocol::version::CURRENT));

        write_frame(&mut s, &fixture("to_system_info"));
        let (reply, _) = worker_reply(&mut s, 1, wire);
        assert!(matches!(reply, Reply::SystemInfo(_)), "{reply:?}");

        // The load and the generation as that minor writes them (the fixtures test shows
        // today's encoder at a minor writes that build's bytes).
        let load = ToWorker::Request {
            id: 3,
            body: Request::Load(LoadRequest {
                model_dir: model.display().to_string(),
                limits: Limits::default(),
                prefill_chunk: 512,
                telemetry_interval_ms: 100,
                fault: None,
                device: Device::Default,
                compute: ComputeDtype::Native,
                kv_bits: None,
                activation: None,
                prefix_cache: 0,
            }),
        };
        write_frame(&mut s, &frame::encode_at(&load, wire).unwrap().unwrap());
        let (reply, _) = worker_reply(&mut s, 3, wire);
        let Reply::Loaded(info) = reply else {
            panic!("1.{minor}: {reply:?}")
        };
        // What 1.0 lacks reads as empty; from 1.1 the device is there.
        assert_eq!(info.device.is_empty(), minor < 1, "{info:?}");
        assert_eq!(info.mlx_version.is_empty(), minor < 3, "{info:?}");

        let generate = ToWorker::Request {
            id: 4,
            body: Request::Generate(GenerateRequest {
                prompt: Prompt::Text("Hello".into()),
                max_tokens: 4,
                sampling: Sampling::default(),
                stop: vec![],
                fault: None,
                images: vec![],
            }),
        };
        write_frame(&mut s, &frame::encode_at(&generate, wire).unwrap().unwrap());
        let (reply, events) = worker_reply(&mut s, 4, wire);
        let Reply::Done(done) = reply else {
            panic!("1.{minor}: {reply:?}")
        };
        assert_eq!(done.generated_tokens, 4);
        let tokens = events
            .iter()
            .filter(|e| matches!(e, Event::Token { .. }))
            .count();
        assert_eq!(tokens, 4, "{events:?}");

        write_frame(&mut s, &fixture("to_shutdown"));
        assert!(child.wait().unwrap().success(), "worker 1.{minor}");
    }
}

/// Today's CLI against a daemon of every released control minor (its frames as that
/// build wrote them): it speaks the daemon's minor, and `status --json` shows the answer.
#[test]
fn todays_cli_talks_to_daemons_of_control_1_0_to_1_4() {
    for minor in 0..=4u16 {
        let dir = tempfile::Builder::new()
            .prefix("old")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("d.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let old_daemon = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let hello: protocol::control::ToDaemon = frame::decode(&read_frame(&mut s)).unwrap();
            assert!(
                matches!(hello, protocol::control::ToDaemon::Hello(_)),
                "{hello:?}"
            );
            write_frame(&mut s, &recorded(minor, "from_hello"));
            // The request arrives in this minor's layout.
            let wire = Wire::control(minor);
            let body = read_frame(&mut s);
            let req: protocol::control::ToDaemon = frame::decode_at(&body, wire).unwrap();
            assert_eq!(frame::encode_at(&req, wire).unwrap().unwrap(), body);
            assert!(matches!(
                req,
                protocol::control::ToDaemon::Request {
                    id: 1,
                    body: protocol::control::ControlRequest::Status
                }
            ));
            write_frame(&mut s, &recorded(minor, "from_status"));
        });
        let socket = socket.to_str().unwrap();
        let run = mlxsup_env(&["status", "--json"], &[("MLXSUP_SOCKET", socket)]);
        old_daemon.join().unwrap();
        assert_eq!(run.code, Some(0), "1.{minor}: {}", run.stderr);
        let status = &run.events[0].1;
        assert_eq!(
            status["budget_bytes"], 8_000_000_000u64,
            "1.{minor}: {status}"
        );
        assert_eq!(status["socket"], "/run/mlxsup.sock");
    }
}
