//! The handshake: Hello stays variant 0 (pinned golden bytes), version checks over real socket pairs (async and blocking), and the ways a handshake fails (wrong first message, peer gone, timeout).

use std::{
    os::unix::net::UnixStream as StdUnixStream,
    time::{Duration, Instant},
};

use protocol::{
    client::Connection,
    frame,
    handshake::{check_peer, handshake, handshake_sync, Hello, Role},
    version::{self, Compat, Version},
    Event, FromWorker, Phase, ProtocolError, ToWorker,
};
use tokio::net::UnixStream;

const T: Duration = Duration::from_secs(5);

fn hello(role: Role, major: u16, minor: u16) -> Hello {
    Hello {
        version: Version { major, minor },
        role,
        build: format!("mlxsup-{role} {major}.{minor}-build"),
        pid: 4242,
    }
}

// ---------------------------------------------------------------------------------------
// Variant 0 and the golden vector.
// ---------------------------------------------------------------------------------------

#[test]
fn hello_is_variant_zero_both_ways() {
    let h = hello(Role::Supervisor, 7, 3);
    let to = frame::encode(&ToWorker::Hello(h.clone())).expect("encode");
    let from = frame::encode(&FromWorker::Hello(h.clone())).expect("encode");
    assert_eq!(to[0], 0, "ToWorker::Hello must be variant 0");
    assert_eq!(from[0], 0, "FromWorker::Hello must be variant 0");
    // After the variant, the Hello itself, the same bytes in both directions.
    assert_eq!(to[1..], from[1..]);
    assert_eq!(to[1..], postcard::to_allocvec(&h).expect("postcard")[..]);
    // And nothing else is variant 0.
    for m in [
        frame::encode(&ToWorker::Shutdown).expect("encode"),
        frame::encode(&ToWorker::Cancel { id: 0 }).expect("encode"),
        frame::encode(&FromWorker::Event {
            id: None,
            event: Event::Phase(Phase::Idle),
        })
        .expect("encode"),
    ] {
        assert_ne!(m[0], 0);
    }
}

/// One Hello frame, byte for byte, as version 1.0 writes it. If a reordering of the
/// enums, of `Hello`'s fields or of `Role` changes these bytes, old and new builds can
/// no longer tell each other apart: that must never happen.
#[rustfmt::skip]
const GOLDEN_TO_WORKER_HELLO: [u8; 23] = [
    0, 0, 0, 19, // frame length, big-endian
    0,  // ToWorker::Hello (variant 0)
    1, 0, // version 1.0 (varint major, varint minor)
    0, // Role::Supervisor
    12, b'm', b'l', b'x', b's', b'u', b'p', b' ', b'0', b'.', b'1', b'.', b'0', // build
    0x92, 0x21, // pid 4242 (varint)
];
#[rustfmt::skip]
const GOLDEN_FROM_WORKER_HELLO: [u8; 11] = [
    0, 0, 0, 7, // frame length
    0, // FromWorker::Hello
    1, 0, // version 1.0
    1, // Role::Worker
    1, b'w', // build "w"
    1,    // pid 1
];

fn golden_to() -> ToWorker {
    ToWorker::Hello(Hello {
        version: version::V1_0,
        role: Role::Supervisor,
        build: "mlxsup 0.1.0".into(),
        pid: 4242,
    })
}
fn golden_from() -> FromWorker {
    FromWorker::Hello(Hello {
        version: version::V1_0,
        role: Role::Worker,
        build: "w".into(),
        pid: 1,
    })
}

#[test]
fn hello_golden_vector_encodes_exactly() {
    let mut out = Vec::new();
    frame::write_sync(&mut out, &golden_to()).expect("write");
    assert_eq!(out, GOLDEN_TO_WORKER_HELLO);
    out.clear();
    frame::write_sync(&mut out, &golden_from()).expect("write");
    assert_eq!(out, GOLDEN_FROM_WORKER_HELLO);
}

#[test]
fn hello_golden_vector_decodes() {
    let got: ToWorker = frame::read_sync(&mut &GOLDEN_TO_WORKER_HELLO[..])
        .expect("read")
        .expect("msg");
    assert_eq!(got, golden_to());
    let got: FromWorker = frame::read_sync(&mut &GOLDEN_FROM_WORKER_HELLO[..])
        .expect("read")
        .expect("msg");
    assert_eq!(got, golden_from());
}

