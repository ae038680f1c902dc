//! The `systemd --user` unit: `~/.config/systemd/user/mlxsup.service`, `Type=notify`
//! (the daemon sends `READY=1` once its socket accepts), `Restart=on-failure`.

use std::path::{Path, PathBuf};

use super::run_quiet;

/// The unit template, as shipped in the repo.
const TEMPLATE: &str = include_str!("../../../../systemd/mlxsup.service");
pub const UNIT: &str = "mlxsup.service";

/// `$XDG_CONFIG_HOME/systemd/user/mlxsup.service` (default `~/.config`).
pub fn unit_path() -> Result<PathBuf, String> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".config")))
        .ok_or("neither XDG_CONFIG_HOME nor HOME is set")?;
    Ok(config.join("systemd/user").join(UNIT))
}

/// The unit for `mlxsup` at `exe`. systemd splits `ExecStart` on spaces, so a path with
/// spaces is quoted.
pub fn render(exe: &Path) -> String {
    let exe = exe.display().to_string();
    let exe = if exe.contains(char::is_whitespace) {
        format!("\"{}\"", exe.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        exe
    };
    TEMPLATE.replace("@MLXSUP@", &exe)
}

/// Reloads the user manager and enables and starts the unit. Without a user manager
/// (a container, a session without systemd), says what to run instead.
pub fn start() -> Result<bool, String> {
    let reload =
        run_quiet(std::process::Command::new("systemctl").args(["--user", "daemon-reload"]));
    if let Err(e) = reload {
        eprintln!("mlxsup service: no systemd user manager answers ({e}); start it later with `systemctl --user enable --now {UNIT}`, or run `mlxsup serve` yourself");
        return Ok(false);
    }
    run_quiet(std::process::Command::new("systemctl").args(["--user", "enable", "--now", UNIT]))?;
    Ok(true)
}

/// Stops and disables the unit, if a user manager answers.
pub fn stop() {
    let _ = run_quiet(
        std::process::Command::new("systemctl").args(["--user", "disable", "--now", UNIT]),
    );
}
