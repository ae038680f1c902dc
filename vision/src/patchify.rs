//! From a decoded image to the vision tower's input: smart resize, normalization, and the
//! patch rows `(grid_t·grid_h·grid_w, C·T·P·P)` in the merge-block order the reference
//! uses (each 2×2 block of patches consecutive), the still image repeated over the
//! temporal patch.
use std::path::Path;

use crate::config::{ProcessorConfig, Rescale};
use crate::decode::{decode_file, RgbImage};
use crate::error::ImageError;
use crate::resample::resize_bicubic;
use crate::smart_resize::smart_resize;

/// The processor's output for one image.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelValues {
    /// Row-major `rows × cols` f32.
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    /// `(grid_t, grid_h, grid_w)` in patches: `image_grid_thw`.
    pub grid_thw: [u32; 3],
    /// The resized `(height, width)`.
    pub resized: (u32, u32),
}

/// Decodes and processes one file.
pub fn process_file(path: &Path, cfg: &ProcessorConfig) -> Result<PixelValues, ImageError> {
    let img = decode_file(path)?;
    process_image(&img, cfg).map_err(|reason| ImageError::Geometry {
        path: path.to_path_buf(),
        width: img.width,
        height: img.height,
        reason,
    })
}

/// Processes a decoded image.
pub fn process_image(img: &RgbImage, cfg: &ProcessorConfig) -> Result<PixelValues, String> {
    patchify(&resize_for_model(img, cfg)?, cfg)
}

/// The smart resize alone: the image at the size the processor gives it (a multiple of
/// the patch × merge factor, within the pixel limits), 8-bit RGB.
pub fn resize_for_model(img: &RgbImage, cfg: &ProcessorConfig) -> Result<RgbImage, String> {
    let (rh, rw) = smart_resize(img.height, img.width, cfg)?;
    Ok(resize_bicubic(img, rw, rh))
}

/// Normalization and patchify of an image already at its processed size (what
/// [`resize_for_model`] gives); any other size is an error.
pub fn patchify(resized: &RgbImage, cfg: &ProcessorConfig) -> Result<PixelValues, String> {
    let (rh, rw) = (resized.height, resized.width);
    if resized.data.len() as u64 != u64::from(rh) * u64::from(rw) * 3 {
        return Err(format!(
            "{} bytes of RGB for a {rw}x{rh} image",
            resized.data.len()
        ));
    }
    if smart_resize(rh, rw, cfg)? != (rh, rw) {
        return Err(format!(
            "{rw}x{rh} is not a size the processor gives (a multiple of {} within the pixel limits)",
            cfg.factor()
        ));
    }
    let table = normalize_table(cfg);
    let ps = cfg.patch_size as usize;
    let ms = cfg.merge_size as usize;
    let tps = (cfg.temporal_patch_size as usize).max(1);
    let (gh, gw) = (rh as usize / ps, rw as usize / ps);
    if !gh.is_multiple_of(ms) || !gw.is_multiple_of(ms) {
        return Err(format!(
            "grid {gh}x{gw} is not a multiple of merge_size {ms}"
        ));
    }
    let cols = 3 * tps * ps * ps;
    let rows = gh * gw;
    let mut data = Vec::with_capacity(rows * cols);
    let width = rw as usize;
    for bh in 0..gh / ms {
        for bw in 0..gw / ms {
            for mh in 0..ms {
                for mw in 0..ms {
                    let (y0, x0) = ((bh * ms + mh) * ps, (bw * ms + mw) * ps);
                    for (ch, lut) in table.iter().enumerate() {
                        for _ in 0..tps {
                            for py in 0..ps {
                                let row = (y0 + py) * width;
                                for px in 0..ps {
                                    let v = resized.data[(row + x0 + px) * 3 + ch];
                                    data.push(lut[usize::from(v)]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let grid_thw = [1, gh as u32, gw as u32];
    Ok(PixelValues {
        data,
        rows,
        cols,
        grid_thw,
        resized: (rh, rw),
    })
}

/// `(v * rescale - mean) / std` for each channel and byte value, in the references' f32
/// arithmetic.
fn normalize_table(cfg: &ProcessorConfig) -> [[f32; 256]; 3] {
    let mut t = [[0f32; 256]; 3];
    for (ch, lut) in t.iter_mut().enumerate() {
        for (v, out) in lut.iter_mut().enumerate() {
            let scaled = match cfg.rescale {
                Rescale::F32 => v as f32 * cfg.rescale_factor as f32,
                Rescale::F64 => (v as f64 * cfg.rescale_factor) as f32,
            };
            *out = (scaled - cfg.image_mean[ch]) / cfg.image_std[ch];
        }
    }
    t
}