#[test]
fn version_one_zero_is_pinned() {
    assert_eq!(version::V1_0, Version { major: 1, minor: 0 });
    assert_eq!(version::V1_0.to_string(), "1.0");
    assert!(version::CURRENT >= version::V1_0);
    assert_eq!(Hello::ours(Role::Worker, "x").version, version::CURRENT);
    assert_eq!(Hello::ours(Role::Worker, "x").pid, std::process::id());
}

// ---------------------------------------------------------------------------------------
// Version checks.
// ---------------------------------------------------------------------------------------

#[test]
fn compat_rule_is_equal_major() {
    let v = |major, minor| Version { major, minor };
    assert_eq!(v(2, 0).compat(v(2, 9)), Compat::Compatible);
    assert_eq!(v(2, 9).compat(v(2, 0)), Compat::Compatible);
    assert_eq!(v(2, 0).compat(v(1, 99)), Compat::PeerTooOld);
    assert_eq!(v(2, 0).compat(v(3, 0)), Compat::PeerTooNew);
    assert!(check_peer(&hello(Role::Worker, 1, 0), &hello(Role::Supervisor, 1, 5)).is_ok());
}

/// Runs both sides of the async handshake over a real socket pair.
async fn async_pair(
    sup: Hello,
    wrk: Hello,
) -> (Result<Hello, ProtocolError>, Result<Hello, ProtocolError>) {
    let (a, b) = UnixStream::pair().expect("pair");
    let (mut a, mut b) = (Connection::new(a), Connection::new(b));
    tokio::join!(
        handshake::<_, ToWorker, FromWorker>(&mut a, sup, T),
        handshake::<_, FromWorker, ToWorker>(&mut b, wrk, T),
    )
}

/// Runs both sides of the blocking handshake over a real socket pair, one in a thread.
fn sync_pair(
    sup: Hello,
    wrk: Hello,
) -> (Result<Hello, ProtocolError>, Result<Hello, ProtocolError>) {
    let (a, b) = StdUnixStream::pair().expect("pair");
    for s in [&a, &b] {
        s.set_read_timeout(Some(T)).expect("timeout");
    }
    let worker =
        std::thread::spawn(move || handshake_sync::<FromWorker, ToWorker>(&mut &b, &mut &b, wrk));
    let sup = handshake_sync::<ToWorker, FromWorker>(&mut &a, &mut &a, sup);
    (sup, worker.join().expect("join"))
}

/// The supervisor speaks 3.1 and the worker 2.9: the supervisor finds its peer too old,
/// the worker finds its peer too new, and both messages name both versions.
fn check_major_mismatch(sup: Result<Hello, ProtocolError>, wrk: Result<Hello, ProtocolError>) {
    let e = sup.expect_err("supervisor must refuse an older major");
    let msg = e.to_string();
    match &e {
        ProtocolError::PeerTooOld {
            ours,
            peer,
            our_role,
            peer_role,
            peer_build,
        } => {
            assert_eq!(*ours, Version { major: 3, minor: 1 });
            assert_eq!(*peer, Version { major: 2, minor: 9 });
            assert_eq!((*our_role, *peer_role), (Role::Supervisor, Role::Worker));
            assert_eq!(peer_build, "mlxsup-worker 2.9-build");
        }
        other => panic!("expected PeerTooOld, got {other:?}"),
    }
    assert!(msg.contains("3.1") && msg.contains("2.9"), "{msg}");
    assert!(
        msg.contains("too old") && msg.contains("mlxsup-worker 2.9-build"),
        "{msg}"
    );

    let e = wrk.expect_err("worker must refuse a newer major");
    let msg = e.to_string();
    match &e {
        ProtocolError::PeerTooNew { ours, peer, .. } => {
            assert_eq!(*ours, Version { major: 2, minor: 9 });
            assert_eq!(*peer, Version { major: 3, minor: 1 });
        }
        other => panic!("expected PeerTooNew, got {other:?}"),
    }
    assert!(msg.contains("3.1") && msg.contains("2.9"), "{msg}");
    assert!(msg.contains("too new"), "{msg}");
}

