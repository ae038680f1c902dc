//! `EstimateError`: every way reading a model folder can fail, each naming the file.
use std::path::PathBuf;

/// A model folder that cannot be estimated. Every message names the file and the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EstimateError {
    /// The model path does not exist or is not a directory.
    #[error("{path}: not a model directory: {reason}")]
    NotADirectory {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file could not be read (permissions, I/O error, symlink loop).
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// `config.json` is missing.
    #[error("{path}: missing config.json (every model folder needs one)")]
    MissingConfig {
        /// Where it was expected.
        path: PathBuf,
    },
    /// A JSON file is not valid JSON, or not the shape expected.
    #[error("{path}: invalid JSON: {reason}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A required config field is missing or has the wrong type.
    #[error("{path}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is missing or contradictory.
        reason: String,
    },
    /// A safetensors file is a Git LFS pointer, not the weights.
    #[error("{path}: is a Git LFS pointer ({size} bytes of real weights were never downloaded; run `git lfs pull`)")]
    LfsPointer {
        /// The shard.
        path: PathBuf,
        /// The size the pointer names, as text (may be "unknown").
        size: String,
    },
    /// A safetensors header is malformed.
    #[error("{path}: bad safetensors header: {reason}")]
    Header {
        /// The shard.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The model index names a shard that is not there.
    #[error("{path}: index names shard `{shard}`, which is missing from the folder")]
    MissingShard {
        /// The index file.
        path: PathBuf,
        /// The missing shard's file name.
        shard: String,
    },
    /// The folder has metadata but no `*.safetensors` weights to load.
    #[error("{path}: no *.safetensors weights in the folder (only metadata); nothing to load")]
    NoWeights {
        /// The model folder.
        path: PathBuf,
    },
    /// A file is not a regular file, is over its size cap, or cannot be opened.
    #[error(transparent)]
    File(#[from] crate::fsread::FileError),
    /// A number in a model file is outside its plausible range.
    #[error("{path}: {source}")]
    Implausible {
        /// The file.
        path: PathBuf,
        /// The field, the value and the range accepted.
        #[source]
        source: crate::limits::Implausible,
    },
    /// A GGUF file is malformed, truncated, or describes something not supported.
    #[error("{path}: bad GGUF file: {reason}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl EstimateError {
    /// The file the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            EstimateError::NotADirectory { path, .. }
            | EstimateError::Io { path, .. }
            | EstimateError::MissingConfig { path }
            | EstimateError::Json { path, .. }
            | EstimateError::Config { path, .. }
            | EstimateError::LfsPointer { path, .. }
            | EstimateError::Header { path, .. }
            | EstimateError::MissingShard { path, .. }
            | EstimateError::Implausible { path, .. }
            | EstimateError::NoWeights { path }
            | EstimateError::Gguf { path, .. } => path,
            EstimateError::File(e) => e.path(),
        }
    }
}
