//! Turning the evidence of a worker's end into a failure kind and advice for a person.
//!
//! Order matters: what the supervisor did itself comes first (it knows why it killed),
//! then a structured error from a live worker, then signals with their stderr signatures,
//! then exit codes. See DESIGN.md, "Failure taxonomy".

use estimate::Bytes;
use nix::sys::signal::Signal;
use protocol::{FailureKind, MemoryEvidence, Phase, Stage, WorkerError, WorkerErrorKind};

use crate::supervise::reap::ExitInfo;

/// Why the supervisor itself killed the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillReason {
    /// Its footprint passed the hard ceiling.
    Ceiling,
    /// The heartbeat stopped.
    Unresponsive,
    /// It sent bytes that are not the protocol.
    ProtocolError,
    /// It was asked to stop (a cancel, a broken socket, a shutdown) and did not in time.
    Stop,
}

/// What is known when a worker's request ends badly.
pub struct Evidence<'a> {
    /// How the process ended; `None` while it is alive (a structured error).
    pub exit: Option<&'a ExitInfo>,
    /// The supervisor's own fatal kill, if it made one.
    pub killed_for: Option<KillReason>,
    /// The worker's last structured error.
    pub worker_error: Option<&'a WorkerError>,
    pub stderr: &'a str,
    /// The last footprint sample was near a memory limit the worker ran under.
    pub near_limit: bool,
}

pub fn classify(ev: &Evidence<'_>) -> FailureKind {
    match ev.killed_for {
        Some(KillReason::Ceiling) => return FailureKind::MemoryCeilingExceeded,
        // A worker that stopped with its memory at a limit it ran under: an allocation
        // failed and MLX never recovered (seen under RLIMIT_AS: a deadlock, no crash).
        Some(KillReason::Unresponsive | KillReason::Stop) if ev.near_limit => {
            return FailureKind::AllocationFailed
        }
        // A kill the supervisor sent is one of its own kinds, never `crashed`: a worker
        // that did not stop when asked stopped answering.
        Some(KillReason::Unresponsive | KillReason::Stop) => return FailureKind::Unresponsive,
        Some(KillReason::ProtocolError) => return FailureKind::ProtocolError,
        None => {}
    }
    let metal = || protocol::failure::is_metal_out_of_memory(ev.stderr);
    let alloc_failed = || protocol::failure::is_allocation_failure(ev.stderr);
    let Some(exit) = ev.exit else {
        return match ev.worker_error.map(|e| e.kind) {
            Some(WorkerErrorKind::MemoryBudgetExceeded) => FailureKind::MemoryBudgetExceeded,
            // The worker caught what MLX threw: Metal's command-buffer error by its text.
            Some(WorkerErrorKind::AllocationFailed)
                if ev
                    .worker_error
                    .is_some_and(|e| protocol::failure::is_metal_out_of_memory(&e.message)) =>
            {
                FailureKind::MetalOutOfMemory
            }
            Some(WorkerErrorKind::AllocationFailed) => FailureKind::AllocationFailed,
            Some(WorkerErrorKind::LoadFailed) => FailureKind::LoadFailed,
            _ => FailureKind::Exited,
        };
    };
    if let Some(sig) = exit.signal {
        if metal() {
            return FailureKind::MetalOutOfMemory;
        }
        if alloc_failed() {
            return FailureKind::AllocationFailed;
        }
        return match sig {
            // At a limit, a fault is a write through a refused allocation, and an abort
            // is the runtime giving up on one (a thread MLX could not start under
            // RLIMIT_AS: `terminate called without an active exception`).
            Signal::SIGSEGV | Signal::SIGBUS | Signal::SIGABRT if ev.near_limit => {
                FailureKind::AllocationFailed
            }
            Signal::SIGKILL if ev.killed_for.is_none() => FailureKind::KilledByOs,
            _ => FailureKind::Crashed,
        };
    }
    if alloc_failed() {
        return FailureKind::AllocationFailed;
    }
    match ev.worker_error.map(|e| e.kind) {
        Some(WorkerErrorKind::LoadFailed) => FailureKind::LoadFailed,
        Some(WorkerErrorKind::AllocationFailed) => FailureKind::AllocationFailed,
        _ => FailureKind::Exited,
    }
}

/// The worker's last words on a fatal signal (its `fatal_signal` handler): virtual size,
/// RSS and (from this build) data segment in bytes at the moment of the fault or abort.
pub fn fatal_memory(stderr: &str) -> Option<(u64, u64, Option<u64>)> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("mlxsup-worker: fatal "))?;
    let field = |name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
    };
    Some((field("vm=")?, field("rss=")?, field("data=")))
}