fn check_minor_difference(
    sup: Result<Hello, ProtocolError>,
    wrk: Result<Hello, ProtocolError>,
    sup_hello: &Hello,
    wrk_hello: &Hello,
) {
    assert_eq!(&sup.expect("compatible"), wrk_hello);
    assert_eq!(&wrk.expect("compatible"), sup_hello);
}

#[tokio::test]
async fn async_major_mismatch_is_refused_with_both_versions() {
    let (s, w) = async_pair(hello(Role::Supervisor, 3, 1), hello(Role::Worker, 2, 9)).await;
    check_major_mismatch(s, w);
}

#[tokio::test]
async fn async_same_major_other_minor_is_compatible() {
    let (sh, wh) = (hello(Role::Supervisor, 1, 0), hello(Role::Worker, 1, 7));
    let (s, w) = async_pair(sh.clone(), wh.clone()).await;
    check_minor_difference(s, w, &sh, &wh);
}

#[test]
fn sync_major_mismatch_is_refused_with_both_versions() {
    let (s, w) = sync_pair(hello(Role::Supervisor, 3, 1), hello(Role::Worker, 2, 9));
    check_major_mismatch(s, w);
}

#[test]
fn sync_same_major_other_minor_is_compatible() {
    let (sh, wh) = (hello(Role::Supervisor, 1, 0), hello(Role::Worker, 1, 7));
    let (s, w) = sync_pair(sh.clone(), wh.clone());
    check_minor_difference(s, w, &sh, &wh);
}

/// The async supervisor and the blocking worker complete a handshake with each other,
/// then exchange a message on the same connection.
#[tokio::test]
async fn async_supervisor_and_blocking_worker_shake_hands() {
    let (a, b) = StdUnixStream::pair().expect("pair");
    a.set_nonblocking(true).expect("nonblocking");
    b.set_read_timeout(Some(T)).expect("timeout");
    let wh = Hello::ours(Role::Worker, "mlxsup-worker test");
    let wh2 = wh.clone();
    let worker = std::thread::spawn(move || {
        let peer = handshake_sync::<FromWorker, ToWorker>(&mut &b, &mut &b, wh2)?;
        let next: Option<ToWorker> = frame::read_sync(&mut &b)?;
        Ok::<_, ProtocolError>((peer, next))
    });
    let mut conn = Connection::new(UnixStream::from_std(a).expect("from_std"));
    let sh = Hello::ours(Role::Supervisor, "mlxsup test");
    let peer = handshake::<_, ToWorker, FromWorker>(&mut conn, sh.clone(), T)
        .await
        .expect("handshake");
    assert_eq!(peer, wh);
    conn.send(&ToWorker::Shutdown).await.expect("send");
    let (peer, next) = worker.join().expect("join").expect("worker side");
    assert_eq!(peer, sh);
    assert_eq!(next, Some(ToWorker::Shutdown));
}

// ---------------------------------------------------------------------------------------
// Failed handshakes.
// ---------------------------------------------------------------------------------------

fn not_a_hello() -> FromWorker {
    FromWorker::Event {
        id: None,
        event: Event::Phase(Phase::Spawn),
    }
}

#[tokio::test]
async fn async_wrong_first_message_is_no_handshake() {
    let (a, b) = UnixStream::pair().expect("pair");
    let (mut a, mut b) = (Connection::new(a), Connection::new(b));
    b.send(&not_a_hello()).await.expect("send");
    let e = handshake::<_, ToWorker, FromWorker>(&mut a, hello(Role::Supervisor, 1, 0), T)
        .await
        .expect_err("must fail");
    assert!(matches!(e, ProtocolError::NoHandshake), "{e:?}");
    assert!(e.is_malformed());
    // Our hello did go out first.
    let sent: ToWorker = b.recv().await.expect("recv").expect("msg");
    assert!(matches!(sent, ToWorker::Hello(_)));
}

#[test]
fn sync_wrong_first_message_is_no_handshake() {
    let (a, b) = StdUnixStream::pair().expect("pair");
    frame::write_sync(&mut &b, &ToWorker::Shutdown).expect("write");
    let e = handshake_sync::<FromWorker, ToWorker>(&mut &a, &mut &a, hello(Role::Worker, 1, 0))
        .expect_err("must fail");
    assert!(matches!(e, ProtocolError::NoHandshake), "{e:?}");
}

