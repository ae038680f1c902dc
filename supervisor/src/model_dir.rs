//! Model folders written whole (`make-model`, `import`): built in a temporary folder
//! beside their place, then moved in.

use std::path::Path;

use crate::exit::Exit;

/// Moves a model folder written in a temporary folder beside `dir` into place (an empty
/// `dir` is replaced): a reader sees the whole folder or none of it.
pub fn move_into_place(tmp: tempfile::TempDir, dir: &Path) -> Result<(), (Exit, String)> {
    let _ = std::fs::remove_dir(dir);
    let kept = tmp.keep();
    std::fs::rename(&kept, dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&kept);
        (
            Exit::Internal,
            format!("cannot move the model into {}: {e}", dir.display()),
        )
    })
}