/// Facts the advice may use.
#[derive(Clone, Debug, Default)]
pub struct AdviceFacts {
    pub phase: Option<Phase>,
    /// The part of the request that was running, when the phase alone does not say.
    pub stage: Option<Stage>,
    pub estimate_bytes: Option<u64>,
    pub budget_bytes: Option<u64>,
    pub context: Option<u64>,
    pub ceiling_bytes: Option<u64>,
    pub peak_bytes: Option<u64>,
    pub exit: Option<String>,
    pub message: Option<String>,
    pub heartbeat_timeout_ms: Option<u64>,
    /// The worker computed in f32: `--compute native` is the lighter choice.
    pub compute_f32: bool,
    /// The memory evidence that decided the kind.
    pub evidence: Option<MemoryEvidence>,
}

/// The evidence in words: ` at its RLIMIT_AS of 683.6 MiB (682 MiB used)`.
fn at_limit(e: Option<&MemoryEvidence>) -> String {
    let Some(e) = e else {
        return String::new();
    };
    match (e.limit, e.used) {
        (Some(l), Some(u)) => format!(" at its {} of {} ({} used)", e.which, Bytes(l), Bytes(u)),
        (Some(l), None) => format!(" at its {} of {}", e.which, Bytes(l)),
        _ => String::new(),
    }
}

