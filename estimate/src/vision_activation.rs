//! The vision tower's activation model: what running the tower on a request's images
//! needs on top of the weights, and its calibration from measured tower peaks.
//!
//! ```text
//! tower = patches × values_per_patch × pixel_bytes    (the pixel values)
//!       + patches × hidden × width_bytes              (the blocks' per-patch buffers)
//!       + patches × intermediate × mlp_bytes          (the MLP's)
//!       + patches × hidden × full_width_bytes         (only when every block attends to
//!                                                      the whole image: Qwen2-VL)
//!       + heads × Σ image_patches² × score_bytes      (full attention, per image)
//! ```
//!
//! `patches` counts every image: the blocks run on all the images' patches at once. The
//! scores are every image's: full attention runs per image, but MLX evaluates the images'
//! independent branches side by side (measured: two images hold two images' scores at
//! once, four hold 3.1–3.7, so four are slightly over-planned). Towers 512, 768 and 1024
//! wide with MLPs 2–4× their width separate the width and MLP terms; a Qwen2-VL tower of
//! 8 or 16 blocks holds two more f32 rows of its width per patch than one of 2 blocks or
//! a Qwen2.5-VL tower (measured: its blocks' buffers overlap where every block attends
//! fully), which the full-attention term carries.
//!
//! The tower runs before the first prefill chunk and what it allocates is freed before
//! that chunk (only its output, a few MB, is kept), so a run's peak is the weights plus the
//! larger of the tower and the text's KV cache with its activations — not their sum. The
//! built-in coefficients ([`BUILTIN_VISION`]) are fitted to the tower peaks the worker
//! measured (the `vision` event, BENCHMARKS.md §11); the calibration store refits their
//! scale per machine from the user's own image runs ([`refit_vision`]).
use serde::{Deserialize, Serialize};

use crate::activation::dtype_class;

/// One activation dtype class's vision coefficients.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionCoefficients {
    /// Bytes per attention score of one head (an image's patches²).
    pub score_bytes: f64,
    /// Bytes per patch and per unit of the tower's width.
    pub width_bytes: f64,
    /// Bytes per patch and per unit of the tower's MLP width.
    #[serde(default)]
    pub mlp_bytes: f64,
    /// Bytes per patch and per unit of width more when every block attends fully.
    #[serde(default)]
    pub full_width_bytes: f64,
    /// Bytes per pixel value (channels × temporal × patch², per patch).
    pub pixel_bytes: f64,
}

/// The vision coefficients for 2-byte and for 4-byte activations.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionModel {
    pub half: VisionCoefficients,
    pub full: VisionCoefficients,
}

impl Default for VisionModel {
    fn default() -> Self {
        BUILTIN_VISION
    }
}

/// Fitted (least squares, weighted by 1/peak; the pixel term fixed at the f32 input, plus
/// the bf16 cast for the half class) to the worker's tower peaks on MLX 0.32.2's CPU
/// backend (BENCHMARKS.md §11). f32: 29 peaks — Qwen2.5-VL towers 512 and 1024 wide with
/// MLPs 2–4× their width, 256 to 6144 patches, one, two and four images, and Qwen2-VL
/// towers of 8 and 16 blocks. bf16: 6 peaks of the 1024-wide Qwen2.5-VL tower, fitted as a
/// scale of the f32 per-patch terms plus its own score term. Then raised 2%, the margin
/// that leaves no measured tower under by more than 3% (a 256-patch image: under 1% of
/// its run's peak).
pub const BUILTIN_VISION: VisionModel = VisionModel {
    half: VisionCoefficients {
        score_bytes: 1.966,
        width_bytes: 60.18,
        mlp_bytes: 5.78,
        full_width_bytes: 10.03,
        pixel_bytes: 6.12,
    },
    full: VisionCoefficients {
        score_bytes: 4.108,
        width_bytes: 78.99,
        mlp_bytes: 7.585,
        full_width_bytes: 13.16,
        pixel_bytes: 4.08,
    },
};

/// What the tower's activations depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TowerShape {
    /// Attention heads.
    pub heads: u64,
    /// Width.
    pub hidden: u64,
    /// MLP width.
    pub intermediate: u64,
    /// Every block attends to the whole image (Qwen2-VL).
    #[serde(default)]
    pub all_full_attention: bool,
    /// Pixel values per patch (channels × temporal patch × patch²).
    pub values_per_patch: u64,
}

