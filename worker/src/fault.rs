//! Injected faults, carried out for real: the supervisor must see exactly what a real
//! failure of that kind looks like.

use std::{io::Write, time::Duration};

use protocol::FaultAction;

/// What MLX writes when a Metal command buffer fails for lack of memory (then the C++
/// runtime aborts the process).
pub const METAL_OOM_TEXT: &str = "libc++abi: terminating due to uncaught exception of type \
std::runtime_error: [METAL] Command buffer execution failed: Insufficient Memory \
(00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)";

/// Arrays allocated by `alloc:SIZE`, held until the process ends.
static HELD: std::sync::Mutex<Vec<mlx_rs::Array>> = std::sync::Mutex::new(Vec::new());

/// Carries out `action`. Returns only for `Alloc` (after the memory is held); `Hang` calls
/// `on_hang` (which silences the heartbeat) and then never returns.
pub fn trigger(
    action: FaultAction,
    on_hang: impl FnOnce(),
) -> Result<(), mlx_rs::error::Exception> {
    // When it happened, so tests can measure how fast the supervisor reports it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    eprintln!("mlxsup-worker: injecting fault {action:?} at unix_us={now}");
    match action {
        FaultAction::AbortMetalOom => {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{METAL_OOM_TEXT}");
            let _ = err.flush();
            std::process::abort();
        }
        FaultAction::Segv => {
            // A real invalid write: the null page is never mapped.
            let bad = std::ptr::without_provenance_mut::<u64>(8);
            // SAFETY: none; this is the point. The write faults before anything is written.
            unsafe { std::ptr::write_volatile(bad, 0xdead) };
            std::process::abort();
        }
        FaultAction::Kill => {
            // SAFETY: kill with our own pid has no memory-safety preconditions.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        FaultAction::Exit(code) => {
            let _ = std::io::stderr().flush();
            std::process::exit(code);
        }
        FaultAction::Hang => {
            on_hang();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        FaultAction::Alloc(bytes) => alloc(bytes),
        // Needs the socket: carried out by the serve loop.
        FaultAction::Garbage => Ok(()),
        FaultAction::Stall => loop {
            std::thread::park();
        },
    }
}

/// Allocates and evaluates `bytes` of real MLX memory in steps, so telemetry shows the
/// climb, and holds it.
fn alloc(bytes: u64) -> Result<(), mlx_rs::error::Exception> {
    const ROW: u64 = 1 << 20;
    let step_rows = (bytes / ROW / 16).clamp(16, 256);
    let mut rows_left = bytes.div_ceil(ROW);
    while rows_left > 0 {
        let rows = rows_left.min(step_rows);
        let a = mlx_rs::ops::ones::<u8>(&[rows as i32, ROW as i32])?;
        let a = a.add(mlx_rs::Array::from_slice(&[1u8], &[1]))?;
        a.eval()?;
        HELD.lock().unwrap_or_else(|p| p.into_inner()).push(a);
        rows_left -= rows;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