/// One line for a person: what happened and what to try.
pub fn advice(kind: FailureKind, f: &AdviceFacts) -> String {
    let b = |v: Option<u64>| v.map_or("?".to_string(), |v| Bytes(v).to_string());
    let need = match (f.estimate_bytes, f.context) {
        (Some(e), Some(c)) => format!("the model needed ~{} at context {c}", Bytes(e)),
        (Some(e), None) => format!("the model needed ~{}", Bytes(e)),
        _ => "the model needed more memory than was free".into(),
    };
    let smaller = f
        .context
        .map(|c| format!("try --context {}", (c / 2).max(256)))
        .unwrap_or_else(|| "try a shorter context".into());
    let phase = f.phase.map_or(String::new(), |p| format!(" during {p}"));
    // f32 compute dequantizes a quantized model: the lighter choice is the native dtype.
    let lighter = if f.compute_f32 {
        "--compute native (f32 compute holds the weights at 4 bytes each)"
    } else {
        "a 4-bit model"
    };
    match kind {
        FailureKind::InsufficientMemory => format!(
            "{need}; the budget is {}: {smaller} or {lighter} (--force loads anyway)",
            b(f.budget_bytes)
        ),
        FailureKind::MetalOutOfMemory => format!(
            "Metal ran out of memory{phase}: {need}; the budget is {}: {smaller}, {lighter}, or close other GPU apps",
            b(f.budget_bytes)
        ),
        FailureKind::AllocationFailed => format!(
            "MLX could not allocate memory{phase}{} (peak {}): {need}; {smaller} or {lighter}",
            at_limit(f.evidence.as_ref()),
            b(f.peak_bytes)
        ),
        FailureKind::MemoryBudgetExceeded if f.stage == Some(Stage::VisionTower) => {
            format!(
                "the vision tower would pass the worker's budget of {}: fewer or smaller images (inspect --images N --image-size WxH says what fits), or a larger --budget",
                b(f.budget_bytes)
            )
        }
        FailureKind::MemoryBudgetExceeded => format!(
            "the next step would pass the worker's budget of {}: {smaller}, a shorter prompt, or a larger --budget",
            b(f.budget_bytes)
        ),
        FailureKind::MemoryCeilingExceeded => format!(
            "the worker's footprint reached {}, over the ceiling of {}{phase}; it was stopped before the system ran short: {smaller}, {lighter}, or a higher --memory-ceiling",
            b(f.peak_bytes),
            b(f.ceiling_bytes)
        ),
        FailureKind::KilledByOs => match f.evidence.as_ref().filter(|e| e.which == "OOM killer") {
            Some(e) => format!(
                "{} killed the worker{phase} for memory at a footprint of {}: {smaller} or {lighter}",
                e.text.as_deref().unwrap_or("the kernel's OOM killer"),
                b(f.peak_bytes)
            ),
            None => format!(
                "the operating system killed the worker{phase} (SIGKILL not sent by mlxsup: out of memory, most likely) at a footprint of {}: {smaller} or {lighter}",
                b(f.peak_bytes)
            ),
        },
        FailureKind::Crashed => format!(
            "the worker crashed{phase} with {}: a bug in MLX or mlxsup, not your model; the stderr tail has the details",
            f.exit.as_deref().unwrap_or("a signal")
        ),
        FailureKind::Unresponsive => match f.message.as_deref() {
            Some(why) => format!(
                "the worker stopped answering{phase} ({why}) and mlxsup stopped it; try again, and report it if it repeats"
            ),
            None => format!(
                "the worker stopped answering{phase} for {} ms and was stopped; try again, and report it if it repeats",
                f.heartbeat_timeout_ms.unwrap_or(0)
            ),
        },
        FailureKind::Exited => format!(
            "the worker ended{phase} with {}{}",
            f.exit.as_deref().unwrap_or("an error"),
            f.message.as_deref().map_or(String::new(), |m| format!(": {m}"))
        ),
        FailureKind::LoadFailed => format!(
            "the model could not be loaded: {}",
            f.message.as_deref().unwrap_or("see the stderr tail")
        ),
        FailureKind::Unloaded => "the model was unloaded while the request waited for it or ran: send the request again (the model is loaded again for it)".into(),
        FailureKind::ProtocolError => format!(
            "the worker sent something that is not the mlxsup protocol ({}); is mlxsup-worker from the same build as mlxsup?",
            f.message.as_deref().unwrap_or("malformed data")
        ),
        _ => f.message.clone().unwrap_or_else(|| kind.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn exit(code: Option<i32>, signal: Option<Signal>) -> ExitInfo {
        ExitInfo {
            code,
            signal,
            core_dumped: false,
            max_rss_bytes: 0,
            at: Instant::now(),
        }
    }

    fn ev<'a>(exit: Option<&'a ExitInfo>, stderr: &'a str) -> Evidence<'a> {
        Evidence {
            exit,
            killed_for: None,
            worker_error: None,
            stderr,
            near_limit: false,
        }
    }

    #[test]
    fn signals_with_their_signatures() {
        let abrt = exit(None, Some(Signal::SIGABRT));
        let kill = exit(None, Some(Signal::SIGKILL));
        let segv = exit(None, Some(Signal::SIGSEGV));
        let oom = "libc++abi: ... [METAL] Command buffer execution failed: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)";
        assert_eq!(
            classify(&ev(Some(&abrt), oom)),
            FailureKind::MetalOutOfMemory
        );
        assert_eq!(classify(&ev(Some(&abrt), "")), FailureKind::Crashed);
        assert_eq!(
            classify(&ev(
                Some(&abrt),
                "[metal::malloc] Attempting to allocate 9 bytes"
            )),
            FailureKind::AllocationFailed
        );
        assert_eq!(classify(&ev(Some(&kill), "")), FailureKind::KilledByOs);
        let mut e = ev(Some(&kill), "");
        e.killed_for = Some(KillReason::Ceiling);
        assert_eq!(classify(&e), FailureKind::MemoryCeilingExceeded);
        e.killed_for = Some(KillReason::Unresponsive);
        assert_eq!(classify(&e), FailureKind::Unresponsive);
        // A worker that did not end a cancelled request, SIGKILLed by the supervisor.
        e.killed_for = Some(KillReason::Stop);
        assert_eq!(classify(&e), FailureKind::Unresponsive);
        assert_eq!(classify(&ev(Some(&segv), "")), FailureKind::Crashed);
        let mut e = ev(Some(&segv), "");
        e.near_limit = true;
        assert_eq!(classify(&e), FailureKind::AllocationFailed);
        // MLX's thread pool failing to start a thread under RLIMIT_AS: a memory failure
        // at the limit, a crash away from it.
        let terminate = "terminate called without an active exception\nmlxsup-worker: fatal SIGABRT addr=0x0 vm=340000000 rss=200000000";
        let mut e = ev(Some(&abrt), terminate);
        assert_eq!(classify(&e), FailureKind::Crashed);
        e.near_limit = true;
        assert_eq!(classify(&e), FailureKind::AllocationFailed);
    }

    /// MLX's CUDA and Metal out-of-memory texts, each as recorded on stderr before the
    /// abort, and each as the worker's catch of what MLX threw (the worker alive).
    #[test]
    fn cuda_and_metal_texts_are_classified_from_stderr_and_from_the_catch() {
        let abrt = exit(None, Some(Signal::SIGABRT));
        let cuda = [
            "terminate called after throwing an instance of 'std::runtime_error'\n  what():  cudaMalloc(&data, size) failed: out of memory.",
            "terminate called after throwing an instance of 'std::runtime_error'\n  what():  cudaMallocAsync(&data, size, stream) failed: out of memory",
            "terminate called after throwing an instance of 'std::runtime_error'\n  what():  cudaMallocManaged failed: out of memory.",
            "terminate called after throwing an instance of 'std::runtime_error'\n  what():  [malloc] Unable to allocate 17179869184 bytes.",
        ];
        let metal = [
            "libc++abi: terminating due to uncaught exception of type std::runtime_error: [METAL] Command buffer execution failed: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)",
            "libc++abi: terminating due to uncaught exception of type std::runtime_error: [METAL] Command buffer execution failed: Ignored (for causing prior/excessive GPU errors) (00000004:kIOGPUCommandBufferCallbackErrorSubmissionsIgnored)",
        ];
        for (texts, kind) in [
            (&cuda[..], FailureKind::AllocationFailed),
            (&metal[..], FailureKind::MetalOutOfMemory),
        ] {
            for text in texts {
                assert_eq!(classify(&ev(Some(&abrt), text)), kind, "stderr: {text}");
                // What MLX threw: the exception's message.
                let what = text
                    .split_once("what():  ")
                    .or_else(|| text.split_once("std::runtime_error: "))
                    .map_or(*text, |(_, w)| w);
                let caught = WorkerError {
                    kind: WorkerErrorKind::AllocationFailed,
                    message: format!("prefill: {what}"),
                };
                let mut e = ev(None, "");
                e.worker_error = Some(&caught);
                assert_eq!(classify(&e), kind, "caught: {}", caught.message);
            }
        }
    }

    #[test]
    fn exits_and_live_errors() {
        let x = exit(Some(7), None);
        assert_eq!(classify(&ev(Some(&x), "")), FailureKind::Exited);
        let load = WorkerError {
            kind: WorkerErrorKind::LoadFailed,
            message: "unsupported model_type `mamba`".into(),
        };
        let mut e = ev(None, "");
        e.worker_error = Some(&load);
        assert_eq!(classify(&e), FailureKind::LoadFailed);
        let budget = WorkerError {
            kind: WorkerErrorKind::MemoryBudgetExceeded,
            message: String::new(),
        };
        e.worker_error = Some(&budget);
        assert_eq!(classify(&e), FailureKind::MemoryBudgetExceeded);
    }

    #[test]
    fn last_words_are_read() {
        let s = "noise\nmlxsup-worker: fatal SIGSEGV addr=0x0 vm=1500000000 rss=400000000\n";
        assert_eq!(fatal_memory(s), Some((1_500_000_000, 400_000_000, None)));
        let s = "mlxsup-worker: fatal SIGABRT addr=0x0 vm=15 rss=4 data=9\n";
        assert_eq!(fatal_memory(s), Some((15, 4, Some(9))));
        assert_eq!(fatal_memory("mlxsup-worker: fatal SIGSEGV addr=0x8"), None);
    }

    #[test]
    fn advice_names_numbers() {
        let f = AdviceFacts {
            estimate_bytes: Some(3 << 30),
            budget_bytes: Some(2 << 30),
            context: Some(4096),
            ..Default::default()
        };
        let a = advice(FailureKind::MetalOutOfMemory, &f);
        assert!(
            a.contains("3 GiB") && a.contains("2 GiB") && a.contains("--context 2048"),
            "{a}"
        );
        assert!(a.contains("4-bit") && !a.contains("--compute"), "{a}");
        let f32 = AdviceFacts {
            compute_f32: true,
            ..f
        };
        for kind in [
            FailureKind::MetalOutOfMemory,
            FailureKind::AllocationFailed,
            FailureKind::KilledByOs,
            FailureKind::MemoryCeilingExceeded,
        ] {
            let a = advice(kind, &f32);
            assert!(
                a.contains("--compute native") && !a.contains("4-bit"),
                "{a}"
            );
        }
    }

    /// The soft guard refusing the vision tower is advised fewer or smaller images, not a
    /// shorter context (the images' cost does not shrink with it).
    #[test]
    fn a_tower_over_the_budget_is_advised_fewer_or_smaller_images() {
        let f = AdviceFacts {
            budget_bytes: Some(1 << 30),
            context: Some(4096),
            stage: Some(Stage::VisionTower),
            message: Some(
                "the vision tower on 4 image(s): the prefill step 0 would need 3000000000 bytes on top of 900000000 active; the worker's budget is 1073741824 bytes".into(),
            ),
            ..Default::default()
        };
        let a = advice(FailureKind::MemoryBudgetExceeded, &f);
        assert!(
            a.contains("fewer or smaller images") && !a.contains("--context"),
            "{a}"
        );
        let text = AdviceFacts {
            message: Some("the prefill step 0 would need 1 bytes".into()),
            stage: None,
            ..f.clone()
        };
        assert!(advice(FailureKind::MemoryBudgetExceeded, &text).contains("--context 2048"));
        // The stage decides, not the words of the message.
        let worded = AdviceFacts { stage: None, ..f };
        assert!(advice(FailureKind::MemoryBudgetExceeded, &worded).contains("--context 2048"));
    }
}
