//! The one place a [`Failure`] is built: evidence in, a kind (`classify`), advice and the
//! report out — for a worker's death, a live worker's error, a preflight refusal and the
//! daemon's own refusals (busy, quarantined, shutting down).

use std::time::Instant;

use estimate::{Bytes, Estimate};
use protocol::{
    Failure, FailureKind, MemoryEvidence, Phase, Remedy, Stage, Telemetry, WorkerError,
};

use crate::classify::{self, AdviceFacts, Evidence, KillReason};

use super::{reap::ExitInfo, SpawnOptions};

/// What a report says about the model being served: set by whoever planned the worker.
#[derive(Clone, Debug, Default)]
pub struct ReportContext {
    /// The model folder.
    pub model: Option<String>,
    /// The estimate the worker was admitted with, and the budget it was given.
    pub estimate_bytes: Option<u64>,
    pub budget_bytes: Option<u64>,
    /// The context it was planned for.
    pub context: Option<u64>,
    /// What would make it fit (the largest context that does, say).
    pub remedy: Remedy,
    /// It computes in f32 (the CPU policy): the advice names `--compute native`.
    pub compute_f32: bool,
}

/// Everything known when a worker's request or life ends badly.
#[derive(Debug)]
pub struct Facts {
    pub phase: Phase,
    /// The part of the request that was running, when the phase alone does not say.
    pub stage: Option<Stage>,
    /// How the process ended; `None` while it is alive.
    pub exit: Option<ExitInfo>,
    /// The supervisor's own fatal kill, if it made one.
    pub killed_for: Option<KillReason>,
    /// Whether the fatal signal was one the supervisor sent.
    pub signal_ours: bool,
    pub worker_error: Option<WorkerError>,
    pub stderr: String,
    /// The last samples, oldest first.
    pub telemetry: Vec<Telemetry>,
    /// Memory was near a limit the worker ran under.
    pub near_limit: bool,
    /// What showed it (the limit reached, the cgroup's news, the OOM killer).
    pub evidence: Option<MemoryEvidence>,
    pub peak_bytes: Option<u64>,
    pub message: Option<String>,
    pub started: Instant,
}

impl Facts {
    /// Facts with nothing known but the phase.
    pub fn new(phase: Phase, started: Instant) -> Facts {
        Facts {
            phase,
            stage: None,
            exit: None,
            killed_for: None,
            signal_ours: false,
            worker_error: None,
            stderr: String::new(),
            telemetry: Vec::new(),
            near_limit: false,
            evidence: None,
            peak_bytes: None,
            message: None,
            started,
        }
    }
}

/// A worker's failure: classified from its evidence, with advice.
pub fn build(opts: &SpawnOptions, ctx: &ReportContext, f: Facts) -> Failure {
    let kind = classify::classify(&Evidence {
        exit: f.exit.as_ref(),
        killed_for: f.killed_for,
        worker_error: f.worker_error.as_ref(),
        stderr: &f.stderr,
        near_limit: f.near_limit,
    });
    let message = f
        .message
        .or_else(|| f.worker_error.as_ref().map(|e| e.message.clone()));
    // The evidence of a memory kind: the limit reached, else the words of the refusal.
    let evidence = if memory_kind(kind) && kind != FailureKind::InsufficientMemory {
        f.evidence.clone().or_else(|| {
            let words = [message.as_deref().unwrap_or(""), f.stderr.as_str()];
            words
                .iter()
                .find_map(|t| protocol::failure::allocation_failure_line(t))
                .map(|line| MemoryEvidence {
                    which: "allocation refused".into(),
                    limit: None,
                    used: None,
                    text: Some(line.to_string()),
                })
        })
    } else {
        None
    };
    let facts = AdviceFacts {
        phase: Some(f.phase),
        stage: f.stage,
        estimate_bytes: ctx.estimate_bytes,
        budget_bytes: ctx.budget_bytes,
        context: ctx.context,
        ceiling_bytes: opts.memory_ceiling,
        peak_bytes: f.peak_bytes,
        exit: f.exit.as_ref().map(ExitInfo::describe),
        message: message.clone(),
        heartbeat_timeout_ms: Some(opts.heartbeat_timeout.as_millis() as u64),
        compute_f32: ctx.compute_f32,
        evidence: evidence.clone(),
    };
    let exit = f.exit.as_ref();
    let remedy = if memory_kind(kind) {
        ctx.remedy.clone()
    } else {
        Remedy::default()
    };
    Failure {
        kind,
        phase: f.phase,
        model: ctx.model.clone(),
        exit_code: exit.and_then(|e| e.code),
        signal: exit.and_then(ExitInfo::signal_name),
        core_dumped: exit.is_some_and(|e| e.core_dumped),
        signal_sent_by_supervisor: f.signal_ours,
        peak_bytes: f.peak_bytes,
        last_telemetry: f.telemetry,
        estimate_bytes: ctx.estimate_bytes,
        budget_bytes: ctx.budget_bytes,
        message,
        stderr_tail: f.stderr,
        duration_ms: f.started.elapsed().as_millis() as u64,
        advice: classify::advice(kind, &facts),
        remedy,
        stage: f.stage,
        evidence,
    }
}

fn memory_kind(kind: FailureKind) -> bool {
    matches!(
        kind,
        FailureKind::MetalOutOfMemory
            | FailureKind::AllocationFailed
            | FailureKind::KilledByOs
            | FailureKind::MemoryCeilingExceeded
            | FailureKind::MemoryBudgetExceeded
            | FailureKind::InsufficientMemory
    )
}

/// The preflight's refusal: the estimate does not fit the budget.
pub fn refusal(est: &Estimate, remedy: Remedy) -> Failure {
    let facts = AdviceFacts {
        estimate_bytes: Some(est.total_bytes),
        budget_bytes: Some(est.budget_bytes),
        context: Some(est.kv_cache.context),
        ..Default::default()
    };
    // The estimator's advice names the context or quantization that fits.
    let advice = if est.advice.is_empty() {
        classify::advice(FailureKind::InsufficientMemory, &facts)
    } else {
        format!("{} (--force loads anyway)", est.advice)
    };
    Failure {
        message: Some(format!(
            "needs {} but the budget is {}",
            Bytes(est.total_bytes),
            Bytes(est.budget_bytes)
        )),
        estimate_bytes: Some(est.total_bytes),
        budget_bytes: Some(est.budget_bytes),
        ..plain(
            FailureKind::InsufficientMemory,
            Some(est.model.clone()),
            advice,
            remedy,
        )
    }
}

/// A failure with no worker behind it (the daemon's refusals): kind, model, advice.
pub fn plain(kind: FailureKind, model: Option<String>, advice: String, remedy: Remedy) -> Failure {
    Failure {
        kind,
        phase: Phase::Spawn,
        model,
        exit_code: None,
        signal: None,
        core_dumped: false,
        signal_sent_by_supervisor: false,
        peak_bytes: None,
        last_telemetry: vec![],
        estimate_bytes: None,
        budget_bytes: None,
        message: None,
        stderr_tail: String::new(),
        duration_ms: 0,
        advice,
        remedy,
        stage: None,
        evidence: None,
    }
}
