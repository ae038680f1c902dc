//! Names → model folders: a folder path as it is, else a name found in the `--models`
//! folders (their subfolders holding a `config.json`) or in the Hugging Face cache
//! (`models--ORG--NAME/snapshots/REV`, named `ORG/NAME`).

use std::{
    fs,
    path::{Path, PathBuf},
};

/// Where the daemon looks for models.
#[derive(Clone, Debug)]
pub struct Registry {
    dirs: Vec<PathBuf>,
    hf_cache: Option<PathBuf>,
}

impl Registry {
    pub fn new(dirs: Vec<PathBuf>, hf_cache: Option<PathBuf>) -> Registry {
        Registry { dirs, hf_cache }
    }

    /// The Hugging Face hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`.
    pub fn default_hf_cache() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
            return Some(PathBuf::from(p));
        }
        if let Some(p) = std::env::var_os("HF_HOME") {
            return Some(PathBuf::from(p).join("hub"));
        }
        dirs::home_dir().map(|h| h.join(".cache/huggingface/hub"))
    }

    /// Every model it can see: (name, folder), sorted by name.
    pub fn list(&self) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        for dir in &self.dirs {
            for entry in read_dir_sorted(dir) {
                if entry.join("config.json").is_file() {
                    if let Some(name) = entry.file_name() {
                        out.push((name.to_string_lossy().into_owned(), entry.clone()));
                    }
                }
            }
        }
        if let Some(cache) = &self.hf_cache {
            for entry in read_dir_sorted(cache) {
                let Some(repo) = entry
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix("models--"))
                else {
                    continue;
                };
                if let Some(snapshot) = hf_snapshot(&entry) {
                    out.push((repo.replacen("--", "/", 1), snapshot));
                }
            }
        }
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    /// The folder `model` names: an existing folder, or a name from [`Registry::list`]
    /// (the full name, or its last part when that is unique).
    pub fn resolve(&self, model: &str) -> Result<PathBuf, String> {
        let p = Path::new(model);
        if p.is_dir() {
            return fs::canonicalize(p).map_err(|e| format!("{model}: {e}"));
        }
        let all = self.list();
        if let Some((_, dir)) = all.iter().find(|(n, _)| n == model) {
            return canonical(dir);
        }
        let short: Vec<_> = all
            .iter()
            .filter(|(n, _)| n.rsplit('/').next() == Some(model))
            .collect();
        match short.as_slice() {
            [(_, dir)] => canonical(dir),
            [] => Err(format!(
                "unknown model `{model}`: it is not a folder, and no --models folder or the Hugging Face cache has it (`mlxsup ls` lists what the daemon sees)"
            )),
            many => Err(format!(
                "`{model}` is ambiguous: {}",
                many.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
            )),
        }
    }

    /// The name `ls` shows for a folder.
    pub fn name_of(&self, dir: &Path) -> String {
        self.list()
            .into_iter()
            .find(|(_, d)| fs::canonicalize(d).is_ok_and(|d| d == dir))
            .map(|(n, _)| n)
            .unwrap_or_else(|| {
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| dir.display().to_string())
            })
    }
}

fn canonical(dir: &Path) -> Result<PathBuf, String> {
    fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The snapshot `refs/main` names, else the newest one holding a `config.json`.
fn hf_snapshot(repo: &Path) -> Option<PathBuf> {
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = fs::read_to_string(repo.join("refs/main")) {
        let dir = snapshots.join(rev.trim());
        if dir.join("config.json").is_file() {
            return Some(dir);
        }
    }
    read_dir_sorted(&snapshots)
        .into_iter()
        .filter(|d| d.join("config.json").is_file())
        .max_by_key(|d| fs::metadata(d).and_then(|m| m.modified()).ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn folders_and_the_hugging_face_cache() {
        let root = tempfile::tempdir().unwrap();
        let models = root.path().join("models");
        fs::create_dir_all(models.join("tiny-llama")).unwrap();
        fs::write(models.join("tiny-llama/config.json"), "{}").unwrap();
        fs::create_dir_all(models.join("not-a-model")).unwrap();
        let hub = root.path().join("hub");
        let snap = hub.join("models--mlx-community--Qwen3-0.6B-bf16/snapshots/abc123");
        fs::create_dir_all(&snap).unwrap();
        fs::write(snap.join("config.json"), "{}").unwrap();
        fs::create_dir_all(hub.join("models--mlx-community--Qwen3-0.6B-bf16/refs")).unwrap();
        fs::write(
            hub.join("models--mlx-community--Qwen3-0.6B-bf16/refs/main"),
            "abc123\n",
        )
        .unwrap();
        let r = Registry::new(vec![models.clone()], Some(hub));
        let names: Vec<String> = r.list().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["mlx-community/Qwen3-0.6B-bf16", "tiny-llama"]);
        let snap = fs::canonicalize(snap).unwrap();
        let tiny = fs::canonicalize(models.join("tiny-llama")).unwrap();
        assert_eq!(r.resolve("tiny-llama").unwrap(), tiny);
        assert_eq!(r.resolve("Qwen3-0.6B-bf16").unwrap(), snap);
        assert_eq!(r.resolve("mlx-community/Qwen3-0.6B-bf16").unwrap(), snap);
        let err = r.resolve("nope").unwrap_err();
        assert!(err.contains("unknown model `nope`"), "{err}");
        let folder = r
            .resolve(models.join("tiny-llama").to_str().unwrap())
            .unwrap();
        assert_eq!(folder, fs::canonicalize(models.join("tiny-llama")).unwrap());
    }
}
