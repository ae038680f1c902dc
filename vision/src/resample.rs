//! Bicubic resizing bit-exact with Pillow's `Image.resize(..., BICUBIC)` on 8-bit RGB,
//! which both reference processors call: Keys' cubic with a = −0.5, the support widened by
//! the scale when shrinking (antialiasing), weights normalized per output pixel and then
//! fixed to 22-bit integers, one horizontal pass rounded to 8 bits, then one vertical pass.
//! Generic resizers (the `image` crate's CatmullRom, fast_image_resize) use other
//! precisions and differ by ±1 on some pixels, so this follows Pillow's arithmetic.
use crate::decode::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output index: the first input index and the fixed-point weights from there.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

fn coeffs(in_size: u32, out_size: u32) -> Coeffs {
    // Pillow computes `in1 - in0` in f32; exact for any size under 2^24.
    let scale = f64::from(in_size as f32) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let out = out_size as usize;
    let mut bounds = Vec::with_capacity(out);
    let mut weights = vec![0i32; out * ksize];
    let mut k = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for xx in 0..out {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) truncates toward zero; the clamp makes the sign irrelevant.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bicubic(((x + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..xx * ksize + n];
        for (dst, &kx) in row.iter_mut().zip(&k[..n]) {
            let v = if ww != 0.0 { kx / ww } else { kx };
            let fixed = v * f64::from(1u32 << PRECISION_BITS);
            *dst = if v < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        bounds,
        ksize,
        weights,
    }
}

fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

fn horizontal(src: &[u8], w: usize, h: usize, out_w: u32) -> Vec<u8> {
    let c = coeffs(w as u32, out_w);
    let ow = out_w as usize;
    let mut out = vec![0u8; ow * h * 3];
    for y in 0..h {
        let row = &src[y * w * 3..(y + 1) * w * 3];
        for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
            let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
            for (x, &kx) in k.iter().enumerate() {
                let p = &row[(x + xmin) * 3..(x + xmin) * 3 + 3];
                for ch in 0..3 {
                    ss[ch] = ss[ch].wrapping_add(i32::from(p[ch]).wrapping_mul(kx));
                }
            }
            let o = (y * ow + xx) * 3;
            for ch in 0..3 {
                out[o + ch] = clip8(ss[ch]);
            }
        }
    }
    out
}

fn vertical(src: &[u8], w: usize, h: usize, out_h: u32) -> Vec<u8> {
    let c = coeffs(h as u32, out_h);
    let mut out = vec![0u8; w * out_h as usize * 3];
    for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
        let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
        for x in 0..w {
            let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
            for (y, &ky) in k.iter().enumerate() {
                let p = &src[((y + ymin) * w + x) * 3..((y + ymin) * w + x) * 3 + 3];
                for ch in 0..3 {
                    ss[ch] = ss[ch].wrapping_add(i32::from(p[ch]).wrapping_mul(ky));
                }
            }
            let o = (yy * w + x) * 3;
            for ch in 0..3 {
                out[o + ch] = clip8(ss[ch]);
            }
        }
    }
    out
}

/// Resizes to `out_w × out_h` (both ≥ 1) as Pillow's BICUBIC does: the same size is a
/// copy, otherwise horizontal then vertical, each only when that side changes.
pub fn resize_bicubic(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (w, h) = (img.width as usize, img.height as usize);
    let out_w = out_w.max(1);
    let out_h = out_h.max(1);
    let mut data = if out_w != img.width {
        horizontal(&img.data, w, h, out_w)
    } else {
        img.data.clone()
    };
    if out_h != img.height {
        data = vertical(&data, out_w as usize, h, out_h);
    }
    RgbImage {
        width: out_w,
        height: out_h,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(100, 28), (28, 100), (640, 448), (7, 56)] {
            let c = coeffs(i, o);
            for (xx, &(_, n)) in c.bounds.iter().enumerate() {
                let s: i64 = c.weights[xx * c.ksize..xx * c.ksize + n]
                    .iter()
                    .map(|&v| i64::from(v))
                    .sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= n as i64,
                    "{i}->{o} at {xx}: {s}"
                );
            }
        }
    }

    #[test]
    fn flat_image_stays_flat() {
        let img = RgbImage {
            width: 37,
            height: 23,
            data: [200u8, 17, 90].repeat(37 * 23),
        };
        let out = resize_bicubic(&img, 56, 84);
        assert_eq!((out.width, out.height), (56, 84));
        assert!(out.data.chunks_exact(3).all(|p| p == [200, 17, 90]));
    }
}
