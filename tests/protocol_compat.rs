//! Clients of older control minors against today's daemon: a client speaking control 1.0
//! — its frames recorded by the 1.0 build (protocol/tests/fixtures/control-1.0) — completes
//! a generate, and every frame the daemon sends it is valid at 1.0; so do clients of
//! 1.1 to 1.4, from their own builds' frames.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    time::Duration,
};

use mlxsup_tests::{daemon::Daemon, repo};
use protocol::{
    control::{ControlEvent, ControlReply, FromDaemon},
    frame, Event, FinishReason, Wire,
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
