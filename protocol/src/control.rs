//! The control protocol: clients (the `mlxsup` CLI, apps, the daemon's HTTP front) ⇄ the
//! daemon (`mlxsup serve`), over the daemon's socket, in the same frames as the worker
//! protocol.
//!
//! Its own versions ([`version`]); variant 0 of each direction is the handshake, forever;
//! new variants and fields come at the end, with a new minor version, and each side sends
//! the other only what the negotiated (lower) minor knows ([`crate::wire`]). From 1.5 the
//! frames after the hellos are JSON (docs/PROTOCOL.md). Requests carry ids
//! chosen by the client; events and the one reply name the request. A client that
//! disconnects cancels its own requests, nothing else.

use serde::{Deserialize, Serialize};

use crate::{
    bytes::ByteCount,
    failure::Failure,
    fault::Fault,
    handshake::{Handshake, Hello},
    message::{Device, DoneInfo, Event, GenerateRequest, LoadInfo, RequestId},
    wire::{Evolve, Wire},
};

/// Versions of the control protocol.
pub mod version {
    use crate::version::Version;

    /// 1.0: status, ps, ls, load, unload, generate, cancel, subscribe, shutdown.
    pub const V1_0: Version = Version { major: 1, minor: 0 };
    /// 1.1: the compute-dtype policy of a load (`LoadModel::compute`,
    /// `GenerateModel::compute`).
    pub const V1_1: Version = Version { major: 1, minor: 1 };
    /// 1.2: the KV-cache quantization of a load (`LoadModel::kv_bits`,
    /// `GenerateModel::kv_bits`), and the estimate at the context a generation used
    /// (`GenerateDone::context_used`, `GenerateDone::estimate_used_bytes`).
    pub const V1_2: Version = Version { major: 1, minor: 2 };
    /// 1.3: the images of a vision-language prompt (`GenerateRequest::images`, worker
    /// protocol 1.4), inside `GenerateModel::request`.
    pub const V1_3: Version = Version { major: 1, minor: 3 };
    /// 1.4: the vision tower's measured peak (`Event::Vision`, worker protocol 1.5), in
    /// `ControlEvent::Worker`.
    pub const V1_4: Version = Version { major: 1, minor: 4 };
    /// 1.5: negotiation (both sides speak the lower minor, [`crate::wire`]); frame bodies
    /// after the hellos are JSON; the estimate is typed (`ControlEvent::Estimate`); the
    /// worker types inside are worker protocol 1.6's.
    pub const V1_5: Version = Version { major: 1, minor: 5 };
    /// What this build speaks.
    pub const CURRENT: Version = V1_5;
}

/// Client → daemon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToDaemon {
    /// Since 1.0. Always variant 0.
    Hello(Hello),
    /// Since 1.0.
    Request { id: RequestId, body: ControlRequest },
    /// Since 1.0: cancel the request `id` (a generation stops at the next step).
    Cancel { id: RequestId },
}

/// Daemon → client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromDaemon {
    /// Since 1.0. Always variant 0.
    Hello(Hello),
    /// Since 1.0: the one final answer to a request.
    Reply { id: RequestId, body: ControlReply },
    /// Since 1.0: something that happened while serving `id`.
    Event { id: RequestId, event: ControlEvent },
    /// Since 1.0: the daemon will not serve this connection (another user, say) and
    /// closes it.
    Refused { message: String },
}

impl Handshake for ToDaemon {
    fn hello(hello: Hello) -> Self {
        ToDaemon::Hello(hello)
    }
    fn as_hello(&self) -> Option<&Hello> {
        match self {
            ToDaemon::Hello(h) => Some(h),
            _ => None,
        }
    }
}

impl Handshake for FromDaemon {
    fn hello(hello: Hello) -> Self {
        FromDaemon::Hello(hello)
    }
    fn as_hello(&self) -> Option<&Hello> {
        match self {
            FromDaemon::Hello(h) => Some(h),
            _ => None,
        }
    }
}

impl Evolve for ToDaemon {
    /// A request whose options the daemon's minor cannot carry is refused rather than
    /// sent without them.
    fn fits(&self, wire: Wire) -> Result<bool, String> {
        let lacks = |since: u16, what: &str| {
            if wire.control < since {
                Err(format!(
                    "{what} needs control protocol 1.{since}; the daemon speaks {}",
                    wire.version()
                ))
            } else {
                Ok(())
            }
        };
        if let ToDaemon::Request { body, .. } = self {
            let (compute, kv_bits, images) = match body {
                ControlRequest::Load(l) => (l.compute, l.kv_bits, false),
                ControlRequest::Generate(g) => (g.compute, g.kv_bits, !g.request.images.is_empty()),
                _ => (crate::compute::ComputePolicy::Auto, None, false),
            };
            if compute != crate::compute::ComputePolicy::Auto {
                lacks(1, "a compute policy")?;
            }
            if kv_bits.is_some() {
                lacks(2, "a KV-cache quantization")?;
            }
            if images {
                lacks(3, "images")?;
            }
        }
        Ok(true)
    }
}

