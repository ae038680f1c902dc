//! `mlxsup service install | uninstall | status`: the daemon as a per-user background
//! service — a launchd LaunchAgent on macOS ([`launchd`]), a `systemd --user` unit on
//! Linux ([`systemd`]). The files written are the repo's templates
//! (`launchd/com.mlxsup.daemon.plist`, `systemd/mlxsup.service`) with the paths filled in.

pub mod launchd;
pub mod systemd;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{daemon, exit::Exit};

#[derive(clap::Args, Clone, Debug)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum Action {
    /// Write the service file and start the daemon at login (and now).
    Install(InstallArgs),
    /// Stop the daemon and remove the service file.
    Uninstall(KindArgs),
    /// Whether the service is installed and the daemon answers.
    Status(KindArgs),
}

#[derive(clap::Args, Clone, Debug)]
pub struct InstallArgs {
    /// Print the file that would be written, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write the file but do not ask the service manager to start it.
    #[arg(long)]
    pub no_start: bool,
    #[command(flatten)]
    pub kind: KindArgs,
}

#[derive(clap::Args, Clone, Debug)]
pub struct KindArgs {
    /// Tests: the service manager to write for [default: this platform's].
    #[arg(long, hide = true, value_enum)]
    pub manager: Option<Manager>,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A service manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Manager {
    Launchd,
    Systemd,
}

impl Manager {
    fn native() -> Manager {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        }
    }

    /// Where the service file goes.
    fn path(self) -> Result<PathBuf, String> {
        match self {
            Manager::Launchd => launchd::plist_path(),
            Manager::Systemd => systemd::unit_path(),
        }
    }

    /// The service file for `mlxsup` at `exe`.
    fn render(self, exe: &Path) -> Result<String, String> {
        match self {
            Manager::Launchd => launchd::render(exe, &launchd::log_dir()?),
            Manager::Systemd => Ok(systemd::render(exe)),
        }
    }
}

fn this_exe() -> Result<PathBuf, String> {
    std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| format!("cannot tell where this mlxsup binary is: {e}"))
}

pub fn main(args: ServiceArgs) -> Exit {
    let result = match args.action {
        Action::Install(a) => install(&a),
        Action::Uninstall(k) => uninstall(&k),
        Action::Status(k) => status(&k),
    };
    match result {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("mlxsup service: {e}");
            Exit::Internal
        }
    }
}

fn install(a: &InstallArgs) -> Result<Exit, String> {
    let manager = a.kind.manager.unwrap_or_else(Manager::native);
    let exe = this_exe()?;
    let text = manager.render(&exe)?;
    if a.dry_run {
        print!("{text}");
        return Ok(Exit::Ok);
    }
    let path = manager.path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    if manager == Manager::Launchd {
        let logs = launchd::log_dir()?;
        std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    }
    write_atomic(&path, text.as_bytes())?;
    let started = if a.no_start {
        false
    } else {
        match manager {
            Manager::Launchd => launchd::start(&path)?,
            Manager::Systemd => systemd::start()?,
        }
    };
    report(a.kind.json, &path, "installed", started);
    Ok(Exit::Ok)
}

fn uninstall(k: &KindArgs) -> Result<Exit, String> {
    let manager = k.manager.unwrap_or_else(Manager::native);
    let path = manager.path()?;
    match manager {
        Manager::Launchd => launchd::stop(&path),
        Manager::Systemd => systemd::stop(),
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    if manager == Manager::Systemd {
        let _ = run_quiet(Command::new("systemctl").args(["--user", "daemon-reload"]));
    }
    report(k.json, &path, "uninstalled", false);
    Ok(Exit::Ok)
}

fn status(k: &KindArgs) -> Result<Exit, String> {
    let manager = k.manager.unwrap_or_else(Manager::native);
    let path = manager.path()?;
    let installed = path.is_file();
    let socket = daemon::socket_path(None);
    let answering = crate::rt::block_on(async {
        match protocol::daemon_client::DaemonClient::connect(&socket).await {
            Ok(_) => Exit::Ok,
            Err(_) => Exit::Internal,
        }
    }) == Exit::Ok;
    if k.json {
        println!(
            "{}",
            serde_json::json!({
                "manager": format!("{manager:?}").to_lowercase(),
                "file": path.display().to_string(),
                "installed": installed,
                "socket": socket.display().to_string(),
                "daemon_answering": answering,
            })
        );
    } else {
        println!(
            "{}: {}; the daemon at {} {}",
            path.display(),
            if installed {
                "installed"
            } else {
                "not installed"
            },
            socket.display(),
            if answering {
                "answers"
            } else {
                "does not answer"
            }
        );
    }
    Ok(Exit::Ok)
}

fn report(json: bool, path: &Path, what: &str, started: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({ "file": path.display().to_string(), "action": what, "started": started })
        );
    } else {
        println!(
            "{what} {}{}",
            path.display(),
            if started {
                "; the daemon is starting"
            } else {
                ""
            }
        );
    }
}

/// Writes a file whole or not at all (a temporary file beside it, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| format!("{}: {}", path.display(), e.error))?;
    Ok(())
}

/// Runs a service-manager command; its failure is reported, not fatal.
fn run_quiet(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
