//! The messages of the worker protocol (supervisor ⇄ worker).
//!
//! Postcard encodes enum variants by position: variant 0 of each direction is the
//! handshake, forever, and new variants or fields come only with a new version, at the
//! end, gated by it ([`crate::wire`]). Every request carries an id; replies and stream
//! events name the request.

use serde::{Deserialize, Serialize};

use crate::{
    failure::Phase,
    fault::Fault,
    handshake::{Handshake, Hello},
    wire::{Evolve, Wire},
};

/// Identifies a request on one connection.
pub type RequestId = u64;

/// Supervisor → worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Since 1.0. Always variant 0.
    Hello(Hello),
    /// Since 1.0.
    Request { id: RequestId, body: Request },
    /// Since 1.0: stop the request `id` at the next step; it ends with `Cancelled`.
    Cancel { id: RequestId },
    /// Since 1.0: free everything and exit 0.
    Shutdown,
}

/// Worker → supervisor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// Since 1.0. Always variant 0.
    Hello(Hello),
    /// Since 1.0: the final answer to a request.
    Reply { id: RequestId, body: Reply },
    /// Since 1.0: something that happened while serving `id` (or between requests).
    Event { id: Option<RequestId>, event: Event },
}

impl Handshake for ToWorker {
    fn hello(hello: Hello) -> Self {
        ToWorker::Hello(hello)
    }
    fn as_hello(&self) -> Option<&Hello> {
        match self {
            ToWorker::Hello(h) => Some(h),
            _ => None,
        }
    }
}

impl Handshake for FromWorker {
    fn hello(hello: Hello) -> Self {
        FromWorker::Hello(hello)
    }
    fn as_hello(&self) -> Option<&Hello> {
        match self {
            FromWorker::Hello(h) => Some(h),
            _ => None,
        }
    }
}

impl Evolve for ToWorker {
    /// A request whose options the worker's minor cannot carry is refused rather than
    /// sent without them.
    fn fits(&self, wire: Wire) -> Result<bool, String> {
        if let ToWorker::Request { body, .. } = self {
            let lacks = |since: u16, what: &str| {
                if wire.worker < since {
                    Err(format!(
                        "{what} needs worker protocol 1.{since}; the worker speaks {}",
                        wire.version()
                    ))
                } else {
                    Ok(())
                }
            };
            match body {
                Request::Load(l) => {
                    if l.device != Device::Default {
                        lacks(1, "a device")?;
                    }
                    if l.compute != crate::compute::ComputeDtype::Native {
                        lacks(2, "a compute dtype")?;
                    }
                    if l.kv_bits.is_some() {
                        lacks(3, "a KV-cache quantization")?;
                    }
                }
                Request::Generate(g) if !g.images.is_empty() => lacks(4, "images")?,
                _ => {}
            }
        }
        Ok(true)
    }
}

impl Evolve for FromWorker {
    /// Events of a newer minor are dropped.
    fn fits(&self, wire: Wire) -> Result<bool, String> {
        Ok(match self {
            FromWorker::Event { event, .. } => event.known_at(wire),
            FromWorker::Hello(_) | FromWorker::Reply { .. } => true,
        })
    }
}

impl Event {
    /// Whether a peer at `wire` knows this event.
    pub fn known_at(&self, wire: Wire) -> bool {
        match self {
            Event::Vision(_) => wire.worker >= 5,
            Event::Telemetry(_)
            | Event::Token { .. }
            | Event::Phase(_)
            | Event::Progress { .. } => true,
        }
    }
}

/// What the supervisor asks of a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// MLX version, device and memory facts.
    SystemInfo,
    /// A real MLX computation whose result the caller can check: the sum of `A·B` for
    /// the `size`×`size` matrices `A[i][j] = (i + 2j) mod 7`, `B[i][j] = (3i + j) mod 5`.
    Matmul { size: u32 },
    /// Load a model folder under memory limits.
    Load(LoadRequest),
    /// Generate from the loaded model, streaming `Token` events.
    Generate(GenerateRequest),
    /// Drop the loaded model and free MLX's caches.
    Unload,
    /// Write a random-weight model folder (MLX quantizes it, so the format is MLX's).
    MakeModel(ModelSpec),
}

/// The worker's final answer to a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    SystemInfo(SystemInfo),
    Matmul { size: u32, sum: f64, ms: f64 },
    Loaded(LoadInfo),
    Done(DoneInfo),
    Unloaded,
    ModelMade { dir: String, weight_bytes: u64 },
    Error(WorkerError),
}

/// Things that happen while a request is served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A memory sample; doubles as the heartbeat.
    Telemetry(Telemetry),
    /// Newly decoded text (possibly empty while a UTF-8 sequence is incomplete).
    Token { id: u32, text: String },
    /// The worker entered a phase.
    Phase(Phase),
    /// Loading progress, in bytes of weights.
    Progress { done: u64, total: u64 },
    /// Since 1.5: the vision tower ran on the request's images.
    Vision(Box<VisionPeak>),
}

