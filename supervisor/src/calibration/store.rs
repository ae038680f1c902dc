//! The calibration store's file: `calibration.json` in the user's data dir (macOS
//! `~/Library/Application Support/mlxsup/`, elsewhere `$XDG_DATA_HOME/mlxsup/`, i.e.
//! `~/.local/share/mlxsup/`), or the file `MLXSUP_CALIBRATION` names (`off`: none).
//!
//! A small versioned JSON file, bounded to [`MAX_RECORDS`] (the oldest go first).
//! Writers take an exclusive lock on `calibration.lock` beside it (flock(2), as the daemon's pidfile), read, append,
//! write a temporary file in the same folder, fsync it, rename it over the store
//! (tempfile's `persist`) and fsync the folder: a reader sees the old file or the new
//! one, never half of one, and two processes recording at once lose no record. A file
//! that cannot be parsed is renamed aside (`calibration.json.corrupt-<time>`) with a
//! warning, and the store starts afresh.
use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::record::Record;

/// The file format's version.
pub const FORMAT_VERSION: u32 = 1;

/// Records kept at most.
pub const MAX_RECORDS: usize = 2000;

/// The store's file name.
pub const FILE_NAME: &str = "calibration.json";

#[derive(Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    records: Vec<Record>,
}

/// The calibration store at one path.
#[derive(Clone, Debug)]
pub struct Store {
    path: PathBuf,
}

/// The user's data dir for mlxsup.
#[cfg(target_os = "macos")]
fn data_dir() -> Option<PathBuf> {
    dirs::home_dir().map(|h| h.join("Library/Application Support/mlxsup"))
}

/// The user's data dir for mlxsup.
#[cfg(not(target_os = "macos"))]
fn data_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| dirs::home_dir().map(|h| h.join(".local/share")))
        .map(|d| d.join("mlxsup"))
}

impl Store {
    /// The store at `path`.
    pub fn at(path: PathBuf) -> Store {
        Store { path }
    }

    /// The user's store, or `None` when `MLXSUP_CALIBRATION=off` or no data dir exists.
    pub fn default_store() -> Option<Store> {
        match std::env::var_os("MLXSUP_CALIBRATION") {
            Some(v) if v == "off" => None,
            Some(v) if !v.is_empty() => Some(Store::at(PathBuf::from(v))),
            _ => data_dir().map(|d| Store::at(d.join(FILE_NAME))),
        }
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock_path(&self) -> PathBuf {
        self.path.with_extension("lock")
    }

    /// Every record; warnings for a file set aside. A missing file is an empty store.
    pub fn load(&self) -> (Vec<Record>, Vec<String>) {
        let mut warnings = Vec::new();
        match self.read(&mut warnings) {
            Ok(r) => (r, warnings),
            Err(e) => {
                warnings.push(e);
                (Vec::new(), warnings)
            }
        }
    }

    /// Reads the records; a corrupt file is set aside (under the lock) with a warning.
    fn read(&self, warnings: &mut Vec<String>) -> Result<Vec<Record>, String> {
        let text = match estimate::read_capped_string(&self.path, 64 << 20, "calibration store") {
            Ok(t) => t,
            Err(_) if !self.path.exists() => return Ok(Vec::new()),
            Err(e) => {
                return Err(format!(
                    "the calibration store {} cannot be read ({e}); using the built-in calibration",
                    self.path.display()
                ))
            }
        };
        match parse(&text) {
            Ok(r) => Ok(r),
            Err(Parse::Newer(v)) => Err(newer(&self.path, v)),
            Err(Parse::Corrupt(why)) => {
                let _lock = self.lock()?;
                // Another process may have replaced it meanwhile: look again, locked.
                let again = fs::read_to_string(&self.path).unwrap_or_default();
                match parse(&again) {
                    Ok(r) => return Ok(r),
                    Err(Parse::Newer(v)) => return Err(newer(&self.path, v)),
                    Err(Parse::Corrupt(_)) => {}
                }
                warnings.push(self.set_aside(&why));
                Ok(Vec::new())
            }
        }
    }

    fn set_aside(&self, why: &str) -> String {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let aside = self
            .path
            .with_file_name(format!("{FILE_NAME}.corrupt-{stamp}"));
        match fs::rename(&self.path, &aside) {
            Ok(()) => format!(
                "the calibration store {} is corrupt ({why}); set aside as {}, starting afresh",
                self.path.display(),
                aside.display()
            ),
            Err(e) => format!(
                "the calibration store {} is corrupt ({why}) and cannot be set aside ({e}); using the built-in calibration",
                self.path.display()
            ),
        }
    }

    fn lock(&self) -> Result<Flock<File>, String> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let lock = self.lock_path();
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|e| format!("cannot open {}: {e}", lock.display()))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| format!("cannot lock {}: {e}", lock.display()))
    }

    /// Appends `record` (dropping the oldest beyond [`MAX_RECORDS`]); warnings for a
    /// file set aside. The error is for a person.
    pub fn append(&self, record: Record) -> Result<Vec<String>, String> {
        let _lock = self.lock()?;
        let mut warnings = Vec::new();
        let mut records = match fs::read_to_string(&self.path) {
            Ok(text) => match parse(&text) {
                Ok(r) => r,
                Err(Parse::Newer(v)) => return Err(newer(&self.path, v)),
                Err(Parse::Corrupt(why)) => {
                    warnings.push(self.set_aside(&why));
                    Vec::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        records.push(record);
        // Tests: hold the lock between the read and the write, so that processes
        // recording at once overlap (without the lock, all but one record would be lost).
        if let Some(ms) = std::env::var("MLXSUP_TEST_STORE_HOLD_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms.min(5_000)));
        }
        if records.len() > MAX_RECORDS {
            let extra = records.len() - MAX_RECORDS;
            records.drain(..extra);
        }
        self.write(&records)?;
        Ok(warnings)
    }

    /// Writes atomically: a temporary file in the same folder, fsync, rename, fsync dir.
    fn write(&self, records: &[Record]) -> Result<(), String> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let text = serde_json::to_string(&StoreFile {
            version: FORMAT_VERSION,
            records: records.to_vec(),
        })
        .map_err(|e| e.to_string())?;
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", self.path.display());
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
        tmp.write_all(text.as_bytes()).map_err(fail)?;
        tmp.as_file().sync_all().map_err(fail)?;
        tmp.persist(&self.path).map_err(|e| fail(e.error))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

enum Parse {
    /// Written by a newer mlxsup: left alone.
    Newer(u32),
    Corrupt(String),
}

fn newer(path: &Path, v: u32) -> String {
    format!(
        "the calibration store {} has format version {v}, newer than this build's {FORMAT_VERSION}; left as it is, using the built-in calibration",
        path.display()
    )
}

fn parse(text: &str) -> Result<Vec<Record>, Parse> {
    #[derive(Deserialize)]
    struct Head {
        version: u32,
    }
    if let Ok(h) = serde_json::from_str::<Head>(text) {
        if h.version > FORMAT_VERSION {
            return Err(Parse::Newer(h.version));
        }
    }
    let f: StoreFile = serde_json::from_str(text).map_err(|e| Parse::Corrupt(e.to_string()))?;
    if f.version != FORMAT_VERSION {
        return Err(Parse::Corrupt(format!("format version {}", f.version)));
    }
    Ok(f.records)
}