impl Evolve for FromDaemon {
    /// Worker events of a newer minor are dropped (failure kinds are downgraded where
    /// they are written, [`crate::failure::FailureKind::downgrade`]).
    fn fits(&self, wire: Wire) -> Result<bool, String> {
        Ok(match self {
            FromDaemon::Event {
                event: ControlEvent::Worker(e),
                ..
            } => e.known_at(wire),
            _ => true,
        })
    }
}

/// What a client asks of the daemon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Since 1.0: the daemon itself.
    Status,
    /// Since 1.0: every model the daemon holds or tried.
    Ps,
    /// Since 1.0: every model the daemon can see, with its size and verdict.
    Ls,
    /// Since 1.0: load a model (admitted against the budget; may evict idle ones).
    Load(LoadModel),
    /// Since 1.0: unload a model (also clears a quarantine).
    Unload { model: String },
    /// Since 1.0: generate, streaming `Worker` token and telemetry events.
    Generate(GenerateModel),
    /// Since 1.0: a stream of `Model` events, one per state change, until disconnect.
    Subscribe,
    /// Since 1.0: stop the daemon (requests in flight fail `shutting_down`).
    Shutdown,
}

/// How long a model stays loaded after its last request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeepAlive {
    /// This many milliseconds; 0 unloads right after the reply.
    Millis(u64),
    /// Never unloaded (pinned): never evicted either.
    Forever,
}

/// Load a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadModel {
    /// A folder, or a name the daemon resolves (`ls`).
    pub model: String,
    /// Context tokens to plan for [default: the model's, capped].
    pub context: Option<u64>,
    pub keep_alive: Option<KeepAlive>,
    /// Load even when it does not fit; clears a quarantine.
    pub force: bool,
    /// Tests only: a fault for the next worker of this model.
    pub fault: Option<Fault>,
    /// The MLX device to load on.
    pub device: Device,
    /// The compute-dtype policy for the load.
    #[serde(
        default,
        skip_serializing_if = "crate::wire::c1_1::skip",
        deserialize_with = "crate::wire::c1_1::de"
    )]
    pub compute: crate::compute::ComputePolicy,
    /// Since 1.2: quantize the KV cache to 4 or 8 bits.
    #[serde(
        default,
        skip_serializing_if = "crate::wire::c1_2::skip",
        deserialize_with = "crate::wire::c1_2::de"
    )]
    pub kv_bits: Option<u8>,
    /// Since 1.5: `--prefix-cache`: the bytes the model's prefix cache may hold (`0`:
    /// off); `None`: the daemon's default.
    #[serde(
        default,
        skip_serializing_if = "crate::wire::c1_5::skip",
        deserialize_with = "crate::wire::c1_5::de"
    )]
    pub prefix_cache: Option<u64>,
}

/// Generate from a model, loading it first when needed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateModel {
    pub model: String,
    /// Prompt, sampling, stop sequences, max tokens; `fault` is for tests.
    pub request: GenerateRequest,
    /// Used when the model has to be loaded for this request.
    pub context: Option<u64>,
    pub keep_alive: Option<KeepAlive>,
    pub force: bool,
    /// The MLX device, when the model has to be loaded for this request.
    pub device: Device,
    /// The compute-dtype policy, when the model has to be loaded for this request.
    #[serde(
        default,
        skip_serializing_if = "crate::wire::c1_1::skip",
        deserialize_with = "crate::wire::c1_1::de"
    )]
    pub compute: crate::compute::ComputePolicy,
    /// Since 1.2: the KV-cache quantization, when the model has to be loaded for it.
    #[serde(
        default,
        skip_serializing_if = "crate::wire::c1_2::skip",
        deserialize_with = "crate::wire::c1_2::de"
    )]
    pub kv_bits: Option<u8>,
}

