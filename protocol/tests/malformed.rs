//! Malformed input: oversized, truncated and trailing frames, bad bodies, clean ends, and a proptest fuzz harness (arbitrary and mutated bytes into the blocking reader, the async codec and `frame::decode`) that must never panic, over-allocate or disagree.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::{self, Read},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use protocol::{
    client::Connection,
    frame::{self, FrameCodec, MAX_FRAME},
    handshake::{Hello, Role},
    version::Version,
    Event, FromWorker, GenerateRequest, Phase, Prompt, ProtocolError, Reply, Request, Sampling,
    Telemetry, ToWorker,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Decoder, Encoder};

// ---------------------------------------------------------------------------------------
// The largest single allocation this test binary ever asks for. No test here allocates
// more than a few tens of MiB on purpose, so a 4 GiB announcement that got allocated
// (even lazily, as calloc would) shows up.
// ---------------------------------------------------------------------------------------

struct Tracking;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

const GIB: usize = 1 << 30;

fn assert_no_huge_allocation() {
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(largest < GIB, "something allocated {largest} bytes");
}

// ---------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------

fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn sample() -> ToWorker {
    ToWorker::Request {
        id: 9,
        body: Request::Generate(GenerateRequest {
            prompt: Prompt::Text("hello".into()),
            max_tokens: 8,
            sampling: Sampling::default(),
            stop: vec!["\n".into()],
            fault: None,
            images: Vec::new(),
        }),
    }
}

/// A reader that hands out `data` and then panics: proof that the reader does not try
/// to read what it should not.
struct ThenPanic<'a>(&'a [u8]);
impl Read for ThenPanic<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        assert!(
            !self.0.is_empty(),
            "read past the header of an oversized frame"
        );
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

fn codec_eof(bytes: &[u8]) -> Result<Option<BytesMut>, ProtocolError> {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::from(bytes);
    if let Some(f) = codec.decode(&mut buf)? {
        return Ok(Some(f));
    }
    codec.decode_eof(&mut buf)
}

/// Writes `bytes` into one end of an in-memory pipe, closes it, and reads one message
/// from the other end through the async `Connection`.
async fn conn_recv<T: DeserializeOwned>(bytes: &[u8]) -> Result<Option<T>, ProtocolError> {
    let (mut w, r) = tokio::io::duplex(1 << 16);
    w.write_all(bytes).await.expect("write");
    drop(w);
    Connection::new(r).recv::<T>().await
}

// ---------------------------------------------------------------------------------------
// Oversized frames.
// ---------------------------------------------------------------------------------------

