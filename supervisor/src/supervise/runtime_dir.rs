//! The private per-user directory that holds mlxsup's sockets.
//!
//! It is created 0700; an existing one must be a real directory (not a symlink), owned by
//! this user, and not readable or writable by others, else it is refused with the reason.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Longest socket path a `sockaddr_un` holds on every platform we run on.
pub const MAX_SOCKET_PATH: usize = 103;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    #[error("{0}: cannot create the socket directory: {1}")]
    Create(PathBuf, io::Error),
    #[error("{0} is a symlink; refusing to keep sockets there")]
    Symlink(PathBuf),
    #[error("{0} is not a directory")]
    NotDir(PathBuf),
    #[error("{0} belongs to uid {1}, not to this user ({2})")]
    Owner(PathBuf, u32, u32),
    #[error("{0} has mode {1:o}; it must not be accessible to others (chmod 700)")]
    Mode(PathBuf, u32),
    #[error("socket path {0} is longer than {MAX_SOCKET_PATH} bytes; set MLXSUP_RUNTIME_DIR to a shorter directory")]
    TooLong(PathBuf),
}

/// `MLXSUP_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/mlxsup`, else `$TMPDIR/mlxsup-<uid>`.
pub fn default_path() -> PathBuf {
    if let Some(d) = std::env::var_os("MLXSUP_RUNTIME_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Path::new(&d).join("mlxsup");
    }
    std::env::temp_dir().join(format!("mlxsup-{}", nix::unistd::getuid()))
}

/// Creates (or checks) the directory.
pub fn ensure(dir: &Path) -> Result<PathBuf, RuntimeDirError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| RuntimeDirError::Create(dir.into(), e))?;
        }
        Err(e) => return Err(RuntimeDirError::Create(dir.into(), e)),
        Ok(_) => {}
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| RuntimeDirError::Create(dir.into(), e))?;
    if meta.file_type().is_symlink() {
        return Err(RuntimeDirError::Symlink(dir.into()));
    }
    if !meta.is_dir() {
        return Err(RuntimeDirError::NotDir(dir.into()));
    }
    let uid = nix::unistd::getuid().as_raw();
    if meta.uid() != uid {
        return Err(RuntimeDirError::Owner(dir.into(), meta.uid(), uid));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(RuntimeDirError::Mode(dir.into(), mode));
    }
    Ok(dir.to_path_buf())
}

/// A socket path inside `dir`, checked for length.
pub fn socket_path(dir: &Path, name: &str) -> Result<PathBuf, RuntimeDirError> {
    let p = dir.join(name);
    if p.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(RuntimeDirError::TooLong(p));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_dir_and_refuses_loose_ones() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let d = tmp.path().join("rt");
        ensure(&d)?;
        assert_eq!(fs::metadata(&d)?.permissions().mode() & 0o777, 0o700);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755))?;
        assert!(matches!(ensure(&d), Err(RuntimeDirError::Mode(_, 0o755))));
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&d, &link)?;
        assert!(matches!(ensure(&link), Err(RuntimeDirError::Symlink(_))));
        let file = tmp.path().join("file");
        fs::write(&file, b"")?;
        assert!(matches!(ensure(&file), Err(RuntimeDirError::NotDir(_))));
        let long = "x".repeat(120);
        assert!(matches!(
            socket_path(&d, &long),
            Err(RuntimeDirError::TooLong(_))
        ));
        Ok(())
    }
}
