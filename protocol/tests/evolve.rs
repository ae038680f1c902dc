//! Property tests of negotiation: for random messages and every pair of minors (a, b),
//! what one side sends at the negotiated minor min(a, b) reads, on the other side, as the
//! message minus what that minor lacks; a request whose options it lacks is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a failure here is a test failure.

use proptest::prelude::*;
use protocol::{
    compute::{ComputeDtype, ComputePolicy},
    control::{
        ControlEvent, ControlReply, ControlRequest, FromDaemon, GenerateDone, GenerateModel,
        LoadModel, ToDaemon,
    },
    frame,
    wire::{Evolve, Wire},
    ActivationCoefficients, ActivationModel, Device, DoneInfo, FinishReason, FromWorker,
    GenerateRequest, ImageInput, Limits, LoadInfo, LoadRequest, ModelOptions, ModelSpec, Prompt,
    ProtocolError, Reply, Request, Sampling, ToWorker, VisionCoefficients,
};
use serde::{de::DeserializeOwned, Serialize};

const WORKER: u16 = protocol::version::CURRENT.minor;
const CONTROL: u16 = protocol::control::version::CURRENT.minor;

/// Sends `msg` at `wire` and reads it back there; `Err` when it is refused.
fn send<T: Serialize + DeserializeOwned + Evolve + Clone>(
    msg: &T,
    wire: Wire,
) -> Result<Option<T>, String> {
    match frame::encode_at(msg, wire) {
        Ok(Some(body)) => Ok(Some(
            frame::decode_at(&body, wire).map_err(|e| e.to_string())?,
        )),
        Ok(None) => Ok(None),
        Err(ProtocolError::Unsupported(why)) => Err(why),
        Err(e) => panic!("encode at {wire:?}: {e}"),
    }
}

fn device() -> impl Strategy<Value = Device> {
    prop_oneof![Just(Device::Default), Just(Device::Gpu), Just(Device::Cpu)]
}

fn coefficients() -> impl Strategy<Value = ActivationCoefficients> {
    (0.0..10.0f64, 0.0..10.0f64).prop_map(|(a, b)| ActivationCoefficients {
        score_bytes: a,
        mlp_bytes: b,
        mask_bytes: 1.0,
        overhead_bytes: 1e8,
    })
}

fn activation() -> impl Strategy<Value = Option<Box<ActivationModel>>> {
    proptest::option::of((coefficients(), coefficients(), any::<bool>()).prop_map(
        |(half, full, vision)| {
            let v = VisionCoefficients {
                score_bytes: 2.0,
                width_bytes: 3.0,
                mlp_bytes: 4.0,
                full_width_bytes: 5.0,
                pixel_bytes: 6.0,
            };
            Box::new(ActivationModel {
                half,
                full,
                vision: vision.then_some([v, v]),
            })
        },
    ))
}

fn load_request() -> impl Strategy<Value = LoadRequest> {
    (
        "[a-z/]{1,12}",
        device(),
        any::<bool>(),
        proptest::option::of(prop_oneof![Just(4u8), Just(8u8)]),
        activation(),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(dir, device, f32, kv_bits, activation, soft)| LoadRequest {
                model_dir: dir,
                limits: Limits {
                    soft_budget: soft,
                    ..Limits::default()
                },
                prefill_chunk: 512,
                telemetry_interval_ms: 100,
                fault: None,
                device,
                compute: if f32 {
                    ComputeDtype::F32
                } else {
                    ComputeDtype::Native
                },
                kv_bits,
                activation,
                prefix_cache: 0,
            },
        )
}

fn generate_request() -> impl Strategy<Value = GenerateRequest> {
    (
        ".{0,20}",
        any::<u32>(),
        proptest::collection::vec(
            (1u32..4, 1u32..4).prop_flat_map(|(w, h)| {
                proptest::collection::vec(any::<u8>(), (w * h * 3) as usize).prop_map(move |rgb| {
                    ImageInput {
                        message: 0,
                        width: w,
                        height: h,
                        rgb,
                    }
                })
            }),
            0..3,
        ),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(text, max_tokens, images, seed)| GenerateRequest {
            prompt: Prompt::Text(text),
            max_tokens,
            sampling: Sampling {
                seed,
                ..Sampling::default()
            },
            stop: vec!["\n".into()],
            fault: None,
            images,
        })
}