#[test]
fn blocking_rejects_a_4gib_announcement_from_the_header_alone() {
    let header = u32::MAX.to_be_bytes();
    let e = frame::read_sync::<ToWorker>(&mut ThenPanic(&header)).expect_err("must refuse");
    match e {
        ProtocolError::FrameTooLarge { len, max } => {
            assert_eq!(len, u32::MAX as usize);
            assert_eq!(max, MAX_FRAME);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert!(e_is_malformed(&frame::read_sync::<ToWorker>(
        &mut &header[..]
    )));
    assert_no_huge_allocation();
}

fn e_is_malformed<T>(r: &Result<T, ProtocolError>) -> bool {
    matches!(r, Err(e) if e.is_malformed())
}

#[test]
fn codec_rejects_a_4gib_announcement_without_reserving() {
    for len in [u32::MAX, (MAX_FRAME + 1) as u32, 1 << 31] {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        let e = codec.decode(&mut buf).expect_err("must refuse");
        assert!(
            matches!(e, ProtocolError::FrameTooLarge { len: l, max: MAX_FRAME } if l == len as usize),
            "{e:?}"
        );
        assert!(buf.capacity() < GIB, "reserved {}", buf.capacity());
    }
    assert_no_huge_allocation();
}

/// Through a real async connection whose writer stays open: the error comes at once,
/// not after waiting for 4 GiB that will never come.
#[tokio::test]
async fn connection_rejects_a_4gib_announcement_fast() {
    let (mut w, r) = tokio::io::duplex(64);
    w.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
    let mut conn = Connection::new(r);
    let got = tokio::time::timeout(Duration::from_secs(2), conn.recv::<FromWorker>())
        .await
        .expect("must not wait for the body");
    assert!(
        matches!(got, Err(ProtocolError::FrameTooLarge { .. })),
        "{got:?}"
    );
    drop(w);
    assert_no_huge_allocation();
}

#[test]
fn max_frame_is_the_inclusive_limit() {
    // Exactly MAX_FRAME is allowed: the codec waits for the body, the blocking reader
    // reads until EOF and reports the truncation.
    let header = (MAX_FRAME as u32).to_be_bytes();
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::from(&header[..]);
    assert!(codec.decode(&mut buf).expect("allowed").is_none());
    let e = frame::read_sync::<ToWorker>(&mut &header[..]).expect_err("truncated");
    assert!(
        matches!(e, ProtocolError::Truncated { buffered: 4 }),
        "{e:?}"
    );
    // One more byte is not.
    let header = (MAX_FRAME as u32 + 1).to_be_bytes();
    assert!(matches!(
        frame::read_sync::<ToWorker>(&mut &header[..]),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
}

#[tokio::test]
async fn senders_refuse_oversized_messages() {
    let huge = ToWorker::Request {
        id: 1,
        body: Request::Generate(GenerateRequest {
            prompt: Prompt::Text("x".repeat(MAX_FRAME)),
            max_tokens: 1,
            sampling: Sampling::default(),
            stop: vec![],
            fault: None,
            images: Vec::new(),
        }),
    };
    assert!(matches!(
        frame::encode(&huge),
        Err(ProtocolError::FrameTooLarge { max: MAX_FRAME, .. })
    ));
    let mut out = Vec::new();
    assert!(matches!(
        frame::write_sync(&mut out, &huge),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
    assert!(out.is_empty(), "nothing may be written");
    let mut dst = BytesMut::new();
    let e = FrameCodec::default()
        .encode(Bytes::from(vec![0u8; MAX_FRAME + 1]), &mut dst)
        .expect_err("codec must refuse");
    assert!(matches!(e, ProtocolError::FrameTooLarge { .. }), "{e:?}");
    assert!(dst.is_empty());
    let (a, _b) = tokio::io::duplex(64);
    let e = Connection::new(a)
        .send(&huge)
        .await
        .expect_err("send must refuse");
    assert!(matches!(e, ProtocolError::FrameTooLarge { .. }), "{e:?}");
}

// ---------------------------------------------------------------------------------------
// Truncation and clean ends.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn truncated_header_is_truncated() {
    let bytes = [0u8, 0];
    let e = frame::read_sync::<ToWorker>(&mut &bytes[..]).expect_err("blocking");
    assert!(
        matches!(e, ProtocolError::Truncated { buffered: 2 }),
        "{e:?}"
    );
    assert!(e.is_malformed());
    let e = codec_eof(&bytes).expect_err("codec");
    assert!(
        matches!(e, ProtocolError::Truncated { buffered: 2 }),
        "{e:?}"
    );
    let e = conn_recv::<ToWorker>(&bytes).await.expect_err("connection");
    assert!(matches!(e, ProtocolError::Truncated { .. }), "{e:?}");
}

#[tokio::test]
async fn truncated_body_is_truncated() {
    let whole = frame_of(&frame::encode(&sample()).expect("encode"));
    for cut in [5, 7, whole.len() - 1] {
        let bytes = &whole[..cut];
        let e = frame::read_sync::<ToWorker>(&mut &bytes[..]).expect_err("blocking");
        assert!(
            matches!(e, ProtocolError::Truncated { buffered } if buffered == cut),
            "{e:?}"
        );
        let e = codec_eof(bytes).expect_err("codec");
        assert!(
            matches!(e, ProtocolError::Truncated { buffered } if buffered == cut),
            "{e:?}"
        );
        let e = conn_recv::<ToWorker>(bytes).await.expect_err("connection");
        assert!(matches!(e, ProtocolError::Truncated { .. }), "{e:?}");
    }
}

#[tokio::test]
async fn clean_eof_between_frames_is_none() {
    assert!(frame::read_sync::<ToWorker>(&mut &[][..])
        .expect("empty")
        .is_none());
    assert!(codec_eof(&[]).expect("empty").is_none());
    assert!(conn_recv::<ToWorker>(&[]).await.expect("empty").is_none());

    let mut two = Vec::new();
    frame::write_sync(&mut two, &sample()).expect("write");
    frame::write_sync(&mut two, &ToWorker::Shutdown).expect("write");
    let mut r = &two[..];
    assert_eq!(frame::read_sync(&mut r).expect("1st"), Some(sample()));
    assert_eq!(
        frame::read_sync(&mut r).expect("2nd"),
        Some(ToWorker::Shutdown)
    );
    assert_eq!(frame::read_sync::<ToWorker>(&mut r).expect("end"), None);

    let (mut w, r) = tokio::io::duplex(1 << 16);
    w.write_all(&two).await.expect("write");
    drop(w);
    let mut conn = Connection::new(r);
    assert_eq!(conn.recv().await.expect("1st"), Some(sample()));
    assert_eq!(conn.recv().await.expect("2nd"), Some(ToWorker::Shutdown));
    assert_eq!(conn.recv::<ToWorker>().await.expect("end"), None);
}

// ---------------------------------------------------------------------------------------
// Bad bodies.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn trailing_bytes_after_a_message_are_an_error() {
    let mut body = frame::encode(&sample()).expect("encode");
    body.extend_from_slice(&[0, 0, 0]);
    let bytes = frame_of(&body);
    let e = frame::read_sync::<ToWorker>(&mut &bytes[..]).expect_err("blocking");
    assert!(
        matches!(&e, ProtocolError::Unexpected(m) if m.contains("3 bytes after")),
        "{e:?}"
    );
    assert!(e.is_malformed());
    let e = conn_recv::<ToWorker>(&bytes).await.expect_err("connection");
    assert!(matches!(e, ProtocolError::Unexpected(_)), "{e:?}");
    assert!(frame::decode::<ToWorker>(&body).is_err());
}

#[tokio::test]
async fn bad_bodies_are_decode_errors() {
    let bad: [&[u8]; 6] = [
        &[],                             // empty frame: no variant
        &[4],                            // ToWorker has 4 variants
        &[200, 1],                       // far past the last variant
        &[0, 1, 0, 9],                   // Hello with an unknown Role
        &[0, 1, 0, 0, 2, 0xFF, 0xFE, 1], // Hello whose build is not UTF-8
        &[
            1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F,
        ], // overlong varint
    ];
    for body in bad {
        let bytes = frame_of(body);
        let e = frame::read_sync::<ToWorker>(&mut &bytes[..]).expect_err("blocking");
        assert!(matches!(e, ProtocolError::Decode(_)), "{body:?}: {e:?}");
        assert!(e.is_malformed());
        let e = conn_recv::<ToWorker>(&bytes).await.expect_err("connection");
        assert!(matches!(e, ProtocolError::Decode(_)), "{body:?}: {e:?}");
    }
    // FromWorker has 3 variants.
    assert!(matches!(
        frame::decode::<FromWorker>(&[3]),
        Err(ProtocolError::Decode(_))
    ));
}

// ---------------------------------------------------------------------------------------
// Fuzz harness: arbitrary and mutated bytes.
// ---------------------------------------------------------------------------------------

/// What a reader made of a byte stream: the re-encoded bodies of the messages it
/// yielded (comparing bytes, since a decoded NaN is not equal to itself) and how it
/// ended (`None` for a clean end, else the error's discriminant).
type Outcome = (Vec<Vec<u8>>, Option<std::mem::Discriminant<ProtocolError>>);

fn reencode<T: Serialize>(m: &T) -> Vec<u8> {
    postcard::to_allocvec(m).expect("a decoded message re-encodes")
}

fn blocking_outcome<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Outcome {
    let mut r = bytes;
    let mut out = Vec::new();
    loop {
        match frame::read_sync::<T>(&mut r) {
            Ok(Some(m)) => out.push(reencode(&m)),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(std::mem::discriminant(&e))),
        }
    }
}

fn codec_outcome<T: Serialize + DeserializeOwned>(bytes: &[u8], chunk: usize) -> Outcome {
    fn drain<T: Serialize + DeserializeOwned>(
        codec: &mut FrameCodec,
        buf: &mut BytesMut,
        out: &mut Vec<Vec<u8>>,
        eof: bool,
    ) -> Result<(), ProtocolError> {
        loop {
            let got = if eof {
                codec.decode_eof(buf)?
            } else {
                codec.decode(buf)?
            };
            match got {
                Some(f) => out.push(reencode(&frame::decode::<T>(&f)?)),
                None => return Ok(()),
            }
        }
    }
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(c);
        if let Err(e) = drain::<T>(&mut codec, &mut buf, &mut out, false) {
            return (out, Some(std::mem::discriminant(&e)));
        }
    }
    let end = drain::<T>(&mut codec, &mut buf, &mut out, true).err();
    (out, end.map(|e| std::mem::discriminant(&e)))
}

/// Both readers, both directions: no panic, and the same messages and the same kind of
/// ending whichever reader (and whatever chunking) is used.
fn readers_agree(bytes: &[u8], chunk: usize) -> Result<(), TestCaseError> {
    let b = blocking_outcome::<ToWorker>(bytes);
    prop_assert_eq!(&codec_outcome::<ToWorker>(bytes, chunk), &b);
    let b = blocking_outcome::<FromWorker>(bytes);
    prop_assert_eq!(&codec_outcome::<FromWorker>(bytes, chunk), &b);
    assert_no_huge_allocation();
    Ok(())
}

/// A decoded body re-encodes to a body that decodes to the same encoding.
fn decode_is_stable<T: Serialize + DeserializeOwned>(body: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(m) = frame::decode::<T>(body) {
        let again = reencode(&m);
        let m2: T = frame::decode(&again).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(reencode(&m2), again);
    }
    Ok(())
}

/// Well-formed bodies of both directions, to mutate.
fn seed_bodies() -> Vec<Vec<u8>> {
    let hello = Hello {
        version: Version { major: 1, minor: 0 },
        role: Role::Worker,
        build: "mlxsup-worker 0.1.0".into(),
        pid: 77,
    };
    let mut v = vec![
        frame::encode(&ToWorker::Hello(hello.clone())).expect("encode"),
        frame::encode(&sample()).expect("encode"),
        frame::encode(&ToWorker::Cancel { id: 1 << 40 }).expect("encode"),
        frame::encode(&ToWorker::Shutdown).expect("encode"),
        frame::encode(&FromWorker::Hello(hello)).expect("encode"),
    ];
    for m in [
        FromWorker::Reply {
            id: 3,
            body: Reply::Matmul {
                size: 4,
                sum: 1.5,
                ms: 2.0,
            },
        },
        FromWorker::Event {
            id: Some(3),
            event: Event::Telemetry(Telemetry {
                t_ms: 1,
                phase: Phase::Decode,
                active_bytes: 2,
                peak_bytes: 3,
                cache_bytes: 4,
                footprint_bytes: 5,
                progress: 6,
            }),
        },
        FromWorker::Event {
            id: None,
            event: Event::Token {
                id: 5,
                text: "tok".into(),
            },
        },
    ] {
        v.push(frame::encode(&m).expect("encode"));
    }
    v
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut body: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let n = body.len();
        match *m {
            Mutation::Flip(i, b) if n > 0 => body[i % n] ^= b,
            Mutation::Set(i, b) if n > 0 => body[i % n] = b,
            Mutation::Insert(i, b) => body.insert(i % (n + 1), b),
            Mutation::Remove(i) if n > 0 => {
                body.remove(i % n);
            }
            Mutation::Truncate(i) => body.truncate(i % (n + 1)),
            _ => {}
        }
    }
    body
}

/// Mutated bodies, each framed with its correct length (so they reach the decoder),
/// sometimes followed by raw garbage.
fn mutated_stream() -> impl Strategy<Value = Vec<u8>> {
    let n = seed_bodies().len();
    (
        prop::collection::vec((0..n, prop::collection::vec(mutation(), 0..4)), 1..4),
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(frames, tail)| {
            let seeds = seed_bodies();
            let mut out = Vec::new();
            for (i, muts) in frames {
                out.extend(frame_of(&mutate(seeds[i].clone(), &muts)));
            }
            out.extend(tail);
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    /// The fuzz harness proper: `frame::decode` of both message enums from arbitrary
    /// bytes and from mutated real messages never panics, and what it accepts is stable.
    #[test]
    fn fuzz_decode_arbitrary_bodies(body in prop::collection::vec(any::<u8>(), 0..96)) {
        decode_is_stable::<ToWorker>(&body)?;
        decode_is_stable::<FromWorker>(&body)?;
    }

    #[test]
    fn fuzz_decode_mutated_bodies(
        seed in 0usize..8,
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let seeds = seed_bodies();
        let body = mutate(seeds[seed % seeds.len()].clone(), &muts);
        decode_is_stable::<ToWorker>(&body)?;
        decode_is_stable::<FromWorker>(&body)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Arbitrary byte streams into both readers: no panic, message or error, and the
    /// blocking reader and the async codec agree.
    #[test]
    fn arbitrary_streams_never_panic_and_readers_agree(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        chunk in 1usize..32,
    ) {
        readers_agree(&bytes, chunk)?;
    }

    /// The same with streams of correctly framed, mutated messages, which get past the
    /// framing into the decoder far more often than random bytes do.
    #[test]
    fn mutated_streams_never_panic_and_readers_agree(
        bytes in mutated_stream(),
        chunk in 1usize..32,
    ) {
        readers_agree(&bytes, chunk)?;
    }

    /// Small announced lengths with arbitrary bodies (most random headers are oversized).
    #[test]
    fn small_frames_of_garbage_never_panic(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..48), 0..5),
        chunk in 1usize..16,
    ) {
        let bytes: Vec<u8> = frames.iter().flat_map(|f| frame_of(f)).collect();
        readers_agree(&bytes, chunk)?;
    }
}
