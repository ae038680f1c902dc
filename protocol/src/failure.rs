//! The failure taxonomy: how a worker's end is described, on the wire and in JSON.
//!
//! Kinds and phases are stable: new ones are added at the end of their enum (postcard
//! encodes variants by position), and their JSON names never change. A kind added in a
//! control minor says so in [`FailureKind::since`] and names the older kind it is sent as
//! to a peer below that minor in [`FailureKind::downgrade`].

use serde::{Deserialize, Serialize};

use crate::message::Telemetry;

/// What went wrong, by its evidence (see DESIGN.md, "Failure taxonomy").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The preflight refused to load: the estimate does not fit the budget.
    InsufficientMemory,
    /// SIGABRT with MLX's Metal out-of-memory text on stderr.
    MetalOutOfMemory,
    /// An MLX allocation error, or SIGSEGV with the footprint near the limit (CPU backend).
    AllocationFailed,
    /// The worker's soft guard refused a step; the worker is alive.
    MemoryBudgetExceeded,
    /// The supervisor killed the worker for its footprint.
    MemoryCeilingExceeded,
    /// SIGKILL that the supervisor did not send (jetsam, the OOM killer).
    KilledByOs,
    /// Another fatal signal without out-of-memory evidence.
    Crashed,
    /// The heartbeat stopped; the supervisor killed the worker.
    Unresponsive,
    /// A non-zero exit.
    Exited,
    /// The worker could not load the model (structured error from the worker).
    LoadFailed,
    /// A bad frame, a version mismatch, an oversized frame.
    ProtocolError,
    /// The daemon: the model's request queue is full.
    Busy,
    /// The daemon: the model failed too often in a row and is refused until forced.
    Quarantined,
    /// The daemon is shutting down.
    ShuttingDown,
    /// Since control 1.5 / worker 1.6: the prompt and the tokens asked for pass the
    /// context the model was planned for (or its maximum): the request is the client's to
    /// fix (HTTP 400, OpenAI's `context_length_exceeded`). Older peers:
    /// `insufficient_memory` with `remedy.min_context`.
    ContextLengthExceeded,
    /// Since control 1.5 / worker 1.6: the model was unloaded while the request waited or
    /// ran; sending it again loads the model again (HTTP 503 with `Retry-After`). Older
    /// peers: `busy` (try again later).
    Unloaded,
    /// Since control 1.5 / worker 1.6: the daemon: the client did not read its stream as
    /// fast as it was produced (its buffer filled): the request was cancelled so that
    /// nothing waits on that client and nothing grows for it. Older peers: `busy`.
    SlowClient,
}

impl FailureKind {
    /// Every kind, in wire order.
    pub const ALL: [FailureKind; 17] = [
        FailureKind::InsufficientMemory,
        FailureKind::MetalOutOfMemory,
        FailureKind::AllocationFailed,
        FailureKind::MemoryBudgetExceeded,
        FailureKind::MemoryCeilingExceeded,
        FailureKind::KilledByOs,
        FailureKind::Crashed,
        FailureKind::Unresponsive,
        FailureKind::Exited,
        FailureKind::LoadFailed,
        FailureKind::ProtocolError,
        FailureKind::Busy,
        FailureKind::Quarantined,
        FailureKind::ShuttingDown,
        FailureKind::ContextLengthExceeded,
        FailureKind::Unloaded,
        FailureKind::SlowClient,
    ];

    /// The control minor that introduced the kind: 0 for the kinds of 1.0, 5 for
    /// `context_length_exceeded`, `unloaded` and `slow_client` (control 1.5 / worker 1.6).
    pub fn since(self) -> u16 {
        match self {
            FailureKind::ContextLengthExceeded
            | FailureKind::Unloaded
            | FailureKind::SlowClient => 5,
            _ => 0,
        }
    }

    /// The older kind that says the most of this one, sent to a peer too old to know it
    /// (`since()` above its minor); a kind of 1.0 is its own.
    pub fn downgrade(self) -> FailureKind {
        match self {
            FailureKind::ContextLengthExceeded => FailureKind::InsufficientMemory,
            FailureKind::Unloaded | FailureKind::SlowClient => FailureKind::Busy,
            other => other,
        }
    }

    /// The kind as a peer at control minor `minor` can read it.
    pub fn at_control(self, minor: u16) -> FailureKind {
        let mut k = self;
        while k.since() > minor && k.downgrade() != k {
            k = k.downgrade();
        }
        k
    }

