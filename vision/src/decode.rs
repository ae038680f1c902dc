//! Decoding a PNG or JPEG into 8-bit RGB the way Pillow's `convert("RGB")` does, with the
//! file size and the pixel count checked from the header before any pixel is decoded.
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, ImageReader, Limits};

use crate::error::ImageError;

/// The largest image file read (100 MiB).
pub const MAX_FILE_BYTES: u64 = 100 << 20;
/// The most pixels decoded (50 megapixels, e.g. 8660×5773): the header's width × height is
/// checked against it before decoding, so a hostile header cannot make a huge allocation.
/// Decoded as 8-bit RGB that is at most 150 MB.
pub const MAX_PIXELS: u64 = 50_000_000;

/// An 8-bit RGB image, rows top to bottom, `data[(y * width + x) * 3 + c]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Reads and decodes one image file (PNG or JPEG, by content, not by name).
pub fn decode_file(path: &Path) -> Result<RgbImage, ImageError> {
    let read_err = |source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let bytes = file.metadata().map_err(read_err)?.len();
    if bytes > MAX_FILE_BYTES {
        return Err(ImageError::FileTooLarge {
            path: path.to_path_buf(),
            bytes,
            cap: MAX_FILE_BYTES,
        });
    }
    let mut data = Vec::new();
    // `take`: a file that grows while read still stops at the cap.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(read_err)?;
    decode_bytes(&data, path)
}

/// Decodes an image held in memory; `name` is what errors call it.
pub fn decode_bytes(data: &[u8], name: &Path) -> Result<RgbImage, ImageError> {
    let path = || name.to_path_buf();
    if data.len() as u64 > MAX_FILE_BYTES {
        return Err(ImageError::FileTooLarge {
            path: path(),
            bytes: data.len() as u64,
            cap: MAX_FILE_BYTES,
        });
    }
    let format = image::guess_format(data).map_err(|_| not_image(path(), "unknown format"))?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg) {
        return Err(not_image(path(), &format!("{format:?} is not supported")));
    }
    check_complete(format, data).map_err(|reason| not_image(path(), reason))?;
    let (width, height) = ImageReader::with_format(Cursor::new(data), format)
        .into_dimensions()
        .map_err(|e| not_image(path(), &format!("bad header: {e}")))?;
    check_dims(width, height, &path())?;
    let mut reader = ImageReader::with_format(Cursor::new(data), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    // 8 bytes a pixel covers 16-bit RGBA, the widest layout these decoders produce.
    limits.max_alloc = Some(MAX_PIXELS * 8);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| ImageError::Decode {
        path: path(),
        reason: e.to_string(),
    })?;
    Ok(to_rgb(img))
}

fn not_image(path: PathBuf, reason: &str) -> ImageError {
    ImageError::NotAnImage {
        path,
        reason: reason.to_string(),
    }
}

/// A file that stops before its end marker is truncated, even where the decoder could
/// fill in the missing rows (it would hand the model made-up pixels).
fn check_complete(format: ImageFormat, data: &[u8]) -> Result<(), &'static str> {
    let complete = match format {
        // The IEND chunk: zero length, type, its fixed CRC.
        ImageFormat::Png => data
            .windows(8)
            .any(|w| w == [b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]),
        // The EOI marker.
        _ => data.windows(2).any(|w| w == [0xFF, 0xD9]),
    };
    if complete {
        Ok(())
    } else {
        Err("truncated: the file ends before its end marker")
    }
}

fn check_dims(width: u32, height: u32, path: &Path) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Geometry {
            path: path.to_path_buf(),
            width,
            height,
            reason: "the image is empty".into(),
        });
    }
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ImageError::TooManyPixels {
            path: path.to_path_buf(),
            width,
            height,
            cap: MAX_PIXELS,
        });
    }
    Ok(())
}

/// Pillow's `convert("RGB")`: alpha dropped (not composited), grey replicated; 16-bit
/// colour keeps the high byte (Pillow's `RGB;16B` unpacker), 16-bit grey is clipped to 255
/// (Pillow's `I;16` → `RGB`).
fn to_rgb(img: DynamicImage) -> RgbImage {
    let (width, height) = (img.width(), img.height());
    let data = match img {
        DynamicImage::ImageRgb16(b) => b.into_raw().into_iter().map(|v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(b) => b
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]].map(|v| (v >> 8) as u8))
            .collect(),
        DynamicImage::ImageLuma16(b) => b
            .into_raw()
            .into_iter()
            .flat_map(|v| [v.min(255) as u8; 3])
            .collect(),
        DynamicImage::ImageLumaA16(b) => b
            .into_raw()
            .chunks_exact(2)
            .flat_map(|p| [p[0].min(255) as u8; 3])
            .collect(),
        other => other.into_rgb8().into_raw(),
    };
    RgbImage {
        width,
        height,
        data,
    }
}
