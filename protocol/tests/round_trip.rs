//! Round trips: every message both ways through the blocking functions and the async codec (fixed samples and proptest-generated ones), byte-for-byte agreement between the two, and the JSON names of the failure taxonomy.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use protocol::{
    frame::{self, FrameCodec},
    handshake::{Hello, Role},
    version::Version,
    ChatMessage, DoneInfo, Event, Failure, FailureKind, Fault, FaultAction, FaultPoint,
    FinishReason, FromWorker, GenerateRequest, ImageInput, Limits, LoadInfo, LoadRequest,
    ModelSpec, Phase, Prompt, ProtocolError, Reply, Request, Sampling, SystemInfo, Telemetry,
    ToWorker, WorkerError, WorkerErrorKind,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::{Decoder, Encoder};

// ---------------------------------------------------------------------------------------
// Fixed samples: every variant of every message enum.
// ---------------------------------------------------------------------------------------

fn hello(role: Role) -> Hello {
    Hello {
        version: Version { major: 1, minor: 0 },
        role,
        build: "mlxsup-test 0.1.0".into(),
        pid: 4242,
    }
}

fn telemetry(phase: Phase) -> Telemetry {
    Telemetry {
        t_ms: 17,
        phase,
        active_bytes: 1 << 30,
        peak_bytes: 3 << 30,
        cache_bytes: 12345,
        footprint_bytes: u64::MAX,
        progress: 99,
    }
}

fn requests() -> Vec<Request> {
    vec![
        Request::SystemInfo,
        Request::Matmul { size: 512 },
        Request::Load(LoadRequest {
            model_dir: "/models/qwen3-0.6b".into(),
            limits: Limits {
                memory_limit: Some(8 << 30),
                cache_limit: Some(0),
                wired_limit: None,
                soft_budget: Some(7 << 30),
            },
            prefill_chunk: 512,
            telemetry_interval_ms: 100,
            fault: Some(Fault {
                action: FaultAction::Alloc(1 << 40),
                point: FaultPoint::Load,
            }),
            device: protocol::Device::Cpu,
            compute: protocol::ComputeDtype::F32,
            kv_bits: None,
            activation: Some(Box::new(protocol::ActivationModel {
                half: protocol::ActivationCoefficients {
                    score_bytes: 2.5,
                    mlp_bytes: 12.0,
                    mask_bytes: 1.0,
                    overhead_bytes: 2e6,
                },
                full: protocol::ActivationCoefficients {
                    score_bytes: 4.5,
                    mlp_bytes: 24.0,
                    mask_bytes: 1.5,
                    overhead_bytes: 1e6,
                },
                vision: Some([
                    protocol::VisionCoefficients {
                        score_bytes: 4.0,
                        width_bytes: 24.5,
                        mlp_bytes: 7.5,
                        full_width_bytes: 13.0,
                        pixel_bytes: 16.0,
                    },
                    protocol::VisionCoefficients {
                        score_bytes: 4.25,
                        width_bytes: 25.0,
                        mlp_bytes: 7.75,
                        full_width_bytes: 13.5,
                        pixel_bytes: 17.0,
                    },
                ]),
            })),
            prefix_cache: 1 << 30,
        }),
        Request::Generate(GenerateRequest {
            prompt: Prompt::Text("Once upon a time ✨".into()),
            max_tokens: 64,
            sampling: Sampling::default(),
            stop: vec!["\n\n".into(), "</s>".into()],
            fault: None,
            images: Vec::new(),
        }),
        Request::Generate(GenerateRequest {
            prompt: Prompt::Chat(vec![
                ChatMessage {
                    role: "system".into(),
                    content: String::new(),
                },
                ChatMessage {
                    role: "user".into(),
                    content: "héllo".into(),
                },
            ]),
            max_tokens: 1,
            sampling: Sampling {
                temperature: 0.7,
                top_p: 0.95,
                seed: Some(u64::MAX),
            },
            stop: vec![],
            fault: Some(Fault {
                action: FaultAction::Exit(-3),
                point: FaultPoint::Decode(9),
            }),
            images: Vec::new(),
        }),
        Request::Generate(GenerateRequest {
            prompt: Prompt::Tokens(vec![0, 1, u32::MAX]),
            max_tokens: u32::MAX,
            sampling: Sampling::default(),
            stop: vec![],
            fault: Some(Fault {
                action: FaultAction::AbortMetalOom,
                point: FaultPoint::Prefill,
            }),
            images: Vec::new(),
        }),
        // Since 1.4: a chat prompt with two images on its first message.
        Request::Generate(GenerateRequest {
            prompt: Prompt::Chat(vec![ChatMessage {
                role: "user".into(),
                content: "What is in the pictures?".into(),
            }]),
            max_tokens: 32,
            sampling: Sampling::default(),
            stop: vec![],
            fault: None,
            images: vec![
                ImageInput {
                    message: 0,
                    width: 28,
                    height: 56,
                    rgb: (0..28 * 56 * 3).map(|i| (i % 251) as u8).collect(),
                },
                ImageInput {
                    message: 0,
                    width: 56,
                    height: 28,
                    rgb: vec![255; 56 * 28 * 3],
                },
            ],
        }),
        Request::Unload,
        Request::MakeModel(ModelSpec {
            dir: "/tmp/m".into(),
            arch: "llama".into(),
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 128,
            vocab: 1000,
            dtype: "bf16".into(),
            quant_bits: Some(4),
            group_size: 64,
            seed: 7,
            options: Default::default(),
        }),
    ]
}