/// Since 1.5: what the vision tower of a request with images used, measured around the
/// tower alone (it runs before the first prefill chunk and its activations are freed
/// before it): the calibration of the vision term is fitted from these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionPeak {
    /// Patches the tower saw of each image, in prompt order.
    pub patches: Vec<u64>,
    /// MLX's peak while the tower ran, above what MLX held when it started (the pixel
    /// values, the tower's activations and its output).
    pub activation_bytes: u64,
    /// The vision term the soft guard predicted for these images.
    pub predicted_bytes: u64,
}

/// Facts about the worker's MLX and machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SystemInfo {
    pub mlx_version: String,
    /// `cpu` or `gpu`.
    pub device: String,
    /// `cpu`, `metal` or `cuda`: the wheel the worker was linked against.
    pub backend: String,
    pub total_memory: u64,
    /// MLX's memory limit in force.
    pub memory_limit: u64,
    /// Metal's recommended working set (macOS only).
    pub recommended_working_set: Option<u64>,
    /// Largest single buffer the device allows, when the backend says.
    pub max_buffer_length: Option<u64>,
    pub pid: u32,
}

/// Memory limits applied before the first allocation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// `mlx::set_memory_limit` (a guideline for MLX, not a cap).
    pub memory_limit: Option<u64>,
    /// `mlx::set_cache_limit`.
    pub cache_limit: Option<u64>,
    /// `mlx::set_wired_limit` (Metal only).
    pub wired_limit: Option<u64>,
    /// The soft guard's budget: a step whose predicted memory would pass it is refused.
    pub soft_budget: Option<u64>,
}

/// The MLX device a model runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// MLX's default: the GPU where the backend has one, else the CPU.
    #[default]
    Default,
    /// The GPU (Metal, CUDA); on a CPU-only backend this is the CPU.
    Gpu,
    /// The CPU, whatever the backend (e.g. when the GPU ran out of memory).
    Cpu,
}

impl Device {
    /// Parses `gpu`, `cpu` or `default`.
    pub fn parse(s: &str) -> Result<Device, String> {
        match s {
            "gpu" => Ok(Device::Gpu),
            "cpu" => Ok(Device::Cpu),
            "default" => Ok(Device::Default),
            _ => Err(format!("`{s}` is not a device: gpu, cpu or default")),
        }
    }
}

/// Load a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadRequest {
    pub model_dir: String,
    pub limits: Limits,
    /// Prompt tokens per prefill step.
    pub prefill_chunk: u32,
    /// Telemetry sampling interval.
    pub telemetry_interval_ms: u32,
    /// Tests only: fail on purpose, the way real failures happen.
    pub fault: Option<Fault>,
    /// Since 1.1: the device to run on.
    #[serde(
        default,
        skip_serializing_if = "crate::wire::w1_1::skip",
        deserialize_with = "crate::wire::w1_1::de"
    )]
    pub device: Device,
    /// Since 1.2: the dtype to compute in (the plan's decision).
    #[serde(
        default,
        skip_serializing_if = "crate::wire::w1_2::skip",
        deserialize_with = "crate::wire::w1_2::de"
    )]
    pub compute: crate::compute::ComputeDtype,
    /// Since 1.3: quantize the full-attention KV caches to this many bits (4 or 8, group
    /// size 64, as mlx-lm's `--kv-bits`).
    #[serde(
        default,
        skip_serializing_if = "crate::wire::w1_3::skip",
        deserialize_with = "crate::wire::w1_3::de"
    )]
    pub kv_bits: Option<u8>,
    /// Since 1.3: the activation coefficients the preflight used, so the soft guard
    /// predicts with the same model (`None`: the built-in ones).
    #[serde(
        default,
        skip_serializing_if = "crate::wire::w1_3::skip",
        deserialize_with = "crate::wire::w1_3::de"
    )]
    pub activation: Option<Box<ActivationModel>>,
    /// Since 1.6: bytes the worker's prefix cache may hold (the KV of finished
    /// generations, reused by prompts sharing their prefix); 0: no prefix cache.
    #[serde(
        default,
        skip_serializing_if = "crate::wire::w1_6::skip",
        deserialize_with = "crate::wire::w1_6::de"
    )]
    pub prefix_cache: u64,
}

/// Since 1.3: the activation model's coefficients (the `estimate` crate's
/// `ActivationModel`), per activation dtype class.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationModel {
    /// bf16 / f16 activations.
    pub half: ActivationCoefficients,
    /// f32 activations.
    pub full: ActivationCoefficients,
    /// Since 1.5: the vision tower's coefficients, bf16/f16 then f32 (`None`: the
    /// built-in ones).
    #[serde(
        default,
        skip_serializing_if = "crate::wire::w1_5::skip",
        deserialize_with = "crate::wire::w1_5::de"
    )]
    pub vision: Option<[VisionCoefficients; 2]>,
}

