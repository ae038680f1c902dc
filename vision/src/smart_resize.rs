//! Qwen2-VL's smart resize: the size an image is resized to (both sides multiples of
//! `patch × merge`, the area within `[min_pixels, max_pixels]`, the aspect kept as far as
//! that allows), and the language-model tokens that size becomes. The arithmetic is
//! transformers' `smart_resize` in f64, Python's `round` (ties to even) included.
use crate::config::ProcessorConfig;

/// The widest aspect ratio the reference accepts.
pub const MAX_ASPECT_RATIO: f64 = 200.0;

/// `(resized_height, resized_width)` for an image of `height × width`, or why not.
pub fn smart_resize(height: u32, width: u32, cfg: &ProcessorConfig) -> Result<(u32, u32), String> {
    if height == 0 || width == 0 {
        return Err("the image is empty".into());
    }
    let factor = u64::from(cfg.factor());
    if factor == 0 {
        return Err("patch_size × merge_size is 0".into());
    }
    let (h, w) = (f64::from(height), f64::from(width));
    let ratio = h.max(w) / h.min(w);
    if ratio > MAX_ASPECT_RATIO {
        return Err(format!(
            "aspect ratio {ratio:.1} is over {MAX_ASPECT_RATIO} (the reference refuses it too)"
        ));
    }
    let f = factor as f64;
    let mut h_bar = (h / f).round_ties_even() as u64 * factor;
    let mut w_bar = (w / f).round_ties_even() as u64 * factor;
    let area = f64::from(height) * f64::from(width);
    if h_bar * w_bar > cfg.max_pixels {
        let beta = (area / cfg.max_pixels as f64).sqrt();
        h_bar = factor.max((h / beta / f).floor() as u64 * factor);
        w_bar = factor.max((w / beta / f).floor() as u64 * factor);
    } else if h_bar * w_bar < cfg.min_pixels {
        let beta = (cfg.min_pixels as f64 / area).sqrt();
        h_bar = (h * beta / f).ceil() as u64 * factor;
        w_bar = (w * beta / f).ceil() as u64 * factor;
    }
    match (u32::try_from(h_bar), u32::try_from(w_bar)) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        _ => Err(format!("resized size {h_bar}x{w_bar} does not fit u32")),
    }
}

/// The language-model tokens of one image of `height × width` (after the 2×2 merge), with
/// its `(grid_t, grid_h, grid_w)` in patches.
pub fn image_tokens(
    height: u32,
    width: u32,
    cfg: &ProcessorConfig,
) -> Result<(u64, [u32; 3]), String> {
    let (rh, rw) = smart_resize(height, width, cfg)?;
    let (gh, gw) = (rh / cfg.patch_size, rw / cfg.patch_size);
    let merge = u64::from(cfg.merge_size) * u64::from(cfg.merge_size);
    Ok((u64::from(gh) * u64::from(gw) / merge, [1, gh, gw]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_sizes() {
        let c = ProcessorConfig::default();
        // Multiples of 28 stay; 70/28 = 2.5 rounds to even (2), 98/28 = 3.5 to 4.
        assert_eq!(smart_resize(448, 448, &c), Ok((448, 448)));
        assert_eq!(smart_resize(70, 98, &c), Ok((56, 112)));
        // Too small: scaled up to min_pixels (56×56 = 3136).
        assert_eq!(smart_resize(10, 10, &c), Ok((56, 56)));
        // Too big: scaled down under max_pixels (1003520).
        let (h, w) = smart_resize(3000, 4000, &c).expect("fits");
        assert!(u64::from(h) * u64::from(w) <= c.max_pixels && h % 28 == 0 && w % 28 == 0);
        assert_eq!((h, w), (840, 1148));
        assert!(smart_resize(1, 300, &c).is_err());
        assert!(smart_resize(0, 30, &c).is_err());
        assert_eq!(image_tokens(448, 448, &c).map(|t| t.0), Ok(256));
    }
}