fn replies() -> Vec<Reply> {
    vec![
        Reply::SystemInfo(SystemInfo {
            mlx_version: "0.29.1".into(),
            device: "gpu".into(),
            backend: "metal".into(),
            total_memory: 64 << 30,
            memory_limit: 48 << 30,
            recommended_working_set: Some(51 << 30),
            max_buffer_length: None,
            pid: 99,
        }),
        Reply::Matmul {
            size: 3,
            sum: -1.5e300,
            ms: 0.25,
        },
        Reply::Loaded(LoadInfo {
            architecture: "qwen3".into(),
            load_ms: 1200,
            weight_bytes: 1 << 31,
            active_bytes: 1 << 31,
            peak_bytes: 1 << 32,
            vocab_size: 151_936,
            device: "gpu".into(),
            compute_dtype: "float32".into(),
            mlx_version: "0.32.2".into(),
            backend: "metal".into(),
        }),
        Reply::Done(DoneInfo {
            prompt_tokens: 5,
            generated_tokens: 64,
            prompt_tps: 100.0,
            generation_tps: f64::INFINITY,
            peak_bytes: 0,
            finish: FinishReason::Length,
            cached_tokens: 3,
            prefix_cache_bytes: 1 << 20,
        }),
        Reply::Done(DoneInfo {
            prompt_tokens: 0,
            generated_tokens: 0,
            prompt_tps: 0.0,
            generation_tps: -0.0,
            peak_bytes: 1,
            finish: FinishReason::Cancelled,
            cached_tokens: 3,
            prefix_cache_bytes: 1 << 20,
        }),
        Reply::Unloaded,
        Reply::ModelMade {
            dir: "/tmp/m".into(),
            weight_bytes: 123,
        },
        Reply::Error(WorkerError {
            kind: WorkerErrorKind::MemoryBudgetExceeded,
            message: "step needs 9 GiB, budget 8 GiB".into(),
        }),
    ]
}

fn events() -> Vec<Event> {
    vec![
        Event::Telemetry(telemetry(Phase::Decode)),
        Event::Token {
            id: 42,
            text: "wörld".into(),
        },
        Event::Token {
            id: 0,
            text: String::new(),
        },
        Event::Phase(Phase::Prefill),
        Event::Progress {
            done: 10,
            total: 20,
        },
        Event::Vision(Box::new(protocol::VisionPeak {
            patches: vec![1024, 3072],
            activation_bytes: 1_234_567_890,
            predicted_bytes: 1_300_000_000,
        })),
    ]
}

fn to_worker_samples() -> Vec<ToWorker> {
    let mut v = vec![ToWorker::Hello(hello(Role::Supervisor))];
    v.extend(
        requests()
            .into_iter()
            .enumerate()
            .map(|(i, body)| ToWorker::Request { id: i as u64, body }),
    );
    v.push(ToWorker::Request {
        id: u64::MAX,
        body: Request::Unload,
    });
    v.push(ToWorker::Cancel { id: 3 });
    v.push(ToWorker::Shutdown);
    v
}