/// Since 1.5: one dtype class's vision-tower coefficients (the `estimate` crate's
/// `VisionCoefficients`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionCoefficients {
    /// Bytes per attention score of one head.
    pub score_bytes: f64,
    /// Bytes per patch and per unit of the tower's width.
    pub width_bytes: f64,
    /// Bytes per patch and per unit of the tower's MLP width.
    pub mlp_bytes: f64,
    /// Bytes per patch and per unit of width more when every block attends fully.
    pub full_width_bytes: f64,
    /// Bytes per pixel value.
    pub pixel_bytes: f64,
}

/// Since 1.3: one dtype class's coefficients.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationCoefficients {
    /// Bytes per attention score of one layer.
    pub score_bytes: f64,
    /// Bytes per token and per (hidden + intermediate) element.
    pub mlp_bytes: f64,
    /// Bytes per element of an explicit (sliding-window) attention mask.
    pub mask_bytes: f64,
    /// Fixed runtime overhead.
    pub overhead_bytes: f64,
}

/// What a load produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadInfo {
    pub architecture: String,
    pub load_ms: u64,
    pub weight_bytes: u64,
    pub active_bytes: u64,
    pub peak_bytes: u64,
    pub vocab_size: u32,
    /// Since 1.1: the device it runs on (`cpu`, `gpu`).
    #[serde(
        default,
        skip_serializing_if = "crate::wire::w1_1::skip",
        deserialize_with = "crate::wire::w1_1::de"
    )]
    pub device: String,
    /// Since 1.2: the dtype it computes in (`float32`, `bfloat16`, ...; quantized weights
    /// report their scales' dtype, with ` (quantized)`).
    #[serde(
        default,
        skip_serializing_if = "crate::wire::w1_2::skip",
        deserialize_with = "crate::wire::w1_2::de"
    )]
    pub compute_dtype: String,
    /// Since 1.3: the MLX version of the worker (`0.32.2`).
    #[serde(
        default,
        skip_serializing_if = "crate::wire::w1_3::skip",
        deserialize_with = "crate::wire::w1_3::de"
    )]
    pub mlx_version: String,
    /// Since 1.3: `cpu`, `metal` or `cuda`: the backend the model runs on (`cpu` when
    /// the device is the CPU, whatever the build).
    #[serde(
        default,
        skip_serializing_if = "crate::wire::w1_3::skip",
        deserialize_with = "crate::wire::w1_3::de"
    )]
    pub backend: String,
}

/// A prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Prompt {
    /// Plain text, tokenized as is.
    Text(String),
    /// Chat messages, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Sampling parameters; temperature 0 is greedy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
}

impl Sampling {
    /// Checks the parameters: temperature finite and >= 0, top-p in (0, 1]. The
    /// supervisor's arguments and the worker's requests are held to the same rule.
    pub fn check(&self) -> Result<(), String> {
        check_temperature(self.temperature)?;
        check_top_p(self.top_p)
    }
}

/// A sampling temperature must be finite and >= 0 (0 is greedy).
pub fn check_temperature(t: f32) -> Result<(), String> {
    if t.is_finite() && t >= 0.0 {
        Ok(())
    } else {
        Err(format!("temperature {t} is not a finite number >= 0"))
    }
}

/// A nucleus threshold must be in (0, 1].
pub fn check_top_p(p: f32) -> Result<(), String> {
    if p > 0.0 && p <= 1.0 {
        Ok(())
    } else {
        Err(format!("top-p {p} is not in (0, 1]"))
    }
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
        }
    }
}

/// Generate text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub max_tokens: u32,
    pub sampling: Sampling,
    /// Generation ends when the text ends with one of these (not included).
    pub stop: Vec<String>,
    /// Tests only: fail on purpose at prefill or at a decode step.
    pub fault: Option<Fault>,
    /// Since 1.4: the images of a vision-language prompt, in prompt order.
    #[serde(
        default,
        skip_serializing_if = "crate::wire::w1_4::skip",
        deserialize_with = "crate::wire::w1_4::de"
    )]
    pub images: Vec<ImageInput>,
}