    /// A refusal before anything ran (`mlxsup` exit 3): the estimate does not fit, or the
    /// request does not fit the context.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            FailureKind::InsufficientMemory | FailureKind::ContextLengthExceeded
        )
    }

    /// The snake_case name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::InsufficientMemory => "insufficient_memory",
            FailureKind::MetalOutOfMemory => "metal_out_of_memory",
            FailureKind::AllocationFailed => "allocation_failed",
            FailureKind::MemoryBudgetExceeded => "memory_budget_exceeded",
            FailureKind::MemoryCeilingExceeded => "memory_ceiling_exceeded",
            FailureKind::KilledByOs => "killed_by_os",
            FailureKind::Crashed => "crashed",
            FailureKind::Unresponsive => "unresponsive",
            FailureKind::Exited => "exited",
            FailureKind::LoadFailed => "load_failed",
            FailureKind::ProtocolError => "protocol_error",
            FailureKind::Busy => "busy",
            FailureKind::Quarantined => "quarantined",
            FailureKind::ShuttingDown => "shutting_down",
            FailureKind::ContextLengthExceeded => "context_length_exceeded",
            FailureKind::Unloaded => "unloaded",
            FailureKind::SlowClient => "slow_client",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where in a worker's life something happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Spawn,
    Handshake,
    Load,
    Prefill,
    Decode,
    Idle,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Spawn => "spawn",
            Phase::Handshake => "handshake",
            Phase::Load => "load",
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
            Phase::Idle => "idle",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part of a request's work was running, within its phase, when that says more
/// than the phase does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The vision tower of a request with images: it runs at the start of the prefill,
    /// before the first text chunk, and its cost shrinks with fewer or smaller images,
    /// not with a shorter context.
    VisionTower,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::VisionTower => "vision_tower",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What MLX, the C++ runtime and Rust write when an allocation is refused, lower case:
/// the one list that recognises an allocation failure, in a worker's error message and
/// in its stderr alike ([`is_allocation_failure`]).
pub const ALLOCATION_FAILURE_PATTERNS: [&str; 11] = [
    // MLX's Metal allocator: `[metal::malloc] Attempting to allocate N bytes which is
    // greater than the maximum allowed buffer size …`, `… Unable to allocate N bytes`.
    "[metal::malloc]",
    "attempting to allocate",
    // MLX's CPU allocator (`[malloc] Unable to allocate N bytes.`) and older MLX's
    // `[malloc_or_wait] Unable to allocate`.
    "unable to allocate",
    "failed to allocate",
    "allowed buffer size",
    "out of memory",
    "std::bad_alloc",
    // Rust's own handler, before it aborts: `memory allocation of N bytes failed`.
    "memory allocation of ",
    // MLX's CUDA backend: `cudaMalloc(...) failed: out of memory`, `cudaMallocAsync(...)
    // failed: out of memory`, `cudaMallocManaged failed: out of memory` (the runtime's
    // words for cudaErrorMemoryAllocation, matched above), the error's own name, and the
    // CUDA libraries' allocation statuses.
    "cudaerrormemoryallocation",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
];

/// What MLX writes when Metal runs out of memory for a command buffer (its completion
/// handler throws, nothing catches it, the process aborts): `[METAL] Command buffer
/// execution failed: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)`,
/// and the errors of the buffers the GPU then ignores. Matched as written.
pub const METAL_OUT_OF_MEMORY_PATTERNS: [&str; 3] = [
    "Insufficient Memory",
    "kIOGPUCommandBufferCallbackErrorOutOfMemory",
    "kIOGPUCommandBufferCallbackErrorSubmissionsIgnored",
];

/// Whether `text` says Metal ran out of memory for a command buffer.
pub fn is_metal_out_of_memory(text: &str) -> bool {
    METAL_OUT_OF_MEMORY_PATTERNS
        .iter()
        .any(|p| text.contains(p))
}

/// Whether `text` (an error message, a stderr tail) says an allocation was refused.
pub fn is_allocation_failure(text: &str) -> bool {
    let lower = text.to_lowercase();
    ALLOCATION_FAILURE_PATTERNS
        .iter()
        .any(|p| lower.contains(p))
}

/// The last line of `text` that says an allocation was refused, trimmed.
pub fn allocation_failure_line(text: &str) -> Option<&str> {
    text.lines()
        .rev()
        .find(|l| is_allocation_failure(l))
        .map(str::trim)
}

