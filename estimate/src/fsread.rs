//! Reading a model's files safely: regular files only (symlinks to one are followed),
//! opened so that a FIFO or a device can never block, and never more than a cap.
//!
//! Every file mlxsup reads — config, index, shard headers, tokenizer files, generation
//! config, chat templates, prompt files — goes through [`open_regular`] or
//! [`read_capped`]. The path is stat'ed first (a FIFO is refused without being opened),
//! then opened with `O_NONBLOCK` (so a FIFO swapped in between the two cannot block
//! either) and stat'ed again through the descriptor, which is what is trusted.
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Largest `config.json` or `generation_config.json` accepted (real ones are kilobytes;
/// a JSON tree takes up to ~20× its text in memory, so this also bounds the parse).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Largest `model.safetensors.index.json` accepted (the largest real ones are ~30 MB).
pub const MAX_INDEX_BYTES: u64 = 48 << 20;
/// Largest `tokenizer.json` accepted (the largest real ones are about 35 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;
/// Largest `tokenizer_config.json` accepted (it can embed long chat templates and
/// thousands of added tokens; real ones are at most a few MB).
pub const MAX_TOKENIZER_CONFIG_BYTES: u64 = 8 << 20;
/// Largest `chat_template.jinja` accepted.
pub const MAX_TEMPLATE_BYTES: u64 = 1 << 20;
/// Largest prompt file accepted.
pub const MAX_PROMPT_BYTES: u64 = 16 << 20;

/// A file that cannot be read; every message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Nothing is there (or a symlink dangles).
    #[error("{path}: {what} is missing")]
    Missing {
        /// The path.
        path: PathBuf,
        /// What the file is for (`config.json`, "the prompt file").
        what: String,
    },
    /// It is a directory, a FIFO, a socket or a device.
    #[error("{path}: {what} is a {kind}, not a regular file")]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What the file is for.
        what: String,
        /// What it is instead.
        kind: &'static str,
    },
    /// It is larger than the cap for its kind.
    #[error("{path}: {what} is {size} bytes, over the {cap}-byte limit")]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// What the file is for.
        what: String,
        /// Its size (or the bytes read before the cap was passed).
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// It is not UTF-8 text.
    #[error("{path}: {what} is not UTF-8 text")]
    NotUtf8 {
        /// The path.
        path: PathBuf,
        /// What the file is for.
        what: String,
    },
    /// The operating system refused (permissions, symlink loop, I/O error).
    #[error("{path}: cannot read {what}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What the file is for.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl FileError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            FileError::Missing { path, .. }
            | FileError::NotRegular { path, .. }
            | FileError::TooLarge { path, .. }
            | FileError::NotUtf8 { path, .. }
            | FileError::Io { path, .. } => path,
        }
    }
}

/// The name of a file type that is not a regular file.
fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

fn io_error(path: &Path, what: &str, source: std::io::Error) -> FileError {
    if source.kind() == std::io::ErrorKind::NotFound {
        FileError::Missing {
            path: path.to_path_buf(),
            what: what.to_string(),
        }
    } else {
        FileError::Io {
            path: path.to_path_buf(),
            what: what.to_string(),
            source,
        }
    }
}

/// Stats `path` (following symlinks) and checks it is a regular file, without opening it.
pub fn check_regular(path: &Path, what: &str) -> Result<Metadata, FileError> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, what, e))?;
    if meta.is_file() {
        Ok(meta)
    } else {
        Err(FileError::NotRegular {
            path: path.to_path_buf(),
            what: what.to_string(),
            kind: kind_of(&meta),
        })
    }
}

/// Opens a regular file for reading without ever blocking; returns it and its length.
pub fn open_regular(path: &Path, what: &str) -> Result<(File, u64), FileError> {
    check_regular(path, what)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| io_error(path, what, e))?;
    // The descriptor is what gets read: check it too (the path may have been swapped).
    let meta = file.metadata().map_err(|e| io_error(path, what, e))?;
    if !meta.is_file() {
        return Err(FileError::NotRegular {
            path: path.to_path_buf(),
            what: what.to_string(),
            kind: kind_of(&meta),
        });
    }
    Ok((file, meta.len()))
}

/// Reads a whole regular file of at most `cap` bytes.
pub fn read_capped(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>, FileError> {
    let (file, len) = open_regular(path, what)?;
    let too_large = |size| FileError::TooLarge {
        path: path.to_path_buf(),
        what: what.to_string(),
        size,
        cap,
    };
    if len > cap {
        return Err(too_large(len));
    }
    // `len <= cap`; the file may still grow while it is read, hence the `take`.
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| io_error(path, what, e))?;
    let got = buf.len() as u64;
    if got > cap {
        return Err(too_large(got));
    }
    Ok(buf)
}

/// Reads a whole regular UTF-8 text file of at most `cap` bytes.
pub fn read_capped_string(path: &Path, cap: u64, what: &str) -> Result<String, FileError> {
    String::from_utf8(read_capped(path, cap, what)?).map_err(|_| FileError::NotUtf8 {
        path: path.to_path_buf(),
        what: what.to_string(),
    })
}

/// Whether anything (even a dangling symlink) is at `path`.
pub fn present(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn reads_a_regular_file_and_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.json");
        std::fs::write(&f, b"{}").unwrap();
        let l = d.path().join("link.json");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        assert_eq!(read_capped(&f, 10, "x").unwrap(), b"{}");
        assert_eq!(read_capped_string(&l, 10, "x").unwrap(), "{}");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.json");
        mkfifo(&p);
        let t = Instant::now();
        let e = read_capped(&p, 10, "config.json").unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(e, FileError::NotRegular { kind: "FIFO", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("config.json is a FIFO"), "{e}");
        // A symlink to a FIFO is a FIFO.
        let l = d.path().join("l");
        std::os::unix::fs::symlink(&p, &l).unwrap();
        assert!(matches!(
            open_regular(&l, "x"),
            Err(FileError::NotRegular { kind: "FIFO", .. })
        ));
    }

    #[test]
    fn devices_directories_and_missing_files_are_named() {
        let e = read_capped(Path::new("/dev/zero"), 10, "the prompt file").unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let e = read_capped(d.path(), 10, "tokenizer.json").unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let e = read_capped(&d.path().join("nope"), 10, "tokenizer.json").unwrap_err();
        assert!(matches!(e, FileError::Missing { .. }), "{e}");
        let l = d.path().join("dangling");
        std::os::unix::fs::symlink(d.path().join("gone"), &l).unwrap();
        assert!(present(&l));
        assert!(matches!(
            read_capped(&l, 1, "x"),
            Err(FileError::Missing { .. })
        ));
    }

    #[test]
    fn the_cap_is_checked_before_reading() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("big");
        let file = File::create(&f).unwrap();
        // Sparse: 1 TB that is never read.
        file.set_len(1 << 40).unwrap();
        let e = read_capped(&f, 1 << 20, "tokenizer.json").unwrap_err();
        assert!(
            e.to_string()
                .contains("1099511627776 bytes, over the 1048576-byte limit"),
            "{e}"
        );
        std::fs::write(&f, b"12345").unwrap();
        assert!(read_capped(&f, 5, "x").is_ok());
        assert!(matches!(
            read_capped(&f, 4, "x"),
            Err(FileError::TooLarge {
                size: 5,
                cap: 4,
                ..
            })
        ));
    }

    #[test]
    fn bad_utf8_is_named() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("t");
        std::fs::write(&f, [0xff, 0xfe]).unwrap();
        assert!(matches!(
            read_capped_string(&f, 10, "x"),
            Err(FileError::NotUtf8 { .. })
        ));
    }
}