fn from_worker_samples() -> Vec<FromWorker> {
    let mut v = vec![FromWorker::Hello(hello(Role::Worker))];
    v.extend(
        replies()
            .into_iter()
            .enumerate()
            .map(|(i, body)| FromWorker::Reply { id: i as u64, body }),
    );
    v.extend(
        events()
            .into_iter()
            .enumerate()
            .map(|(i, event)| FromWorker::Event {
                id: (i % 2 == 0).then_some(i as u64),
                event,
            }),
    );
    v
}

// Exhaustive matches (no wildcard): a new variant does not compile until it has a sample.
fn to_worker_variant(m: &ToWorker) -> usize {
    match m {
        ToWorker::Hello(_) => 0,
        ToWorker::Request { .. } => 1,
        ToWorker::Cancel { .. } => 2,
        ToWorker::Shutdown => 3,
    }
}
fn from_worker_variant(m: &FromWorker) -> usize {
    match m {
        FromWorker::Hello(_) => 0,
        FromWorker::Reply { .. } => 1,
        FromWorker::Event { .. } => 2,
    }
}
fn request_variant(m: &Request) -> usize {
    match m {
        Request::SystemInfo => 0,
        Request::Matmul { .. } => 1,
        Request::Load(_) => 2,
        Request::Generate(_) => 3,
        Request::Unload => 4,
        Request::MakeModel(_) => 5,
    }
}
fn reply_variant(m: &Reply) -> usize {
    match m {
        Reply::SystemInfo(_) => 0,
        Reply::Matmul { .. } => 1,
        Reply::Loaded(_) => 2,
        Reply::Done(_) => 3,
        Reply::Unloaded => 4,
        Reply::ModelMade { .. } => 5,
        Reply::Error(_) => 6,
    }
}
fn event_variant(m: &Event) -> usize {
    match m {
        Event::Telemetry(_) => 0,
        Event::Token { .. } => 1,
        Event::Phase(_) => 2,
        Event::Progress { .. } => 3,
        Event::Vision(_) => 4,
    }
}
fn prompt_variant(m: &Prompt) -> usize {
    match m {
        Prompt::Text(_) => 0,
        Prompt::Chat(_) => 1,
        Prompt::Tokens(_) => 2,
    }
}

fn covers<T>(items: &[T], f: impl Fn(&T) -> usize, n: usize) {
    let mut seen = vec![false; n];
    for i in items {
        seen[f(i)] = true;
    }
    assert!(seen.iter().all(|s| *s), "samples miss a variant: {seen:?}");
}

#[test]
fn samples_cover_every_variant() {
    covers(&to_worker_samples(), to_worker_variant, 4);
    covers(&from_worker_samples(), from_worker_variant, 3);
    covers(&requests(), request_variant, 6);
    covers(&replies(), reply_variant, 7);
    covers(&events(), event_variant, 5);
    let prompts: Vec<Prompt> = requests()
        .into_iter()
        .filter_map(|r| match r {
            Request::Generate(g) => Some(g.prompt),
            _ => None,
        })
        .collect();
    covers(&prompts, prompt_variant, 3);
}

// ---------------------------------------------------------------------------------------
// Helpers: the blocking and the codec paths.
// ---------------------------------------------------------------------------------------

fn sync_bytes<T: Serialize>(msgs: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        frame::write_sync(&mut out, m).expect("write_sync");
    }
    out
}

fn sync_read_all<T: DeserializeOwned>(bytes: &[u8]) -> Result<Vec<T>, ProtocolError> {
    let mut r = bytes;
    let mut out = Vec::new();
    while let Some(m) = frame::read_sync(&mut r)? {
        out.push(m);
    }
    Ok(out)
}

fn codec_bytes<T: Serialize>(msgs: &[T]) -> Vec<u8> {
    let mut codec = FrameCodec::default();
    let mut dst = BytesMut::new();
    for m in msgs {
        let body = Bytes::from(frame::encode(m).expect("encode"));
        codec.encode(body, &mut dst).expect("codec encode");
    }
    dst.to_vec()
}