/// A worker failure with its evidence and a line of advice for a person.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Written as the negotiated minor knows it ([`FailureKind::at_control`]).
    #[serde(serialize_with = "kind_for_peer")]
    pub kind: FailureKind,
    pub phase: Phase,
    /// The model folder, when one was being served.
    pub model: Option<String>,
    pub exit_code: Option<i32>,
    /// Signal name (`SIGABRT`), when a signal ended the worker.
    pub signal: Option<String>,
    pub core_dumped: bool,
    /// Whether the supervisor itself sent the fatal signal.
    pub signal_sent_by_supervisor: bool,
    /// Highest memory seen: the worker's own peak, its rusage max RSS, or the last samples.
    pub peak_bytes: Option<u64>,
    /// The last telemetry samples before the end, oldest first.
    pub last_telemetry: Vec<Telemetry>,
    /// What the preflight estimated the model would need, and the budget it was given.
    pub estimate_bytes: Option<u64>,
    pub budget_bytes: Option<u64>,
    /// The worker's last error message, when it sent one.
    pub message: Option<String>,
    /// The end of the worker's stderr (bounded).
    pub stderr_tail: String,
    /// From spawn to the failure.
    pub duration_ms: u64,
    pub advice: String,
    /// The advice as data, for programs: what to change to make it fit or work.
    pub remedy: Remedy,
    /// Since control 1.5: the part of the request that was running (`vision_tower`), when
    /// the phase alone does not say.
    #[serde(
        default,
        skip_serializing_if = "crate::wire::c1_5::skip",
        deserialize_with = "crate::wire::c1_5::de"
    )]
    pub stage: Option<Stage>,
    /// Since control 1.5: the memory evidence that decided a memory kind (the limit the
    /// worker's memory was at when it died, the allocation refusal it wrote, the kernel's
    /// OOM killer), when there was some.
    #[serde(
        default,
        skip_serializing_if = "crate::wire::c1_5::skip",
        deserialize_with = "crate::wire::c1_5::de"
    )]
    pub evidence: Option<MemoryEvidence>,
}

/// What showed a death to be a memory failure: which limit, its value, and the use
/// measured against it; or the words of an allocation refusal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEvidence {
    /// Which limit: `RLIMIT_AS`, `RLIMIT_DATA`, `cgroup memory.max`, `MLX memory limit`,
    /// `memory ceiling`, `OOM killer`; or `allocation refused` when the words decided.
    pub which: String,
    /// The limit in bytes, when it is one.
    pub limit: Option<u64>,
    /// The use measured against it (the address space, the data segment, the cgroup's
    /// usage, MLX's active memory, the footprint) in bytes.
    pub used: Option<u64>,
    /// The words that decided it: the allocation refusal in stderr or in the worker's
    /// error, the cgroup the OOM killer acted in.
    pub text: Option<String>,
}

fn kind_for_peer<S: serde::Serializer>(k: &FailureKind, s: S) -> Result<S::Ok, S::Error> {
    k.at_control(crate::wire::current().control).serialize(s)
}

impl Failure {
    /// Whether the failure is a memory failure, one that a smaller context may avoid.
    pub fn is_memory(&self) -> bool {
        matches!(
            self.kind,
            FailureKind::MetalOutOfMemory
                | FailureKind::AllocationFailed
                | FailureKind::KilledByOs
                | FailureKind::MemoryCeilingExceeded
        )
    }
}

/// What to change, as data (the CLI renders it as flags, the daemon's clients read the
/// fields). Every field is a suggestion; empty means nothing specific.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remedy {
    /// The largest context that fits.
    pub max_context: Option<u64>,
    /// A KV-cache quantization that fits.
    pub kv_bits: Option<u8>,
    /// A weight quantization that fits.
    pub quant_bits: Option<u8>,
    /// Models to unload to make room (the daemon).
    pub unload: Vec<String>,
    /// `force` would load it anyway.
    pub force: bool,
    /// The context this request needs (its prompt plus the tokens asked for), when that
    /// is what did not fit.
    pub min_context: Option<u64>,
}