/// The terms of a tower run, before the coefficients.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VisionFeatures {
    pub scores: f64,
    pub width: f64,
    pub mlp: f64,
    pub full_width: f64,
    pub pixels: f64,
}

impl VisionFeatures {
    /// The features of images of `patches` patches each on `shape`.
    pub fn of(shape: &TowerShape, patches: &[u64]) -> VisionFeatures {
        let total: f64 = patches.iter().map(|&p| p as f64).sum();
        let squares: f64 = patches.iter().map(|&p| p as f64 * p as f64).sum();
        let width = total * shape.hidden as f64;
        VisionFeatures {
            scores: shape.heads as f64 * squares,
            width,
            mlp: total * shape.intermediate as f64,
            full_width: if shape.all_full_attention { width } else { 0.0 },
            pixels: total * shape.values_per_patch as f64,
        }
    }

    fn bytes(&self, k: &VisionCoefficients) -> f64 {
        self.scores * k.score_bytes
            + self.width * k.width_bytes
            + self.mlp * k.mlp_bytes
            + self.full_width * k.full_width_bytes
            + self.pixels * k.pixel_bytes
    }
}

impl VisionModel {
    /// The coefficients for activations of `elem_bytes` bytes.
    pub fn coefficients(&self, elem_bytes: u64) -> &VisionCoefficients {
        if elem_bytes >= 4 {
            &self.full
        } else {
            &self.half
        }
    }

    fn coefficients_mut(&mut self, elem_bytes: u64) -> &mut VisionCoefficients {
        if elem_bytes >= 4 {
            &mut self.full
        } else {
            &mut self.half
        }
    }

    /// The tower's activation bytes for images of `patches` patches each, with
    /// activations of `elem_bytes` bytes (0 without images).
    pub fn predict(&self, shape: &TowerShape, elem_bytes: u64, patches: &[u64]) -> u64 {
        to_u64(VisionFeatures::of(shape, patches).bytes(self.coefficients(elem_bytes)))
    }

    /// [`Self::predict`] for `images` images of `patches` patches each.
    pub fn predict_uniform(
        &self,
        shape: &TowerShape,
        elem_bytes: u64,
        images: u64,
        patches: u64,
    ) -> u64 {
        if images == 0 {
            return 0;
        }
        let mut f = VisionFeatures::of(shape, &[patches]);
        let n = images as f64;
        f.scores *= n;
        f.width *= n;
        f.mlp *= n;
        f.full_width *= n;
        f.pixels *= n;
        to_u64(f.bytes(self.coefficients(elem_bytes)))
    }
}

fn to_u64(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        x.min(u64::MAX as f64) as u64
    } else {
        0
    }
}

/// One measured tower run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionSample {
    pub shape: TowerShape,
    /// Activation element bytes (2 or 4).
    pub elem_bytes: u64,
    /// Patches of each image.
    pub patches: Vec<u64>,
    /// The tower's measured MLX peak above what MLX held when it started.
    pub measured_bytes: u64,
}