/// Feeds `bytes` to the codec `chunk` bytes at a time, as a socket would, then EOF.
fn codec_read_all<T: DeserializeOwned>(
    bytes: &[u8],
    chunk: usize,
) -> Result<Vec<T>, ProtocolError> {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(c);
        while let Some(f) = codec.decode(&mut buf)? {
            out.push(frame::decode(&f)?);
        }
    }
    while let Some(f) = codec.decode_eof(&mut buf)? {
        out.push(frame::decode(&f)?);
    }
    Ok(out)
}

fn check_all_paths<T>(msgs: &[T], chunk: usize) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let sync = sync_bytes(msgs);
    let codec = codec_bytes(msgs);
    prop_assert_eq!(&sync, &codec, "blocking and codec encodings differ");
    let via_sync: Vec<T> = sync_read_all(&sync).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&via_sync, msgs);
    let via_codec: Vec<T> =
        codec_read_all(&sync, chunk).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&via_codec, msgs);
    Ok(())
}

#[test]
fn samples_round_trip_blocking_and_codec_with_identical_bytes() {
    let to = to_worker_samples();
    let from = from_worker_samples();
    // Whole buffer at once, byte by byte, and a few awkward chunk sizes in between.
    for chunk in [usize::MAX, 1, 2, 3, 5, 7, 64] {
        check_all_paths(&to, chunk).expect("ToWorker");
        check_all_paths(&from, chunk).expect("FromWorker");
    }
}

#[test]
fn frame_layout_is_be_length_then_postcard_body() {
    let msg = ToWorker::Cancel { id: 300 };
    let bytes = sync_bytes(std::slice::from_ref(&msg));
    let body = postcard::to_allocvec(&msg).expect("postcard");
    assert_eq!(body, [2, 0xAC, 0x02]); // variant 2, varint 300
    assert_eq!(&bytes[..4], &(body.len() as u32).to_be_bytes());
    assert_eq!(&bytes[4..], &body[..]);
}

/// A whole session over an in-memory duplex through the async `Connection`: messages
/// both ways, in order, then a clean end.
#[tokio::test]
async fn connection_round_trips_both_ways() {
    let (a, b) = tokio::io::duplex(64); // small buffer: frames cross it in pieces
    let mut sup = protocol::client::Connection::new(a);
    let mut wrk = protocol::client::Connection::new(b);
    let to = to_worker_samples();
    let from = from_worker_samples();
    let (to2, from2) = (to.clone(), from.clone());
    let worker = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..to2.len() {
            got.push(wrk.recv::<ToWorker>().await.expect("recv").expect("msg"));
        }
        for m in &from2 {
            wrk.send(m).await.expect("send");
        }
        got
    });
    for m in &to {
        sup.send(m).await.expect("send");
    }
    let mut got = Vec::new();
    for _ in 0..from.len() {
        got.push(sup.recv::<FromWorker>().await.expect("recv").expect("msg"));
    }
    assert_eq!(worker.await.expect("join"), to);
    assert_eq!(got, from);
    // The worker side is dropped: a clean end between frames.
    assert!(sup.recv::<FromWorker>().await.expect("clean eof").is_none());
}

/// Bytes written by the blocking writer are read by the async connection and vice versa.
#[tokio::test]
async fn blocking_and_async_sides_interoperate_over_a_socket() {
    let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
    a.set_nonblocking(true).expect("nonblocking");
    let mut conn =
        protocol::client::Connection::new(tokio::net::UnixStream::from_std(a).expect("from_std"));
    let to = to_worker_samples();
    let from = from_worker_samples();
    let (to2, from2) = (to.clone(), from.clone());
    let worker = std::thread::spawn(move || {
        let mut r = b.try_clone().expect("clone");
        let mut w = b;
        let mut got = Vec::new();
        for _ in 0..to2.len() {
            got.push(
                frame::read_sync::<ToWorker>(&mut r)
                    .expect("read")
                    .expect("msg"),
            );
        }
        for m in &from2 {
            frame::write_sync(&mut w, m).expect("write");
        }
        got
    });
    for m in &to {
        conn.send(m).await.expect("send");
    }
    let mut got = Vec::new();
    for _ in 0..from.len() {
        got.push(conn.recv::<FromWorker>().await.expect("recv").expect("msg"));
    }
    assert_eq!(worker.join().expect("join"), to);
    assert_eq!(got, from);
    assert!(conn.recv::<FromWorker>().await.expect("eof").is_none());
}