impl Remedy {
    /// The remedy as command-line flags, e.g. `--context 2048 --kv-bits 8`.
    pub fn flags(&self) -> String {
        let mut out = Vec::new();
        if let Some(c) = self.max_context.or(self.min_context) {
            out.push(format!("--context {c}"));
        }
        if let Some(b) = self.kv_bits {
            out.push(format!("--kv-bits {b}"));
        }
        if let Some(b) = self.quant_bits {
            out.push(format!("--quant-bits {b}"));
        }
        for m in &self.unload {
            out.push(format!("(mlxsup unload {m})"));
        }
        if self.force {
            out.push("--force".into());
        }
        out.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::{is_allocation_failure, FailureKind};

    /// Every kind an older peer may not know downgrades to one it knows (a kind of
    /// control 1.0), and every older kind stays itself.
    #[test]
    fn new_kinds_downgrade_to_kinds_of_1_0() {
        for k in FailureKind::ALL {
            let d = k.downgrade();
            assert_eq!(d.since(), 0, "{k} downgrades to {d}");
            assert_eq!(d.downgrade(), d);
        }
        let new: Vec<_> = FailureKind::ALL
            .into_iter()
            .filter(|k| k.since() > 0)
            .collect();
        assert_eq!(
            new,
            [
                FailureKind::ContextLengthExceeded,
                FailureKind::Unloaded,
                FailureKind::SlowClient
            ],
            "the new kinds are the last ones"
        );
        assert_eq!(
            FailureKind::ContextLengthExceeded.downgrade(),
            FailureKind::InsufficientMemory
        );
        // Postcard encodes a variant by its position: the new ones come after the old.
        let at = |k: FailureKind| postcard::to_allocvec(&k).map(|v| v[0]);
        assert_eq!(at(FailureKind::ShuttingDown), Ok(13));
        assert_eq!(at(FailureKind::ContextLengthExceeded), Ok(14));
        assert_eq!(at(FailureKind::Unloaded), Ok(15));
        assert_eq!(at(FailureKind::SlowClient), Ok(16));
    }

    /// What MLX, libc++ and Rust write on a refused allocation is recognised, in any
    /// case; an error that merely mentions allocation (a bug), or glibc's heap
    /// corruption abort, is not.
    #[test]
    fn allocation_failures_are_recognised_by_one_list() {
        for yes in [
            "[metal::malloc] Attempting to allocate 9 bytes which is greater than the maximum allowed buffer size of 8 bytes.",
            "[malloc] Unable to allocate 4294967296 bytes.",
            "[malloc_or_wait] Unable to allocate 12 bytes.",
            "[metal::malloc] Unable to allocate 1 bytes",
            "prefill: failed to allocate the KV cache",
            "CUDA error: out of memory",
            "terminate called after throwing an instance of 'std::bad_alloc'",
            "memory allocation of 1099511627776 bytes failed",
        ] {
            assert!(is_allocation_failure(yes), "{yes}");
        }
        // MLX's CUDA backend, each text as MLX and the CUDA libraries write it.
        for cuda in [
            "cudaMalloc(&data, size) failed: out of memory.",
            "cudaMallocAsync(&data, size, stream) failed: out of memory",
            "cudaMallocManaged failed: out of memory.",
            "CUDA error: cudaErrorMemoryAllocation",
            "cuBLAS error: CUBLAS_STATUS_ALLOC_FAILED",
            "cudnn error: CUDNN_STATUS_ALLOC_FAILED",
            "[malloc] Unable to allocate 8589934592 bytes.",
        ] {
            assert!(is_allocation_failure(cuda), "{cuda}");
            assert!(!super::is_metal_out_of_memory(cuda), "{cuda}");
        }
        // Metal's command-buffer texts are Metal's own kind, not a refused allocation.
        for metal in [
            "libc++abi: terminating due to uncaught exception of type std::runtime_error: [METAL] Command buffer execution failed: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)",
            "[METAL] Command buffer execution failed: Ignored (for causing prior/excessive GPU errors) (00000004:kIOGPUCommandBufferCallbackErrorSubmissionsIgnored)",
        ] {
            assert!(super::is_metal_out_of_memory(metal), "{metal}");
        }
        assert!(!super::is_metal_out_of_memory(
            "[METAL] Command buffer execution failed: Internal Error (0000000e:Internal Error)"
        ));
        for no in [
            "kv cache not allocated",
            "malloc(): corrupted top size",
            "unsupported model_type `mamba`",
            "",
        ] {
            assert!(!is_allocation_failure(no), "{no}");
        }
    }

    /// `ALL` lists every kind exactly once. The match has no wildcard (possible only
    /// inside this crate, the enum being `non_exhaustive`): a new kind does not compile
    /// until it is given a slot here, and then this fails until it is in `ALL`.
    #[test]
    fn all_has_every_kind() {
        fn slot(k: FailureKind) -> usize {
            match k {
                FailureKind::InsufficientMemory => 0,
                FailureKind::MetalOutOfMemory => 1,
                FailureKind::AllocationFailed => 2,
                FailureKind::MemoryBudgetExceeded => 3,
                FailureKind::MemoryCeilingExceeded => 4,
                FailureKind::KilledByOs => 5,
                FailureKind::Crashed => 6,
                FailureKind::Unresponsive => 7,
                FailureKind::Exited => 8,
                FailureKind::LoadFailed => 9,
                FailureKind::ProtocolError => 10,
                FailureKind::Busy => 11,
                FailureKind::Quarantined => 12,
                FailureKind::ShuttingDown => 13,
                FailureKind::ContextLengthExceeded => 14,
                FailureKind::Unloaded => 15,
                FailureKind::SlowClient => 16,
            }
        }
        const N: usize = 17;
        assert_eq!(FailureKind::ALL.len(), N);
        let mut seen = [false; N];
        for k in FailureKind::ALL {
            assert!(!seen[slot(k)], "{k} twice in ALL");
            seen[slot(k)] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
