//! Starting a worker: spawn the process, start its footprint sampler (the ceiling), exchange
//! the handshake, and hand the connection to its actor task.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Instant,
};

use protocol::{FromWorker, Hello, Phase, ProtocolError, Role, ToWorker};
use tokio::sync::{mpsc, watch};

use super::{actor::Actor, Status, WorkerHandle, WorkerState};
use crate::classify::KillReason;
use crate::supervise::{
    pressure,
    report::{self, Facts, ReportContext},
    spawn,
    watchdog::{self, Watch},
    SpawnError, SpawnOptions,
};

impl WorkerHandle {
    /// Spawns a worker, accepts its connection, exchanges the handshake, and starts its
    /// actor.
    pub async fn spawn(opts: SpawnOptions, ctx: ReportContext) -> Result<WorkerHandle, SpawnError> {
        let started = Instant::now();
        // The cgroup's memory counters before the worker exists: an OOM kill or a limit
        // hit after this is news of its life.
        let cgroup = pressure::Cgroup::of_this_process().map(|c| {
            let before = c.counters();
            (c, before)
        });
        let spawned = spawn::spawn(&opts).await.map_err(|e| match e {
            spawn::SpawnError::Setup(msg) => SpawnError::Setup(msg),
            spawn::SpawnError::Died {
                message,
                stderr,
                exit,
                timed_out,
            } => {
                // A worker that never connected in time was killed by us: unresponsive.
                let mut f = Facts::new(
                    if timed_out {
                        Phase::Handshake
                    } else {
                        Phase::Spawn
                    },
                    started,
                );
                f.killed_for = timed_out.then_some(KillReason::Unresponsive);
                f.signal_ours = timed_out;
                f.peak_bytes = exit.as_ref().map(|e| e.max_rss_bytes);
                f.exit = exit;
                f.stderr = stderr;
                f.message = Some(message);
                SpawnError::Failed(Box::new(report::build(&opts, &ctx, f)))
            }
        })?;
        let spawn::Spawned {
            pid,
            conn,
            exit_rx,
            stderr,
            stderr_done,
        } = spawned;

        let status = Status {
            state: WorkerState::Idle,
            phase: Phase::Handshake,
            footprint_bytes: 0,
            max_footprint_bytes: 0,
            mlx_peak_bytes: 0,
            last_telemetry: None,
            failure: None,
        };
        let (status_tx, status_rx) = watch::channel(status);
        let status_tx = Arc::new(status_tx);
        let watch = Arc::new(Mutex::new(Watch::default()));
        let (ceiling_tx, ceiling_rx) = watch::channel(false);
        let sampled = Arc::clone(&status_tx);
        let sampler = tokio::spawn(watchdog::sample_footprint(
            pid,
            opts.memory_ceiling,
            opts.sample_interval,
            started,
            Arc::clone(&watch),
            ceiling_tx,
            move |fp| {
                sampled.send_modify(|s| {
                    s.footprint_bytes = fp;
                    s.max_footprint_bytes = s.max_footprint_bytes.max(fp);
                })
            },
        ));
        let mut actor = Actor {
            pid,
            conn,
            opts,
            ctx,
            started,
            next_id: 1,
            phase: Phase::Handshake,
            request_phase: Phase::Handshake,
            telemetry: VecDeque::new(),
            last_heard: Instant::now(),
            last_error: None,
            exit_rx: Some(exit_rx),
            exit: None,
            stderr,
            stderr_done: Some(stderr_done),
            watch,
            cgroup,
            ceiling_rx,
            sampler,
            status: status_tx,
            current: None,
            pending: VecDeque::new(),
        };
        let ours = Hello::ours(
            Role::Supervisor,
            concat!("mlxsup ", env!("CARGO_PKG_VERSION")),
        );
        let timeout = actor.opts.handshake_timeout;
        let peer = match protocol::handshake::handshake::<_, ToWorker, FromWorker>(
            &mut actor.conn,
            ours,
            timeout,
        )
        .await
        {
            Ok(peer) => peer,
            Err(e) => {
                let reason = match &e {
                    ProtocolError::PeerTooNew { .. } | ProtocolError::PeerTooOld { .. } => {
                        Some(KillReason::ProtocolError)
                    }
                    ProtocolError::Timeout(_) => Some(KillReason::Unresponsive),
                    e if e.is_malformed() => Some(KillReason::ProtocolError),
                    _ => None,
                };
                let f = actor.fail(reason, Some(e.to_string())).await;
                return Err(SpawnError::Failed(Box::new(f)));
            }
        };
        actor.phase = Phase::Idle;
        actor.publish(|s| s.phase = Phase::Idle);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let pid = pid.as_raw();
        tokio::spawn(actor.run(cmd_rx));
        Ok(WorkerHandle {
            pid,
            cmds: cmd_tx,
            status: status_rx,
            peer,
        })
    }
}
