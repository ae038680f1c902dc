//! Fault injection for tests: `KIND@PHASE`, carried out by the worker for real.

use serde::{Deserialize, Serialize};

/// What the worker does to itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultAction {
    /// Writes MLX's Metal out-of-memory text to stderr, then `abort()`.
    AbortMetalOom,
    /// A real invalid memory write.
    Segv,
    /// SIGKILL to itself.
    Kill,
    /// `exit(N)`.
    Exit(i32),
    /// Stops answering and sending telemetry; the process stays alive.
    Hang,
    /// Allocates and evaluates a real MLX array of this many bytes, and holds it.
    Alloc(u64),
    /// Writes bytes that are not the protocol on the socket, then keeps running.
    Garbage,
    /// The main thread blocks forever while telemetry keeps flowing: a deadlock inside
    /// MLX, as seen after an allocation failed under RLIMIT_AS.
    Stall,
}

/// When the worker does it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultPoint {
    Load,
    Prefill,
    /// At the N-th generated token (1-based).
    Decode(u32),
}

/// An injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub action: FaultAction,
    pub point: FaultPoint,
}

impl Fault {
    /// Parses `KIND@PHASE` (e.g. `abort-metal-oom@decode:3`, `alloc:2GiB@load`); sizes
    /// are read with `parse_size`.
    pub fn parse(s: &str, parse_size: impl Fn(&str) -> Option<u64>) -> Result<Fault, String> {
        let (kind, phase) = s
            .split_once('@')
            .ok_or_else(|| format!("fault `{s}` is not KIND@PHASE"))?;
        let action = match kind.split_once(':') {
            None => match kind {
                "abort-metal-oom" => FaultAction::AbortMetalOom,
                "segv" => FaultAction::Segv,
                "kill" => FaultAction::Kill,
                "hang" => FaultAction::Hang,
                "garbage" => FaultAction::Garbage,
                "stall" => FaultAction::Stall,
                _ => return Err(format!("unknown fault kind `{kind}` (abort-metal-oom, segv, kill, exit:N, hang, stall, alloc:SIZE, garbage)")),
            },
            Some(("exit", n)) => FaultAction::Exit(
                n.parse()
                    .map_err(|_| format!("exit code `{n}` is not a number"))?,
            ),
            Some(("alloc", size)) => FaultAction::Alloc(
                parse_size(size).ok_or_else(|| format!("`{size}` is not a size"))?,
            ),
            Some(_) => return Err(format!("unknown fault kind `{kind}`")),
        };
        let point = match phase.split_once(':') {
            None if phase == "load" => FaultPoint::Load,
            None if phase == "prefill" => FaultPoint::Prefill,
            None if phase == "decode" => FaultPoint::Decode(1),
            Some(("decode", n)) => FaultPoint::Decode(
                n.parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("decode step `{n}` is not a number from 1"))?,
            ),
            _ => {
                return Err(format!(
                    "unknown fault phase `{phase}` (load, prefill, decode:N)"
                ))
            }
        };
        Ok(Fault { action, point })
    }
}