#[tokio::test]
async fn async_peer_closing_after_reading_our_hello_is_closed_before_handshake() {
    let (a, b) = UnixStream::pair().expect("pair");
    let mut a = Connection::new(a);
    let peer = tokio::spawn(async move {
        let mut b = Connection::new(b);
        let _: Option<ToWorker> = b.recv().await.expect("recv");
        // Dropped here without answering.
    });
    let e = handshake::<_, ToWorker, FromWorker>(&mut a, hello(Role::Supervisor, 1, 0), T)
        .await
        .expect_err("must fail");
    assert!(matches!(e, ProtocolError::ClosedBeforeHandshake), "{e:?}");
    assert!(!e.is_malformed());
    peer.await.expect("join");
}

/// A peer that is gone before we even send (a worker that died at once) is the same
/// event as one that goes away before answering: not an i/o error that depends on who
/// won the race.
#[tokio::test]
async fn async_peer_gone_before_we_send_is_closed_before_handshake() {
    let (a, b) = UnixStream::pair().expect("pair");
    drop(b);
    let mut a = Connection::new(a);
    let e = handshake::<_, ToWorker, FromWorker>(&mut a, hello(Role::Supervisor, 1, 0), T)
        .await
        .expect_err("must fail");
    assert!(matches!(e, ProtocolError::ClosedBeforeHandshake), "{e:?}");
}

#[test]
fn sync_peer_closing_is_closed_before_handshake() {
    // Gone before we send.
    let (a, b) = StdUnixStream::pair().expect("pair");
    drop(b);
    let e = handshake_sync::<FromWorker, ToWorker>(&mut &a, &mut &a, hello(Role::Worker, 1, 0))
        .expect_err("must fail");
    assert!(matches!(e, ProtocolError::ClosedBeforeHandshake), "{e:?}");
    // Reads our hello, then goes away.
    let (a, b) = StdUnixStream::pair().expect("pair");
    b.set_read_timeout(Some(T)).expect("timeout");
    let peer = std::thread::spawn(move || {
        let _: Option<FromWorker> = frame::read_sync(&mut &b).expect("read");
    });
    let e = handshake_sync::<FromWorker, ToWorker>(&mut &a, &mut &a, hello(Role::Worker, 1, 0))
        .expect_err("must fail");
    assert!(matches!(e, ProtocolError::ClosedBeforeHandshake), "{e:?}");
    peer.join().expect("join");
}

#[tokio::test]
async fn peer_closing_mid_hello_is_truncated_not_closed() {
    let (a, b) = StdUnixStream::pair().expect("pair");
    a.set_nonblocking(true).expect("nonblocking");
    let mut conn = Connection::new(UnixStream::from_std(a).expect("from_std"));
    let peer = std::thread::spawn(move || {
        let _: Option<ToWorker> = frame::read_sync(&mut &b).expect("read");
        std::io::Write::write_all(&mut &b, &GOLDEN_FROM_WORKER_HELLO[..6]).expect("write");
    });
    let e = handshake::<_, ToWorker, FromWorker>(&mut conn, hello(Role::Supervisor, 1, 0), T)
        .await
        .expect_err("must fail");
    assert!(
        matches!(e, ProtocolError::Truncated { buffered: 6 }),
        "{e:?}"
    );
    peer.join().expect("join");
}

#[tokio::test]
async fn silent_peer_times_out() {
    let (a, b) = UnixStream::pair().expect("pair");
    let mut a = Connection::new(a);
    let limit = Duration::from_millis(150);
    let start = Instant::now();
    let e = handshake::<_, ToWorker, FromWorker>(&mut a, hello(Role::Supervisor, 1, 0), limit)
        .await
        .expect_err("must time out");
    let took = start.elapsed();
    assert!(
        matches!(e, ProtocolError::Timeout(d) if d == limit),
        "{e:?}"
    );
    assert!(took >= limit && took < Duration::from_secs(3), "{took:?}");
    assert!(e.to_string().contains("150ms"), "{e}");
    drop(b);
}
