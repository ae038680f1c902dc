//! Frames recorded by every released minor (protocol/tests/fixtures/README.md) decode with
//! today's code at that minor, re-encode to the very same bytes (so an old peer reads what
//! we send it), and say what the newest minor's frame says, minus what the minor lacks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a failure here is a test failure.

use std::{fmt::Debug, fs, path::PathBuf};

use protocol::{
    control::{FromDaemon, ToDaemon},
    frame,
    handshake::Handshake,
    wire::{Evolve, Wire},
    FromWorker, ProtocolError, ToWorker,
};
use serde::{de::DeserializeOwned, Serialize};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `(name, type, bytes)` of every frame of `dir`, from its MANIFEST.
fn frames(dir: &str) -> Vec<(String, String, Vec<u8>)> {
    let dir = fixtures().join(dir);
    let manifest = fs::read_to_string(dir.join("MANIFEST"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    manifest
        .lines()
        .map(|line| {
            let (name, ty) = line.split_once(' ').expect("MANIFEST line: NAME TYPE");
            let bytes = fs::read(dir.join(format!("{name}.bin"))).expect(name);
            (name.to_string(), ty.to_string(), bytes)
        })
        .collect()
}

/// The hellos: postcard whatever the version.
fn is_hello(name: &str) -> bool {
    name.ends_with("_hello")
}

/// Decodes at `wire`, checks the re-encoding, returns the message.
fn round_trip<T>(what: &str, bytes: &[u8], wire: Wire) -> T
where
    T: Serialize + DeserializeOwned + Evolve + Clone + PartialEq + Debug + Handshake,
{
    if is_hello(what) {
        let msg: T = frame::decode(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        let h = msg
            .as_hello()
            .unwrap_or_else(|| panic!("{what}: not a hello"));
        assert_eq!(h.version, wire.version(), "{what}: the hello's version");
        assert_eq!(frame::encode(&msg).unwrap(), bytes, "{what}: re-encoded");
        return msg;
    }
    let msg: T = frame::decode_at(bytes, wire)
        .unwrap_or_else(|e| panic!("{what}: does not decode at {wire:?}: {e}"));
    let again = frame::encode_at(&msg, wire)
        .unwrap_or_else(|e| panic!("{what}: does not encode at {wire:?}: {e}"))
        .unwrap_or_else(|| panic!("{what}: dropped at its own version"));
    assert_eq!(again, bytes, "{what}: re-encoded at {wire:?} differs");
    msg
}

/// The newest recorded minor's frame, sent to a peer at `wire` and read there: what an
/// old peer gets from today's code. `Err`: today's code refuses to send it at `wire` (a
/// request with options the minor cannot carry).
fn downgraded<T>(
    what: &str,
    newest: &[u8],
    newest_wire: Wire,
    wire: Wire,
) -> Result<Option<T>, String>
where
    T: Serialize + DeserializeOwned + Evolve + Clone + PartialEq + Debug,
{
    let msg: T = frame::decode_at(newest, newest_wire).expect(what);
    match frame::encode_at(&msg, wire) {
        Ok(Some(body)) => Ok(Some(frame::decode_at(&body, wire).expect(what))),
        Ok(None) => Ok(None),
        Err(ProtocolError::Unsupported(why)) => Err(why),
        Err(e) => panic!("{what}: {e}"),
    }
}

fn check<T>(proto: &str, minor: u16, wire: Wire, newest: (u16, Wire))
where
    T: Serialize + DeserializeOwned + Evolve + Clone + PartialEq + Debug + Handshake,
{
    let old = frames(&format!("{proto}-1.{minor}"));
    let new = frames(&format!("{proto}-1.{}", newest.0));
    for (name, ty, bytes) in &old {
        if ty
            != std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or_default()
        {
            continue;
        }
        let what = format!("{proto}-1.{minor}/{name}");
        let msg: T = round_trip(&what, bytes, wire);
        if is_hello(name) {
            continue;
        }
        let (_, _, newest_bytes) = new
            .iter()
            .find(|(n, ..)| n == name)
            .unwrap_or_else(|| panic!("{what}: not in the newest fixtures"));
        match downgraded::<T>(&what, newest_bytes, newest.1, wire) {
            Ok(Some(from_today)) => {
                assert_eq!(from_today, msg, "{what}: today's message at 1.{minor}");
            }
            Ok(None) => panic!("{what}: today's code drops it at 1.{minor}"),
            // Options the minor lacks: refused, never sent without them.
            Err(why) => assert!(why.contains("needs"), "{what}: {why}"),
        }
    }
}

/// The newest minors: this build's, recorded by [`record_this_builds_minor`].
const WORKER_NEWEST: u16 = protocol::version::CURRENT.minor;
const CONTROL_NEWEST: u16 = protocol::control::version::CURRENT.minor;

#[test]
fn every_recorded_worker_frame_decodes_and_re_encodes_the_same() {
    let newest = (WORKER_NEWEST, Wire::worker(WORKER_NEWEST));
    for minor in 0..=WORKER_NEWEST {
        check::<ToWorker>("worker", minor, Wire::worker(minor), newest);
        check::<FromWorker>("worker", minor, Wire::worker(minor), newest);
    }
}

#[test]
fn every_recorded_control_frame_decodes_and_re_encodes_the_same() {
    let newest = (CONTROL_NEWEST, Wire::control(CONTROL_NEWEST));
    for minor in 0..=CONTROL_NEWEST {
        check::<ToDaemon>("control", minor, Wire::control(minor), newest);
        check::<FromDaemon>("control", minor, Wire::control(minor), newest);
    }
}

/// Every minor has its frames, and each covers every sample its types can carry: a
/// recording that lost frames would make the tests above pass on less.
#[test]
fn every_released_minor_is_recorded() {
    for minor in 0..=WORKER_NEWEST {
        let n = frames(&format!("worker-1.{minor}")).len();
        let want = if minor >= 5 { 44 } else { 43 };
        assert_eq!(n, want, "worker-1.{minor}");
    }
    for minor in 0..=CONTROL_NEWEST {
        let n = frames(&format!("control-1.{minor}")).len();
        let want = if minor >= 4 { 51 } else { 50 };
        assert_eq!(n, want, "control-1.{minor}");
    }
}

/// A newer minor's event reaches an older peer not at all: the vision peak (worker 1.5,
/// control 1.4) is dropped below, never sent as bytes the peer would misread.
#[test]
fn events_a_minor_lacks_are_dropped_for_it() {
    let new = frames("worker-1.5");
    let (_, _, vision) = new.iter().find(|(n, ..)| n == "from_vision").unwrap();
    let msg: FromWorker = frame::decode_at(vision, Wire::worker(5)).unwrap();
    assert!(frame::encode_at(&msg, Wire::worker(4)).unwrap().is_none());
    assert!(frame::encode_at(&msg, Wire::worker(5)).unwrap().is_some());
    let new = frames("control-1.4");
    let (_, _, vision) = new.iter().find(|(n, ..)| n == "from_event_vision").unwrap();
    let msg: FromDaemon = frame::decode_at(vision, Wire::control(4)).unwrap();
    assert!(frame::encode_at(&msg, Wire::control(3)).unwrap().is_none());
    assert!(frame::encode_at(&msg, Wire::control(5)).unwrap().is_some());
}

/// Records this build's minors (worker 1.6, control 1.5) from the previous minor's frames:
/// each decoded at its minor and written by this build at its own (the hellos with this
/// build's version). Run once per new minor, then commit the frames:
/// `cargo test -p mlxsup-protocol --test fixtures -- --ignored record_this_builds_minor`.
#[test]
#[ignore]
fn record_this_builds_minor() {
    fn record<T>(proto: &str, from: Wire, to: Wire, current: protocol::Version)
    where
        T: Serialize + DeserializeOwned + Evolve + Clone + PartialEq + Debug + Handshake,
    {
        let dir = fixtures().join(format!("{proto}-{current}"));
        fs::create_dir_all(&dir).unwrap();
        let mut manifest = String::new();
        let prev = format!("{proto}-{}", from.version());
        for (name, ty, bytes) in frames(&prev) {
            if ty
                != std::any::type_name::<T>()
                    .rsplit("::")
                    .next()
                    .unwrap_or_default()
            {
                continue;
            }
            let body = if is_hello(&name) {
                let msg: T = frame::decode(&bytes).unwrap();
                let mut h = msg.as_hello().unwrap().clone();
                h.version = current;
                frame::encode(&T::hello(h)).unwrap()
            } else {
                let msg: T = frame::decode_at(&bytes, from).unwrap();
                frame::encode_at(&msg, to).unwrap().unwrap()
            };
            fs::write(dir.join(format!("{name}.bin")), body).unwrap();
            manifest.push_str(&format!("{name} {ty}\n"));
        }
        let path = dir.join("MANIFEST");
        let mut all = fs::read_to_string(&path).unwrap_or_default();
        all.push_str(&manifest);
        fs::write(path, all).unwrap();
    }
    let w = protocol::version::CURRENT;
    let c = protocol::control::version::CURRENT;
    for d in [format!("worker-{w}"), format!("control-{c}")] {
        let _ = fs::remove_dir_all(fixtures().join(d));
    }
    record::<ToWorker>(
        "worker",
        Wire::worker(w.minor - 1),
        Wire::worker(w.minor),
        w,
    );
    record::<FromWorker>(
        "worker",
        Wire::worker(w.minor - 1),
        Wire::worker(w.minor),
        w,
    );
    record::<ToDaemon>(
        "control",
        Wire::control(c.minor - 1),
        Wire::control(c.minor),
        c,
    );
    record::<FromDaemon>(
        "control",
        Wire::control(c.minor - 1),
        Wire::control(c.minor),
        c,
    );
}

/// The kinds and the failure field of control 1.5 reach an older client as the older kind
/// that says the most of them, without the field; a 1.5 client reads them as they are.
#[test]
fn new_failure_kinds_and_stage_reach_older_clients_as_they_can_read_them() {
    use protocol::{
        control::ControlReply,
        failure::{Failure, FailureKind, MemoryEvidence, Phase, Remedy, Stage},
    };
    for (kind, older) in [
        (
            FailureKind::ContextLengthExceeded,
            FailureKind::InsufficientMemory,
        ),
        (FailureKind::Unloaded, FailureKind::Busy),
        (FailureKind::SlowClient, FailureKind::Busy),
    ] {
        let failure = Failure {
            kind,
            phase: Phase::Prefill,
            model: Some("/models/x".into()),
            exit_code: None,
            signal: None,
            core_dumped: false,
            signal_sent_by_supervisor: false,
            peak_bytes: None,
            last_telemetry: Vec::new(),
            estimate_bytes: Some(1 << 30),
            budget_bytes: Some(2 << 30),
            message: Some("m".into()),
            stderr_tail: String::new(),
            duration_ms: 5,
            advice: "a".into(),
            remedy: Remedy::default(),
            stage: Some(Stage::VisionTower),
            evidence: Some(MemoryEvidence {
                which: "RLIMIT_AS".into(),
                limit: Some(700 << 20),
                used: Some(690 << 20),
                text: None,
            }),
        };
        let msg = FromDaemon::Reply {
            id: 7,
            body: ControlReply::Failed(Box::new(failure.clone())),
        };
        for minor in 0..=5u16 {
            let wire = Wire::control(minor);
            let body = frame::encode_at(&msg, wire)
                .unwrap()
                .expect("a reply is always sent");
            let back: FromDaemon = frame::decode_at(&body, wire).unwrap();
            let FromDaemon::Reply {
                body: ControlReply::Failed(got),
                ..
            } = back
            else {
                panic!("control 1.{minor}: not a failed reply: {back:?}")
            };
            if minor < 5 {
                assert_eq!(got.kind, older, "control 1.{minor}: {kind}");
                assert_eq!(got.stage, None, "control 1.{minor}: the stage is not sent");
                assert_eq!(got.evidence, None, "control 1.{minor}: no evidence is sent");
                assert_eq!(got.message, failure.message, "control 1.{minor}");
            } else {
                assert_eq!(*got, failure, "control 1.5");
            }
        }
    }
}
