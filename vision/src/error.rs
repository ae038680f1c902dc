//! The image processor's errors: each names the file (or the input) and what is wrong.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {bytes} bytes is over the image file cap of {cap} bytes", path.display())]
    FileTooLarge { path: PathBuf, bytes: u64, cap: u64 },
    #[error("{}: not a PNG or JPEG image ({reason})", path.display())]
    NotAnImage { path: PathBuf, reason: String },
    #[error(
        "{}: {width}x{height} is {pixels} pixels, over the decode cap of {cap} pixels \
         (refused before decoding)",
        path.display(),
        pixels = u64::from(*width) * u64::from(*height)
    )]
    TooManyPixels {
        path: PathBuf,
        width: u32,
        height: u32,
        cap: u64,
    },
    #[error("{}: cannot decode: {reason}", path.display())]
    Decode { path: PathBuf, reason: String },
    #[error("{}: {width}x{height}: {reason}", path.display())]
    Geometry {
        path: PathBuf,
        width: u32,
        height: u32,
        reason: String,
    },
    #[error("{}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },
}
