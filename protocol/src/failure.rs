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
}

impl FailureKind {
    /// Every kind, in wire order.
    pub const ALL: [FailureKind; 14] = [
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
    ];

    /// The control minor that introduced the kind (all of these: 1.0).
    pub fn since(self) -> u16 {
        match self {
            FailureKind::InsufficientMemory
            | FailureKind::MetalOutOfMemory
            | FailureKind::AllocationFailed
            | FailureKind::MemoryBudgetExceeded
            | FailureKind::MemoryCeilingExceeded
            | FailureKind::KilledByOs
            | FailureKind::Crashed
            | FailureKind::Unresponsive
            | FailureKind::Exited
            | FailureKind::LoadFailed
            | FailureKind::ProtocolError
            | FailureKind::Busy
            | FailureKind::Quarantined
            | FailureKind::ShuttingDown => 0,
        }
    }

    /// The older kind that says the most of this one, for a peer that does not know it
    /// (`since() > its minor`); a kind of 1.0 is its own. E.g. a future
    /// `context_length_exceeded` (since 1.5) would be sent as `insufficient_memory`.
    pub fn downgrade(self) -> FailureKind {
        self
    }

    /// The kind as a peer at control minor `minor` can read it.
    pub fn at_control(self, minor: u16) -> FailureKind {
        let mut k = self;
        while k.since() > minor && k.downgrade() != k {
            k = k.downgrade();
        }
        k
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
    use super::FailureKind;

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
            }
        }
        const N: usize = 14;
        assert_eq!(FailureKind::ALL.len(), N);
        let mut seen = [false; N];
        for k in FailureKind::ALL {
            assert!(!seen[slot(k)], "{k} twice in ALL");
            seen[slot(k)] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