fn load_info() -> impl Strategy<Value = LoadInfo> {
    (
        "[a-z0-9]{1,8}",
        any::<u64>(),
        "[a-z]{0,6}",
        "[a-z0-9]{0,8}",
        "[a-z.0-9]{0,6}",
    )
        .prop_map(
            |(architecture, bytes, device, compute_dtype, mlx_version)| LoadInfo {
                architecture,
                load_ms: 5,
                weight_bytes: bytes,
                active_bytes: bytes / 2,
                peak_bytes: bytes,
                vocab_size: 1000,
                device,
                compute_dtype,
                backend: mlx_version.clone(),
                mlx_version,
            },
        )
}

fn model_spec() -> impl Strategy<Value = ModelSpec> {
    (
        any::<u32>(),
        any::<bool>(),
        proptest::option::of(1u32..9999),
    )
        .prop_map(|(experts, hf_layout, sliding_window)| ModelSpec {
            dir: "/m".into(),
            arch: "qwen3".into(),
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 128,
            vocab: 100,
            dtype: "bf16".into(),
            quant_bits: None,
            group_size: 64,
            seed: 1,
            options: ModelOptions {
                experts,
                sliding_window,
                hf_layout,
                ..ModelOptions::default()
            },
        })
}

/// What a worker at `minor` reads of `r`, or `Err` when it must be refused.
fn worker_sees(r: &Request, minor: u16) -> Result<Request, ()> {
    let mut r = r.clone();
    match &mut r {
        Request::Load(l) => {
            if (minor < 1 && l.device != Device::Default)
                || (minor < 2 && l.compute != ComputeDtype::Native)
                || (minor < 3 && l.kv_bits.is_some())
            {
                return Err(());
            }
            if minor < 3 {
                l.activation = None;
            }
            if minor < 5 {
                if let Some(a) = &mut l.activation {
                    a.vision = None;
                }
            }
        }
        Request::Generate(g) if minor < 4 && !g.images.is_empty() => return Err(()),
        Request::MakeModel(m) => {
            if minor < 3 {
                m.options = ModelOptions::default();
            }
            if minor < 5 {
                m.options.hf_layout = false;
            }
        }
        _ => {}
    }
    Ok(r)
}

fn info_at(i: &LoadInfo, minor: u16) -> LoadInfo {
    let mut i = i.clone();
    if minor < 1 {
        i.device.clear();
    }
    if minor < 2 {
        i.compute_dtype.clear();
    }
    if minor < 3 {
        i.mlx_version.clear();
        i.backend.clear();
    }
    i
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        load_request().prop_map(Request::Load),
        generate_request().prop_map(Request::Generate),
        model_spec().prop_map(Request::MakeModel),
        Just(Request::Unload),
    ]
}

