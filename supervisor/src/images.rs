//! `run --image FILE…`: the images read, decoded (size capped before decoding) and
//! resized to the model's processor size by the `vision` crate, here in the supervisor,
//! so that a hostile file never reaches the worker; what the worker gets is the resized
//! 8-bit RGB ([`protocol::ImageInput`]). `generate --image` reads them the same way, for the
//! daemon, and so does the daemon's HTTP front.

use std::path::{Path, PathBuf};

use protocol::ImageInput;
use vision::ProcessorConfig;

/// The most RGB bytes of images one request carries: the worker protocol's frame less a
/// margin for the rest of the request (16 MiB − 1 MiB: about 5 MP in all).
pub const MAX_IMAGE_BYTES: usize = protocol::frame::MAX_FRAME - (1 << 20);

/// Images of one prompt, ready for the worker and the preflight.
pub struct Images {
    pub inputs: Vec<ImageInput>,
    /// Each image's tokens (merged units).
    pub tokens: Vec<u64>,
    /// The largest processed size (width, height), by pixels: the size the preflight
    /// plans every image at (the estimator plans one size; the largest covers the rest).
    pub largest: Option<(u32, u32)>,
}

/// Why images could not be used.
pub enum ImagesError {
    /// The model folder's processor settings are unreadable.
    Model(String),
    /// An image file (or their total) cannot be used; the message names the file.
    Image(String),
}

/// Reads `files` for the model in `dir`; every image belongs to chat message `message`.
pub fn read(dir: &Path, files: &[PathBuf], message: u32) -> Result<Images, ImagesError> {
    let cfg = ProcessorConfig::from_model_dir(dir)
        .map_err(|e| ImagesError::Model(format!("mlxsup: cannot read model: {e}")))?;
    let mut inputs = Vec::with_capacity(files.len());
    let mut tokens = Vec::with_capacity(files.len());
    let mut total = 0usize;
    let mut largest: Option<(u32, u32)> = None;
    for f in files {
        let img = vision::decode_file(f).map_err(|e| ImagesError::Image(format!("mlxsup: {e}")))?;
        let resized = vision::resize_for_model(&img, &cfg).map_err(|reason| {
            ImagesError::Image(format!(
                "mlxsup: {}: {}x{}: {reason}",
                f.display(),
                img.width,
                img.height
            ))
        })?;
        drop(img);
        total = total.saturating_add(resized.data.len());
        if total > MAX_IMAGE_BYTES {
            return Err(ImagesError::Image(format!(
                "mlxsup: {}: the images come to {total} bytes of RGB at the model's processed sizes, over the {MAX_IMAGE_BYTES} one request carries; use fewer or smaller images",
                f.display()
            )));
        }
        let (w, h) = (resized.width, resized.height);
        let unit = u64::from(cfg.factor()) * u64::from(cfg.factor());
        tokens.push(u64::from(w) * u64::from(h) / unit.max(1));
        if largest
            .is_none_or(|(lw, lh)| u64::from(w) * u64::from(h) > u64::from(lw) * u64::from(lh))
        {
            largest = Some((w, h));
        }
        inputs.push(ImageInput {
            message,
            width: w,
            height: h,
            rgb: resized.data,
        });
    }
    Ok(Images {
        inputs,
        tokens,
        largest,
    })
}
