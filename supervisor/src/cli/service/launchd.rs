//! The launchd LaunchAgent: `~/Library/LaunchAgents/com.mlxsup.daemon.plist`, `KeepAlive`
//! with `SuccessfulExit=false` (restarted after any exit but a clean one, SIGKILL by
//! jetsam included), logs under `~/Library/Logs/mlxsup/`, bootstrapped into the user's GUI
//! domain. Rendering is plain text and tested everywhere; launchctl runs only on macOS.

use std::path::{Path, PathBuf};

/// The plist template, as shipped in the repo.
const TEMPLATE: &str = include_str!("../../../../launchd/com.mlxsup.daemon.plist");
pub const LABEL: &str = "com.mlxsup.daemon";

fn home() -> Result<PathBuf, String> {
    dirs::home_dir().ok_or_else(|| "HOME is not set".to_string())
}

pub fn plist_path() -> Result<PathBuf, String> {
    Ok(home()?
        .join("Library/LaunchAgents")
        .join(format!("{LABEL}.plist")))
}

pub fn log_dir() -> Result<PathBuf, String> {
    Ok(home()?.join("Library/Logs/mlxsup"))
}

/// Escapes text for an XML string element.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The plist for `mlxsup` at `exe`, logging into `logs`.
pub fn render(exe: &Path, logs: &Path) -> Result<String, String> {
    let exe = exe.to_str().ok_or("the mlxsup path is not UTF-8")?;
    let logs = logs.to_str().ok_or("the log path is not UTF-8")?;
    Ok(TEMPLATE
        .replace("@MLXSUP@", &xml(exe))
        .replace("@LOG_DIR@", &xml(logs)))
}

#[cfg(target_os = "macos")]
fn domain() -> String {
    format!("gui/{}", nix::unistd::getuid())
}

/// `launchctl bootstrap gui/$UID PLIST` (after a `bootout` of an older copy).
#[cfg(target_os = "macos")]
pub fn start(plist: &Path) -> Result<bool, String> {
    let _ = super::run_quiet(
        std::process::Command::new("launchctl").args(["bootout", &format!("{}/{LABEL}", domain())]),
    );
    super::run_quiet(
        std::process::Command::new("launchctl")
            .arg("bootstrap")
            .arg(domain())
            .arg(plist),
    )?;
    Ok(true)
}

#[cfg(not(target_os = "macos"))]
pub fn start(_plist: &Path) -> Result<bool, String> {
    Err("launchd exists only on macOS; this file was written but not loaded".into())
}

/// `launchctl bootout gui/$UID/com.mlxsup.daemon`.
#[cfg(target_os = "macos")]
pub fn stop(_plist: &Path) {
    let _ = super::run_quiet(
        std::process::Command::new("launchctl").args(["bootout", &format!("{}/{LABEL}", domain())]),
    );
}

#[cfg(not(target_os = "macos"))]
pub fn stop(_plist: &Path) {}