proptest! {
    #[test]
    fn worker_requests_read_as_the_lower_minor_knows_them(req in request(), id in any::<u64>()) {
        for a in 0..=WORKER {
            for b in 0..=WORKER {
                let m = a.min(b);
                let got = send(&ToWorker::Request { id, body: req.clone() }, Wire::worker(m));
                match worker_sees(&req, m) {
                    Ok(want) => prop_assert_eq!(got, Ok(Some(ToWorker::Request { id, body: want }))),
                    Err(()) => prop_assert!(got.is_err(), "sent at 1.{}: {:?}", m, got),
                }
            }
        }
    }

    #[test]
    fn worker_replies_read_as_the_lower_minor_knows_them(info in load_info(), id in any::<u64>()) {
        for a in 0..=WORKER {
            for b in 0..=WORKER {
                let m = a.min(b);
                let got = send(&FromWorker::Reply { id, body: Reply::Loaded(info.clone()) }, Wire::worker(m));
                prop_assert_eq!(got, Ok(Some(FromWorker::Reply { id, body: Reply::Loaded(info_at(&info, m)) })));
            }
        }
    }

    #[test]
    fn control_messages_read_as_the_lower_minor_knows_them(
        gen in generate_request(),
        info in load_info(),
        f32 in any::<bool>(),
        kv_bits in proptest::option::of(Just(8u8)),
        used in any::<u64>(),
    ) {
        let compute = if f32 { ComputePolicy::F32 } else { ComputePolicy::Auto };
        let generate = GenerateModel {
            model: "a".into(),
            request: gen.clone(),
            context: Some(64),
            keep_alive: None,
            force: false,
            device: Device::Default,
            compute,
            kv_bits,
        };
        let load = LoadModel {
            model: "a".into(),
            context: None,
            keep_alive: None,
            force: true,
            fault: None,
            device: Device::Cpu,
            compute,
            kv_bits, prefix_cache: None,
        };
        let done = GenerateDone {
            done: DoneInfo {
                prompt_tokens: 1,
                generated_tokens: 2,
                prompt_tps: f64::INFINITY,
                generation_tps: 3.5,
                peak_bytes: used,
                finish: FinishReason::Eos, cached_tokens: 0, prefix_cache_bytes: 0,
            },
            estimate_bytes: used / 3,
            note: None,
            context_used: used,
            estimate_used_bytes: used / 2,
        };
        for a in 0..=CONTROL {
            for b in 0..=CONTROL {
                let m = a.min(b);
                let wire = Wire::control(m);
                let refused = (m < 1 && f32) || (m < 2 && kv_bits.is_some());
                let got = send(&ToDaemon::Request { id: 1, body: ControlRequest::Load(load.clone()) }, wire);
                if refused {
                    prop_assert!(got.is_err());
                } else {
                    prop_assert_eq!(got, Ok(Some(ToDaemon::Request { id: 1, body: ControlRequest::Load(load.clone()) })));
                }
                let got = send(&ToDaemon::Request { id: 2, body: ControlRequest::Generate(generate.clone()) }, wire);
                if refused || (m < 3 && !gen.images.is_empty()) {
                    prop_assert!(got.is_err());
                } else {
                    prop_assert_eq!(got, Ok(Some(ToDaemon::Request { id: 2, body: ControlRequest::Generate(generate.clone()) })));
                }
                let got = send(&FromDaemon::Event { id: 3, event: ControlEvent::Loaded(info.clone()) }, wire);
                prop_assert_eq!(got, Ok(Some(FromDaemon::Event { id: 3, event: ControlEvent::Loaded(info_at(&info, wire.worker)) })));
                let Ok(Some(FromDaemon::Reply { body: ControlReply::Done(d), .. })) =
                    send(&FromDaemon::Reply { id: 4, body: ControlReply::Done(done.clone()) }, wire)
                else {
                    panic!("no done at 1.{m}");
                };
                // Postcard keeps an infinite rate; JSON has no infinity and sends null: NaN.
                prop_assert!(d.done.prompt_tps.is_infinite() || (m >= 5 && d.done.prompt_tps.is_nan()));
                let want_used = if m < 2 { (0, 0) } else { (used, used / 2) };
                prop_assert_eq!((d.context_used, d.estimate_used_bytes), want_used);
                prop_assert_eq!((d.estimate_bytes, d.done.generation_tps), (used / 3, 3.5));
            }
        }
    }
}

/// JSON frames (control 1.5) accept what a newer minor adds: unknown fields are skipped,
/// absent fields of this minor's defaults read as defaults.
#[test]
fn json_frames_ignore_unknown_fields_and_default_missing_ones() {
    let wire = Wire::control(5);
    let body = br#"{"Request":{"id":7,"from_the_future":[1,2],"body":{"Load":{"model":"a","context":null,"keep_alive":null,"force":false,"fault":null,"device":"default","extra":{"x":1}}}}}"#;
    let msg: ToDaemon = frame::decode_at(body, wire).unwrap();
    let ToDaemon::Request {
        id: 7,
        body: ControlRequest::Load(l),
    } = msg
    else {
        panic!("{msg:?}");
    };
    assert_eq!(
        (l.model.as_str(), l.compute, l.kv_bits),
        ("a", ComputePolicy::Auto, None)
    );
    // Images travel as base64 in JSON.
    let img = ImageInput {
        message: 0,
        width: 1,
        height: 1,
        rgb: vec![255, 0, 7],
    };
    let json = protocol::wire::with(wire, || serde_json::to_string(&img)).unwrap();
    assert!(json.contains(r#""rgb":"/wAH""#), "{json}");
}