/// Refits `start`'s scale per dtype class from `samples`: the factor minimizing the
/// relative squared error (each sample weighted by 1/measured), kept within ¼–4× (a
/// store of nonsense cannot make the term vanish or explode). The terms keep their
/// built-in proportions: the user's image runs rarely span enough shapes to tell the
/// quadratic term from the linear ones.
pub fn refit_vision(start: &VisionModel, samples: &[VisionSample]) -> VisionModel {
    let mut out = *start;
    for elem in [2u64, 4] {
        let (mut num, mut den) = (0.0, 0.0);
        for s in samples
            .iter()
            .filter(|s| dtype_class(s.elem_bytes) == dtype_class(elem) && s.measured_bytes > 0)
        {
            let p = VisionFeatures::of(&s.shape, &s.patches).bytes(start.coefficients(elem));
            let m = s.measured_bytes as f64;
            if p > 0.0 {
                num += p / m;
                den += (p / m) * (p / m);
            }
        }
        if den > 0.0 {
            let scale = (num / den).clamp(0.25, 4.0);
            let k = out.coefficients_mut(elem);
            k.score_bytes *= scale;
            k.width_bytes *= scale;
            k.mlp_bytes *= scale;
            k.full_width_bytes *= scale;
            k.pixel_bytes *= scale;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN25_1024: TowerShape = TowerShape {
        heads: 16,
        hidden: 1024,
        intermediate: 2816,
        all_full_attention: false,
        values_per_patch: 1176,
    };

    /// Four images cost four of one (every term sums over the images); the uniform form
    /// equals the per-image one.
    #[test]
    fn images_add_up_and_the_uniform_form_agrees() {
        let m = BUILTIN_VISION;
        let one = m.predict(&QWEN25_1024, 4, &[1024]);
        let four = m.predict(&QWEN25_1024, 4, &[1024; 4]);
        assert!(four.abs_diff(4 * one) <= 4, "{four} vs 4 × {one}");
        assert_eq!(m.predict_uniform(&QWEN25_1024, 4, 4, 1024), four);
        let mixed = m.predict(&QWEN25_1024, 2, &[256, 3072]);
        let parts = m.predict(&QWEN25_1024, 2, &[256]) + m.predict(&QWEN25_1024, 2, &[3072]);
        assert!(mixed.abs_diff(parts) <= 2);
        assert_eq!(m.predict(&QWEN25_1024, 4, &[]), 0);
        assert_eq!(m.predict_uniform(&QWEN25_1024, 4, 0, 1024), 0);
    }

    /// The built-in coefficients against tower peaks the worker measured (the 1024-wide
    /// Qwen2.5-VL tower of BENCHMARKS.md §11): never under by more than 3%, over by at most
    /// 11% (four images, whose scores are not all live at once).
    #[test]
    fn reproduces_measured_tower_peaks() {
        const QWEN2_1024_8_BLOCKS: TowerShape = TowerShape {
            intermediate: 3072,
            all_full_attention: true,
            ..QWEN25_1024
        };
        for (patches, measured) in [(1024, 193_479_916u64), (3072, 983_092_460)] {
            let p = BUILTIN_VISION.predict(&QWEN2_1024_8_BLOCKS, 4, &[patches]);
            let e = (p as f64 - measured as f64) / measured as f64;
            assert!(
                (-0.02..=0.05).contains(&e),
                "qwen2_vl {patches}: {p} vs {measured}"
            );
        }
        let cases: &[(u64, &[u64], u64)] = &[
            (4, &[256], 32_639_264),
            (4, &[1024], 180_888_608),
            (4, &[3072], 940_604_448),
            (4, &[6144], 3_098_597_408),
            (4, &[1024, 1024], 357_582_884),
            (4, &[1024; 4], 662_736_928),
            (4, &[3072; 4], 3_598_823_460),
            (2, &[256], 24_381_730),
            (2, &[1024], 119_022_624),
            (2, &[2304], 362_172_704),
            (2, &[3072], 558_394_400),
        ];
        for &(elem, patches, measured) in cases {
            let p = BUILTIN_VISION.predict(&QWEN25_1024, elem, patches);
            let e = (p as f64 - measured as f64) / measured as f64;
            assert!(
                (-0.03..=0.11).contains(&e),
                "{elem} {patches:?}: {p} vs {measured}: {e:+.3}"
            );
        }
    }

    /// A store's tower runs measured 10% over the built-in prediction scale it by 1.1;
    /// the other class keeps its coefficients; nonsense is clamped.
    #[test]
    fn the_refit_scales_each_class_to_its_runs() {
        let m = BUILTIN_VISION;
        let sample = |patches: Vec<u64>, factor: f64| {
            let p = m.predict(&QWEN25_1024, 4, &patches) as f64;
            VisionSample {
                shape: QWEN25_1024,
                elem_bytes: 4,
                patches,
                measured_bytes: (p * factor) as u64,
            }
        };
        let fitted = refit_vision(&m, &[sample(vec![1024], 1.1), sample(vec![3072], 1.1)]);
        let r = fitted.full.width_bytes / m.full.width_bytes;
        assert!((r - 1.1).abs() < 1e-3, "{r}");
        assert_eq!(fitted.half, m.half);
        let wild = refit_vision(&m, &[sample(vec![1024], 1000.0)]);
        assert!((wild.full.score_bytes / m.full.score_bytes - 4.0).abs() < 1e-9);
        assert_eq!(refit_vision(&m, &[]), m);
    }
}