// ---------------------------------------------------------------------------------------
// Proptest strategies.
// ---------------------------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    ".{0,24}"
}
fn f64_no_nan() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("NaN is not equal to itself", |f| !f.is_nan())
}
fn f32_no_nan() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("NaN is not equal to itself", |f| !f.is_nan())
}
fn phase() -> impl Strategy<Value = Phase> {
    prop_oneof![
        Just(Phase::Spawn),
        Just(Phase::Handshake),
        Just(Phase::Load),
        Just(Phase::Prefill),
        Just(Phase::Decode),
        Just(Phase::Idle),
    ]
}
fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Supervisor),
        Just(Role::Worker),
        Just(Role::Daemon),
        Just(Role::Client),
    ]
}
fn arb_hello() -> impl Strategy<Value = Hello> {
    (any::<u16>(), any::<u16>(), role(), text(), any::<u32>()).prop_map(
        |(major, minor, role, build, pid)| Hello {
            version: Version { major, minor },
            role,
            build,
            pid,
        },
    )
}
fn fault() -> impl Strategy<Value = Fault> {
    let action = prop_oneof![
        Just(FaultAction::AbortMetalOom),
        Just(FaultAction::Segv),
        Just(FaultAction::Kill),
        any::<i32>().prop_map(FaultAction::Exit),
        Just(FaultAction::Hang),
        any::<u64>().prop_map(FaultAction::Alloc),
    ];
    let point = prop_oneof![
        Just(FaultPoint::Load),
        Just(FaultPoint::Prefill),
        any::<u32>().prop_map(FaultPoint::Decode),
    ];
    (action, point).prop_map(|(action, point)| Fault { action, point })
}
fn prompt() -> impl Strategy<Value = Prompt> {
    prop_oneof![
        text().prop_map(Prompt::Text),
        prop::collection::vec(
            (text(), text()).prop_map(|(role, content)| ChatMessage { role, content }),
            0..4
        )
        .prop_map(Prompt::Chat),
        prop::collection::vec(any::<u32>(), 0..16).prop_map(Prompt::Tokens),
    ]
}
fn arb_request() -> impl Strategy<Value = Request> {
    let limits = (
        any::<Option<u64>>(),
        any::<Option<u64>>(),
        any::<Option<u64>>(),
        any::<Option<u64>>(),
    )
        .prop_map(
            |(memory_limit, cache_limit, wired_limit, soft_budget)| Limits {
                memory_limit,
                cache_limit,
                wired_limit,
                soft_budget,
            },
        );
    let load = (
        text(),
        limits,
        any::<u32>(),
        any::<u32>(),
        prop::option::of(fault()),
    )
        .prop_map(
            |(model_dir, limits, prefill_chunk, telemetry_interval_ms, fault)| LoadRequest {
                model_dir,
                limits,
                prefill_chunk,
                telemetry_interval_ms,
                fault,
                device: protocol::Device::Gpu,
                compute: protocol::ComputeDtype::Native,
                kv_bits: None,
                activation: None,
                prefix_cache: 1 << 30,
            },
        );
    let sampling = (f32_no_nan(), f32_no_nan(), any::<Option<u64>>()).prop_map(
        |(temperature, top_p, seed)| Sampling {
            temperature,
            top_p,
            seed,
        },
    );
    let generate = (
        prompt(),
        any::<u32>(),
        sampling,
        prop::collection::vec(text(), 0..3),
        prop::option::of(fault()),
    )
        .prop_map(
            |(prompt, max_tokens, sampling, stop, fault)| GenerateRequest {
                prompt,
                max_tokens,
                sampling,
                stop,
                fault,
                images: Vec::new(),
            },
        );
    let spec = (
        (text(), text(), text()),
        prop::array::uniform6(any::<u32>()),
        any::<Option<u32>>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |((dir, arch, dtype), n, quant_bits, group_size, seed)| ModelSpec {
                dir,
                arch,
                hidden: n[0],
                layers: n[1],
                heads: n[2],
                kv_heads: n[3],
                intermediate: n[4],
                vocab: n[5],
                dtype,
                quant_bits,
                group_size,
                seed,
                options: Default::default(),
            },
        );
    prop_oneof![
        Just(Request::SystemInfo),
        any::<u32>().prop_map(|size| Request::Matmul { size }),
        load.prop_map(Request::Load),
        generate.prop_map(Request::Generate),
        Just(Request::Unload),
        spec.prop_map(Request::MakeModel),
    ]
}
fn arb_reply() -> impl Strategy<Value = Reply> {
    let info = (
        (text(), text(), text()),
        (any::<u64>(), any::<u64>()),
        (any::<Option<u64>>(), any::<Option<u64>>()),
        any::<u32>(),
    )
        .prop_map(
            |(
                (mlx_version, device, backend),
                (total_memory, memory_limit),
                (recommended_working_set, max_buffer_length),
                pid,
            )| SystemInfo {
                mlx_version,
                device,
                backend,
                total_memory,
                memory_limit,
                recommended_working_set,
                max_buffer_length,
                pid,
            },
        );
    let loaded = (text(), prop::array::uniform4(any::<u64>()), any::<u32>()).prop_map(
        |(architecture, n, vocab_size)| LoadInfo {
            architecture,
            load_ms: n[0],
            weight_bytes: n[1],
            active_bytes: n[2],
            peak_bytes: n[3],
            vocab_size,
            device: "cpu".into(),
            compute_dtype: "bfloat16 (quantized)".into(),
            mlx_version: "0.32.2".into(),
            backend: "cpu".into(),
        },
    );
    let finish = prop_oneof![
        Just(FinishReason::Length),
        Just(FinishReason::Eos),
        Just(FinishReason::Stop),
        Just(FinishReason::Cancelled),
    ];
    let done = (
        any::<u32>(),
        any::<u32>(),
        f64_no_nan(),
        f64_no_nan(),
        any::<u64>(),
        finish,
    )
        .prop_map(
            |(prompt_tokens, generated_tokens, prompt_tps, generation_tps, peak_bytes, finish)| {
                DoneInfo {
                    prompt_tokens,
                    generated_tokens,
                    prompt_tps,
                    generation_tps,
                    peak_bytes,
                    finish,
                    cached_tokens: 3,
                    prefix_cache_bytes: 1 << 20,
                }
            },
        );
    let error_kind = prop_oneof![
        Just(WorkerErrorKind::LoadFailed),
        Just(WorkerErrorKind::MemoryBudgetExceeded),
        Just(WorkerErrorKind::AllocationFailed),
        Just(WorkerErrorKind::Cancelled),
        Just(WorkerErrorKind::BadRequest),
        Just(WorkerErrorKind::Internal),
    ];
    prop_oneof![
        info.prop_map(Reply::SystemInfo),
        (any::<u32>(), f64_no_nan(), f64_no_nan()).prop_map(|(size, sum, ms)| Reply::Matmul {
            size,
            sum,
            ms
        }),
        loaded.prop_map(Reply::Loaded),
        done.prop_map(Reply::Done),
        Just(Reply::Unloaded),
        (text(), any::<u64>())
            .prop_map(|(dir, weight_bytes)| Reply::ModelMade { dir, weight_bytes }),
        (error_kind, text())
            .prop_map(|(kind, message)| Reply::Error(WorkerError { kind, message })),
    ]
}
fn arb_telemetry() -> impl Strategy<Value = Telemetry> {
    (any::<u64>(), phase(), prop::array::uniform4(any::<u64>())).prop_map(|(t_ms, phase, n)| {
        Telemetry {
            t_ms,
            phase,
            active_bytes: n[0],
            peak_bytes: n[1],
            cache_bytes: n[2],
            footprint_bytes: n[3],
            progress: n[0] ^ n[3],
        }
    })
}
fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        arb_telemetry().prop_map(Event::Telemetry),
        (any::<u32>(), text()).prop_map(|(id, text)| Event::Token { id, text }),
        phase().prop_map(Event::Phase),
        (any::<u64>(), any::<u64>()).prop_map(|(done, total)| Event::Progress { done, total }),
        (
            proptest::collection::vec(any::<u64>(), 0..8),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(patches, activation_bytes, predicted_bytes)| Event::Vision(Box::new(
                    protocol::VisionPeak {
                        patches,
                        activation_bytes,
                        predicted_bytes
                    }
                ))
            ),
    ]
}
fn arb_to_worker() -> impl Strategy<Value = ToWorker> {
    prop_oneof![
        arb_hello().prop_map(ToWorker::Hello),
        (any::<u64>(), arb_request()).prop_map(|(id, body)| ToWorker::Request { id, body }),
        any::<u64>().prop_map(|id| ToWorker::Cancel { id }),
        Just(ToWorker::Shutdown),
    ]
}
fn arb_from_worker() -> impl Strategy<Value = FromWorker> {
    prop_oneof![
        arb_hello().prop_map(FromWorker::Hello),
        (any::<u64>(), arb_reply()).prop_map(|(id, body)| FromWorker::Reply { id, body }),
        (any::<Option<u64>>(), arb_event()).prop_map(|(id, event)| FromWorker::Event { id, event }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Generated streams of messages round-trip through both paths, the two paths
    /// write the same bytes, and the codec reads them whatever the socket's chunking.
    #[test]
    fn generated_to_worker_round_trips(
        msgs in prop::collection::vec(arb_to_worker(), 1..6),
        chunk in 1usize..40,
    ) {
        check_all_paths(&msgs, chunk)?;
    }

    #[test]
    fn generated_from_worker_round_trips(
        msgs in prop::collection::vec(arb_from_worker(), 1..6),
        chunk in 1usize..40,
    ) {
        check_all_paths(&msgs, chunk)?;
    }

    /// Payloads on their own (the pieces other crates store or forward) round-trip too.
    #[test]
    fn generated_payloads_round_trip(
        req in arb_request(),
        rep in arb_reply(),
        ev in arb_event(),
    ) {
        check_all_paths(std::slice::from_ref(&req), usize::MAX)?;
        check_all_paths(std::slice::from_ref(&rep), usize::MAX)?;
        check_all_paths(std::slice::from_ref(&ev), usize::MAX)?;
    }
}

// ---------------------------------------------------------------------------------------
// The failure taxonomy's names.
// ---------------------------------------------------------------------------------------

#[test]
fn failure_kind_json_names_are_as_str() {
    for kind in FailureKind::ALL {
        let json = serde_json::to_string(&kind).expect("json");
        assert_eq!(json, format!("\"{}\"", kind.as_str()));
        assert_eq!(kind.to_string(), kind.as_str());
        let back: FailureKind = serde_json::from_str(&json).expect("from json");
        assert_eq!(back, kind);
    }
    let mut names: Vec<&str> = FailureKind::ALL.iter().map(|k| k.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), FailureKind::ALL.len(), "duplicate names");
    // `ALL` is in wire order: postcard writes each kind as its position.
    for (i, kind) in FailureKind::ALL.iter().enumerate() {
        assert_eq!(postcard::to_allocvec(kind).expect("postcard"), [i as u8]);
    }
}

#[test]
fn phase_json_names_are_as_str() {
    use Phase::*;
    for phase in [Spawn, Handshake, Load, Prefill, Decode, Idle] {
        let json = serde_json::to_string(&phase).expect("json");
        assert_eq!(json, format!("\"{}\"", phase.as_str()));
        assert_eq!(phase.to_string(), phase.as_str());
    }
}

#[test]
fn failure_round_trips_in_json_and_on_the_wire() {
    let failure = Failure {
        kind: FailureKind::MetalOutOfMemory,
        phase: Phase::Decode,
        model: Some("/models/x".into()),
        exit_code: None,
        signal: Some("SIGABRT".into()),
        core_dumped: false,
        signal_sent_by_supervisor: false,
        peak_bytes: Some(9 << 30),
        last_telemetry: vec![telemetry(Phase::Prefill), telemetry(Phase::Decode)],
        estimate_bytes: Some(8 << 30),
        budget_bytes: Some(7 << 30),
        message: None,
        stderr_tail: "[metal::malloc] Resource limit exceeded\n".into(),
        duration_ms: 1234,
        advice: "use a smaller model".into(),
        remedy: protocol::Remedy::default(),
        stage: None,
        evidence: None,
    };
    let json = serde_json::to_value(&failure).expect("json");
    assert_eq!(json["kind"], "metal_out_of_memory");
    assert_eq!(json["phase"], "decode");
    let back: Failure = serde_json::from_value(json).expect("from json");
    assert_eq!(back, failure);
    check_all_paths(&[failure], 3).expect("wire");
}
