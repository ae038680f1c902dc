//! The daemon as a service, tested for real where this machine can: the systemd unit
//! `install` writes passes `systemd-analyze verify`, the LaunchAgent plist parses with
//! Python's `plistlib` and names the right binary and keys, and `READY=1` arrives on a
//! notify socket the test creates, once the daemon's socket accepts.
#![allow(clippy::unwrap_used)]

use std::{
    os::unix::net::{UnixDatagram, UnixStream},
    process::{Command, Stdio},
    time::Duration,
};

use mlxsup_tests::bin;

fn mlxsup_in(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("mlxsup"))
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("MLXSUP_RUNTIME_DIR", home.join("rt"))
        .env("MLXSUP_SOCKET", home.join("rt/none.sock"))
        .output()
        .unwrap()
}

#[test]
fn the_systemd_unit_verifies_and_names_this_binary() {
    let home = tempfile::tempdir().unwrap();
    let out = mlxsup_in(
        home.path(),
        &[
            "service",
            "install",
            "--manager",
            "systemd",
            "--no-start",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let unit = home.path().join("config/systemd/user/mlxsup.service");
    assert_eq!(v["file"], unit.display().to_string());
    let text = std::fs::read_to_string(&unit).unwrap();
    let exe = std::fs::canonicalize(bin("mlxsup")).unwrap();
    assert!(
        text.contains(&format!("ExecStart={} serve", exe.display())),
        "{text}"
    );
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "WantedBy=default.target",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package; make setup installs it)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success(), "systemd-analyze verify: {report}");
    assert!(
        !report.contains("mlxsup.service"),
        "warnings about the unit: {report}"
    );
    // Uninstall removes it (no user manager here: nothing to stop).
    let out = mlxsup_in(
        home.path(),
        &["service", "uninstall", "--manager", "systemd"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!unit.exists());
}

#[test]
fn the_launch_agent_plist_parses_and_keeps_the_daemon_alive() {
    let home = tempfile::tempdir().unwrap();
    let out = mlxsup_in(
        home.path(),
        &["service", "install", "--manager", "launchd", "--dry-run"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = r#"
import plistlib, sys, json
p = plistlib.loads(sys.stdin.buffer.read())
print(json.dumps(p))
"#;
    let mut py = Command::new("python3")
        .args(["-c", check])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    py.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let parsed = py.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "plistlib: {}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let p: serde_json::Value = serde_json::from_slice(&parsed.stdout).unwrap();
    let exe = std::fs::canonicalize(bin("mlxsup")).unwrap();
    assert_eq!(p["Label"], "com.mlxsup.daemon");
    assert_eq!(p["ProgramArguments"][0], exe.display().to_string());
    assert_eq!(p["ProgramArguments"][1], "serve");
    assert_eq!(p["KeepAlive"]["SuccessfulExit"], false);
    assert!(p["ThrottleInterval"].as_u64().is_some_and(|t| t >= 1));
    assert_eq!(p["RunAtLoad"], true);
    let logs = home.path().join("Library/Logs/mlxsup");
    assert!(
        p["StandardErrorPath"]
            .as_str()
            .unwrap()
            .starts_with(logs.to_str().unwrap()),
        "{p:#}"
    );
}

#[test]
fn ready_1_arrives_once_the_socket_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let rx = UnixDatagram::bind(&notify).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let socket = dir.path().join("rt/mlxsup.sock");
    let mut daemon = Command::new(bin("mlxsup"))
        .args(["serve", "--socket", socket.to_str().unwrap()])
        .env("MLXSUP_RUNTIME_DIR", dir.path().join("rt"))
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = rx.recv(&mut buf).expect("no READY=1 within 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    // Ready means ready: the socket accepts at once.
    assert!(UnixStream::connect(&socket).is_ok());
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    let n = rx.recv(&mut buf).expect("no STOPPING=1");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}