/// The final answer to a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ControlReply {
    Status(Box<DaemonStatus>),
    Ps(Vec<ModelStatus>),
    Ls(Vec<ModelEntry>),
    Loaded(Box<ModelStatus>),
    Unloaded(Box<ModelStatus>),
    Done(GenerateDone),
    /// The request failed: refused by admission, busy, quarantined, a worker's death.
    Failed(Box<Failure>),
    /// A bad request (an unknown model, say); nothing was started.
    BadRequest {
        message: String,
    },
    /// The request was cancelled.
    Cancelled,
    /// The answer to `Shutdown`.
    ShuttingDown,
}

/// What happens while a request is served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ControlEvent {
    /// The estimate the model was admitted with: typed from 1.5, the JSON text of
    /// `inspect --json` before (the same bytes as the old `Estimate { json: String }`).
    Estimate(Box<crate::estimate::Estimate>),
    /// The model was loaded for this request.
    Loaded(LoadInfo),
    /// A worker event: tokens, telemetry, phases, load progress.
    Worker(Event),
    /// A line for a person (e.g. "retried with context 1024 after metal_out_of_memory").
    Note(String),
    /// A model changed state (`Subscribe`).
    Model(Box<ModelStatus>),
}

/// A finished generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateDone {
    pub done: DoneInfo,
    /// The estimate the model was admitted with.
    pub estimate_bytes: u64,
    /// What the daemon changed to make it work, if anything (an automatic retry).
    pub note: Option<String>,
    /// Since 1.2: prompt + generated tokens.
    #[serde(
        default,
        skip_serializing_if = "crate::wire::c1_2::skip",
        deserialize_with = "crate::wire::c1_2::de"
    )]
    pub context_used: u64,
    /// Since 1.2: the estimate at `context_used` (0 when unknown).
    #[serde(
        default,
        skip_serializing_if = "crate::wire::c1_2::skip",
        deserialize_with = "crate::wire::c1_2::de"
    )]
    pub estimate_used_bytes: u64,
}

/// The daemon itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// The daemon's build, e.g. `mlxsup 0.1.0`.
    pub version: String,
    pub pid: u32,
    pub uptime_ms: u64,
    pub budget_bytes: ByteCount,
    /// What loaded workers hold: each one's footprint, or its estimate if larger.
    pub held_bytes: ByteCount,
    /// Models the daemon holds or tried.
    pub models: u32,
    pub socket: String,
}

/// Where a model is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    Loading,
    Ready,
    Busy,
    Failed,
    Quarantined,
    /// Known but not loaded (unloaded, evicted, or expired).
    Unloaded,
}

/// One model of the daemon, as `ps` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelStatus {
    /// The folder.
    pub model: String,
    pub name: String,
    pub state: ModelState,
    pub pid: Option<u32>,
    pub footprint_bytes: u64,
    pub peak_bytes: u64,
    /// The estimate it was admitted with.
    pub estimate_bytes: u64,
    pub context: u64,
    /// Unix time in milliseconds when it unloads; `None` while pinned, busy or unloaded.
    pub keep_alive_until_ms: Option<u64>,
    pub pinned: bool,
    /// Requests served.
    pub requests: u64,
    /// Requests waiting.
    pub queued: u32,
    pub last_failure: Option<Failure>,
    /// What the daemon changed on its own (a retry with a smaller context), if anything.
    pub note: Option<String>,
    /// The device its worker runs on (`cpu`, `gpu`), while loaded.
    pub device: Option<String>,
    /// Since 1.5: bytes its prefix cache holds (after its last generation), while loaded.
    #[serde(
        default,
        skip_serializing_if = "crate::wire::c1_5::skip",
        deserialize_with = "crate::wire::c1_5::de"
    )]
    pub prefix_cache_bytes: u64,
    /// Since 1.5: the prefix cache's bound in bytes (0: off), while loaded.
    #[serde(
        default,
        skip_serializing_if = "crate::wire::c1_5::skip",
        deserialize_with = "crate::wire::c1_5::de"
    )]
    pub prefix_cache_limit_bytes: u64,
    /// Since 1.5: the share of its generations that reused a cached prefix (0 to 1);
    /// `None` before the first one, or with the cache off.
    #[serde(
        default,
        skip_serializing_if = "crate::wire::c1_5::skip",
        deserialize_with = "crate::wire::c1_5::de"
    )]
    pub prefix_cache_hit_rate: Option<f64>,
}

/// A model the daemon can see.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub name: String,
    /// The folder.
    pub model: String,
    /// Weight bytes.
    pub size_bytes: ByteCount,
    /// The estimate at the default context, against the daemon's budget.
    pub estimate_bytes: ByteCount,
    pub context: u64,
    /// `fits`, `tight` or `does_not_fit`; the reason when it could not be read.
    pub verdict: String,
    pub loaded: bool,
}