/// Since 1.4: one image of a vision-language prompt, decoded and resized by the
/// supervisor to the size the model's processor gives it (a multiple of the patch ×
/// merge factor within its pixel limits); the worker normalizes and patchifies it.
/// 8-bit RGB is 8× smaller than the float pixel values (3 bytes a pixel against 2
/// temporal frames × 3 channels × 4 bytes), so an image of up to ~5.5 MP fits a frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageInput {
    /// The chat message it belongs to (index into `Prompt::Chat`): a message's images
    /// come before its text, as mlx-vlm places them. For a text or token prompt, the
    /// prompt holds the image placeholders itself and this is ignored.
    pub message: u32,
    pub width: u32,
    pub height: u32,
    /// Rows top to bottom, `rgb[(y * width + x) * 3 + c]`; base64 in JSON.
    #[serde(with = "crate::wire::bytes")]
    pub rgb: Vec<u8>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// `max_tokens` reached.
    Length,
    /// An end-of-sequence token.
    Eos,
    /// A stop sequence.
    Stop,
    /// Cancelled by the client.
    Cancelled,
}

/// A finished generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DoneInfo {
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
    /// Tokens per second; JSON writes a non-finite rate as `null`, read back as NaN.
    #[serde(deserialize_with = "crate::wire::float::de")]
    pub prompt_tps: f64,
    #[serde(deserialize_with = "crate::wire::float::de")]
    pub generation_tps: f64,
    pub peak_bytes: u64,
    pub finish: FinishReason,
    /// Since 1.6: prompt tokens whose KV came from the prefix cache (not prefilled).
    #[serde(
        default,
        skip_serializing_if = "crate::wire::w1_6::skip",
        deserialize_with = "crate::wire::w1_6::de"
    )]
    pub cached_tokens: u32,
    /// Since 1.6: bytes the worker's prefix cache holds after this generation.
    #[serde(
        default,
        skip_serializing_if = "crate::wire::w1_6::skip",
        deserialize_with = "crate::wire::w1_6::de"
    )]
    pub prefix_cache_bytes: u64,
}

/// A memory sample of the worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Milliseconds since the worker started.
    pub t_ms: u64,
    pub phase: Phase,
    /// MLX's active, peak and cache memory.
    pub active_bytes: u64,
    pub peak_bytes: u64,
    pub cache_bytes: u64,
    /// The process's footprint: RSS on Linux, phys_footprint on macOS.
    pub footprint_bytes: u64,
    /// Units of work the worker's main thread has finished (steps, tokens, weights read,
    /// phase changes). The supervisor's stall detector watches it: the sampler thread
    /// can keep reporting while the main thread is stuck.
    pub progress: u64,
}

/// A recoverable error: the worker is alive and can serve the next request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct WorkerError {
    pub kind: WorkerErrorKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerErrorKind {
    /// The model folder could not be loaded (unsupported architecture, bad weights).
    LoadFailed,
    /// The soft guard refused a step; caches were freed.
    MemoryBudgetExceeded,
    /// An MLX operation reported an allocation failure.
    AllocationFailed,
    /// The request was cancelled.
    Cancelled,
    /// Nothing is loaded, or the request does not fit the worker's state.
    BadRequest,
    /// Anything else (an MLX error, an I/O error).
    Internal,
}

/// A random-weight model to write (`mlxsup make-model`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub dir: String,
    /// `llama`, `mistral`, `qwen2` or `qwen3`.
    pub arch: String,
    pub hidden: u32,
    pub layers: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub intermediate: u32,
    pub vocab: u32,
    /// `bf16`, `f16` or `f32`.
    pub dtype: String,
    pub quant_bits: Option<u32>,
    pub group_size: u32,
    pub seed: u64,
    /// Family options (experts, RoPE scaling, sliding window); all off by default.
    #[serde(
        default,
        skip_serializing_if = "crate::wire::w1_3::skip",
        deserialize_with = "crate::wire::w1_3::de"
    )]
    pub options: ModelOptions,
}

/// The family options of a [`ModelSpec`] (issue 13).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelOptions {
    /// Routed experts per MoE layer (`mixtral`, `qwen3_moe`; 0: the family's default).
    pub experts: u32,
    /// Experts each token is routed to (0: the family's default).
    pub experts_per_token: u32,
    /// Write the experts stacked as mlx-community does (`switch_mlp`), not per expert.
    pub stacked_experts: bool,
    /// `TYPE[:FACTOR]`: `linear`, `dynamic`, `yarn`, `longrope`, `llama3` or `none`.
    pub rope_scaling: Option<String>,
    /// The sliding window of the sliding-window layers.
    pub sliding_window: Option<u32>,
    /// `max_position_embeddings` written into config.json.
    pub max_position: Option<u32>,
    /// Since 1.5: a vision-language folder in the Hugging Face layout (`visual.*`,
    /// `model.*`, `lm_head.*`, the patch embedding in PyTorch's channels-first layout), as
    /// the original checkpoints ship, instead of mlx-community's.
    #[serde(
        default,
        skip_serializing_if = "crate::wire::w1_5::skip",
        deserialize_with = "crate::wire::w1_5::de"
    )]
    pub hf_layout: bool,
}
