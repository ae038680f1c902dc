//! `TextError`: a tokenizer or template that cannot be loaded or used, naming the file.
use protocol::{WorkerError, WorkerErrorKind};

/// Whether the model's files are at fault or the request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextErrorKind {
    /// A file of the model is missing, unreadable or malformed.
    Load,
    /// The request cannot be served (no chat template, the template refuses it).
    Request,
}

/// A text-side failure; the message names the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TextError {
    /// Whose fault it is.
    pub kind: TextErrorKind,
    /// What went wrong, naming the file.
    pub message: String,
}

impl TextError {
    /// A model file that cannot be loaded.
    pub fn load(message: impl Into<String>) -> TextError {
        TextError {
            kind: TextErrorKind::Load,
            message: message.into(),
        }
    }

    /// A request that cannot be served.
    pub fn request(message: impl Into<String>) -> TextError {
        TextError {
            kind: TextErrorKind::Request,
            message: message.into(),
        }
    }
}

impl From<estimate::FileError> for TextError {
    fn from(e: estimate::FileError) -> TextError {
        TextError::load(e.to_string())
    }
}

impl From<estimate::EstimateError> for TextError {
    fn from(e: estimate::EstimateError) -> TextError {
        TextError::load(e.to_string())
    }
}

impl From<TextError> for WorkerError {
    fn from(e: TextError) -> WorkerError {
        WorkerError {
            kind: match e.kind {
                TextErrorKind::Load => WorkerErrorKind::LoadFailed,
                TextErrorKind::Request => WorkerErrorKind::BadRequest,
            },
            message: e.message,
        }
    }
}
