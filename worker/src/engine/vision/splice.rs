//! A prompt with images: the placeholder expanded to one image token per merged unit,
//! the tower run on the images' pixel values, and its rows put in place of the image
//! tokens' embeddings (mlx-vlm's `merge_input_ids_with_image_features`).

use mlx_rs::{error::Exception, ops, Array};
use vision::PixelValues;

use super::qwen25::VisionTower;

type R<T> = Result<T, Exception>;

/// Expands the `k`-th image token of `ids` into `counts[k]` image tokens (the
/// processor's expansion of `<|image_pad|>`); image tokens past `counts` are an error.
pub fn expand_image_tokens(ids: &[u32], image: u32, counts: &[usize]) -> Result<Vec<u32>, String> {
    let placed = ids.iter().filter(|&&t| t == image).count();
    if placed != counts.len() {
        return Err(format!(
            "the prompt has {placed} image placeholder(s) but {} image(s) were given",
            counts.len()
        ));
    }
    let extra: usize = counts.iter().sum::<usize>();
    let mut out = Vec::with_capacity(ids.len() + extra);
    let mut k = 0;
    for &t in ids {
        if t == image {
            out.extend(std::iter::repeat_n(image, counts[k]));
            k += 1;
        } else {
            out.push(t);
        }
    }
    Ok(out)
}

/// The tower's output for `images` in order: one row per merged unit.
pub fn image_features(tower: &VisionTower, images: &[PixelValues]) -> R<Array> {
    let cols = images.first().map_or(0, |p| p.cols) as i32;
    if images.iter().any(|p| p.cols as i32 != cols) {
        return Err(Exception::custom("images with different patch sizes"));
    }
    let rows: usize = images.iter().map(|p| p.rows).sum();
    let mut data = Vec::with_capacity(rows * cols as usize);
    for p in images {
        data.extend_from_slice(&p.data);
    }
    let grids: Vec<[i32; 3]> = images
        .iter()
        .map(|p| p.grid_thw.map(|g| g as i32))
        .collect();
    let x = Array::from_slice(&data, &[rows as i32, cols]);
    tower.forward(&x, &grids)
}

/// `embeds` (1, L, hidden) with the image tokens' rows replaced by `features`' rows, in
/// order; the counts must match.
pub fn splice(embeds: &Array, ids: &[u32], image: u32, features: &Array) -> R<Array> {
    let mask: Vec<bool> = ids.iter().map(|&t| t == image).collect();
    let n = mask.iter().filter(|m| **m).count() as i32;
    if n != features.dim(0) {
        return Err(Exception::custom(format!(
            "{n} image tokens but {} image features",
            features.dim(0)
        )));
    }
    let mut next = 0i32;
    let index: Vec<i32> = mask
        .iter()
        .map(|&m| {
            if m {
                next += 1;
                next - 1
            } else {
                0
            }
        })
        .collect();
    let l = ids.len() as i32;
    let gathered = features.take_axis(Array::from_slice(&index, &[l]), 0)?;
    let mask = Array::from_slice(&mask, &[l, 1]);
    let out = ops::select(&mask, &gathered, &embeds.reshape(&[l, -1])?)?;
    out.expand_dims(0)
}
