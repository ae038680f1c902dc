//! Calibration of the activation model from measured peaks: the robust refit of
//! [`ActivationModel`]'s coefficients and the floor (never predict below a peak measured
//! for the same model at a context and chunk no larger). Pure: the supervisor's
//! calibration store supplies the samples.
use serde::{Deserialize, Serialize};

use crate::activation::{
    dtype_class, ActivationDims, ActivationModel, Attended, Coefficients, Features,
};

/// Fewer samples than this in a dtype class: its coefficients are only scaled, not refit
/// (a three-coefficient fit to one short ladder would extrapolate badly to other shapes).
pub const MIN_SAMPLES_FOR_FIT: usize = 6;

/// One measured run, as the fit needs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The model's activation dimensions.
    pub dims: ActivationDims,
    /// Activation element bytes (2 or 4).
    pub elem_bytes: u64,
    /// Tokens of the largest prefill chunk (capped at the context).
    pub chunk: u64,
    /// Context used: prompt + generated tokens.
    pub context: u64,
    /// What the last chunk attended to ([`crate::activation::attended_positions`]).
    pub attended: Attended,
    /// Predicted weights + KV cache at that context (what the activations come on top of).
    pub base_bytes: u64,
    /// MLX's measured peak.
    pub peak_bytes: u64,
}

/// A measured peak the estimate never goes below, for the model it was measured on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloorPoint {
    /// Activation element bytes (2 or 4).
    pub elem_bytes: u64,
    /// Context used.
    pub context: u64,
    /// Prefill chunk (capped at the context).
    pub chunk: u64,
    /// MLX's measured peak.
    pub peak_bytes: u64,
}

/// `builtin` or `machine`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalibrationSource {
    /// The built-in coefficients.
    #[default]
    Builtin,
    /// Refit from this machine's runs.
    Machine,
}

/// What the estimate predicts with: the coefficients, where they come from, and the floor.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    /// The coefficients.
    pub model: ActivationModel,
    /// `builtin` or `machine`.
    pub source: CalibrationSource,
    /// One line for a person ("built-in (CPU, 48 peaks)", "this machine: 41 runs, ...").
    pub description: String,
    /// Measured peaks of this model (same shape and weights).
    pub floor: Vec<FloorPoint>,
}

/// How the built-in coefficients are described.
pub const BUILTIN_DESCRIPTION: &str = "built-in (CPU, 92 peaks)";

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            model: ActivationModel::default(),
            source: CalibrationSource::Builtin,
            description: BUILTIN_DESCRIPTION.to_string(),
            floor: Vec::new(),
        }
    }
}

impl Calibration {
    /// The largest measured peak at a context and chunk no larger than these (a peak grows
    /// with both), for activations of `elem_bytes`; 0 when none.
    pub fn floor_bytes(&self, elem_bytes: u64, context: u64, chunk: u64) -> u64 {
        let chunk = chunk.min(context).max(1);
        self.floor
            .iter()
            .filter(|p| {
                dtype_class(p.elem_bytes) == dtype_class(elem_bytes)
                    && p.context <= context
                    && p.chunk <= chunk
            })
            .map(|p| p.peak_bytes)
            .max()
            .unwrap_or(0)
    }
}

/// The predicted peak of a sample under `model`.
pub fn predicted_peak(model: &ActivationModel, s: &Sample) -> u64 {
    s.base_bytes
        .saturating_add(
            model
                .predict(&s.dims, s.elem_bytes, s.chunk, s.attended, 1)
                .bytes,
        )
        .saturating_add(model.overhead_bytes(s.elem_bytes))
}

/// Relative error of a prediction against a measured peak: (predicted − measured) / measured.
pub fn relative_error(predicted: u64, measured: u64) -> f64 {
    if measured == 0 {
        return 0.0;
    }
    (predicted as f64 - measured as f64) / measured as f64
}

/// The median of `xs` (0 when empty).
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Refits `start`'s coefficients from `samples`, per dtype class: a least-squares fit of
/// the activation bytes (peak − weights − KV − logits) on the score and MLP features and
/// a constant, each sample weighted by 1/peak (relative error), then refit without the
/// samples whose residual is over 3 median absolute deviations (a robust fit). A
/// negative coefficient is dropped to 0 and the rest refit. A class with fewer than
/// [`MIN_SAMPLES_FOR_FIT`] samples, or of too few shapes of run ([`MIN_DISTINCT_POINTS`],
/// [`MIN_SCORE_SPREAD`]), keeps its shape: from two samples on, a scale of its
/// activation terms and a new overhead are fitted the same way; from one, the activation
/// terms are scaled to it (the floor keeps the measured shapes themselves from being
/// under-predicted).
pub fn refit(start: &ActivationModel, samples: &[Sample]) -> ActivationModel {
    let mut out = *start;
    for elem in [2u64, 4] {
        let class: Vec<&Sample> = samples
            .iter()
            .filter(|s| dtype_class(s.elem_bytes) == dtype_class(elem) && s.peak_bytes > 0)
            .collect();
        if class.is_empty() {
            continue;
        }
        let k = if class.len() < MIN_SAMPLES_FOR_FIT || !identifiable(&class) {
            let start = start.coefficients(elem);
            shape_fit(start, &class).unwrap_or_else(|| scale_up(start, &class))
        } else {
            robust_fit(start.coefficients(elem), &class)
                .unwrap_or_else(|| scale_up(start.coefficients(elem), &class))
        };
        *out.coefficients_mut(elem) = k;
    }
    out
}

/// Distinct shapes of run (prefill chunk, attended positions, model dimensions) before the
/// score, MLP and overhead terms are fitted apart, more than the terms fitted: a few, however
/// many runs of each, determine the terms exactly, noise included, and such a fit can drop
/// an activation term to 0 — an estimate that then under-predicts longer contexts.
pub const MIN_DISTINCT_POINTS: usize = 5;

/// The largest attention-score feature at least this many times the smallest (the
/// quadratic term needs lengths far apart to be told from the linear one).
pub const MIN_SCORE_SPREAD: f64 = 4.0;

fn identifiable(class: &[&Sample]) -> bool {
    let points: std::collections::BTreeSet<(u64, u64, u64, u64)> = class
        .iter()
        .map(|s| {
            (
                s.chunk,
                s.attended.positions,
                s.dims.hidden,
                s.dims.intermediate,
            )
        })
        .collect();
    let scores: Vec<f64> = class
        .iter()
        .map(|s| Features::of(&s.dims, s.chunk, s.attended, 1).scores)
        .collect();
    let lo = scores.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = scores.iter().copied().fold(0.0, f64::max);
    points.len() >= MIN_DISTINCT_POINTS && lo > 0.0 && hi >= lo * MIN_SCORE_SPREAD
}

/// The target of the fit: activation bytes without the (unfitted) logits.
fn target(s: &Sample) -> (Features, f64) {
    let f = Features::of(&s.dims, s.chunk, s.attended, 1);
    let y = s.peak_bytes as f64 - s.base_bytes as f64 - f.logits;
    (f, y)
}

/// Keeps `k`'s shape: fits a scale of its activation terms and a new overhead (two or
/// more samples).
fn shape_fit(k: &Coefficients, class: &[&Sample]) -> Option<Coefficients> {
    if class.len() < 2 {
        return None;
    }
    let rows: Vec<Row> = class
        .iter()
        .map(|s| {
            let (f, y) = target(s);
            let act = f.scores * k.score_bytes + f.mlp * k.mlp_bytes + f.mask * k.mask_bytes;
            ([act, 0.0, 0.0, 1.0], y, 1.0 / s.peak_bytes as f64)
        })
        .collect();
    let c = nonnegative_fit(&rows, [true, false, false, true])?;
    (c[0] > 0.0).then_some(Coefficients {
        score_bytes: k.score_bytes * c[0],
        mlp_bytes: k.mlp_bytes * c[0],
        mask_bytes: k.mask_bytes * c[0],
        overhead_bytes: c[3],
    })
}

/// Scales the score and MLP coefficients by the median ratio of measured to predicted
/// activation bytes.
fn scale_up(k: &Coefficients, class: &[&Sample]) -> Coefficients {
    let ratios: Vec<f64> = class
        .iter()
        .filter_map(|s| {
            let (f, y) = target(s);
            let act = f.scores * k.score_bytes + f.mlp * k.mlp_bytes + f.mask * k.mask_bytes;
            (act > 0.0).then(|| (y - k.overhead_bytes) / act)
        })
        .collect();
    let factor = median(&ratios);
    // A millionth more: the prediction rounds each term down to whole bytes.
    let factor = if factor.is_finite() && factor > 0.0 {
        factor * (1.0 + 1e-6)
    } else {
        1.0
    };
    Coefficients {
        score_bytes: k.score_bytes * factor,
        mlp_bytes: k.mlp_bytes * factor,
        mask_bytes: k.mask_bytes * factor,
        overhead_bytes: k.overhead_bytes,
    }
}

/// Unknowns of the fit: score, MLP, mask and overhead bytes.
const N: usize = 4;
type Row = ([f64; N], f64, f64);

fn robust_fit(start: &Coefficients, class: &[&Sample]) -> Option<Coefficients> {
    let rows: Vec<Row> = class
        .iter()
        .map(|s| {
            let (f, y) = target(s);
            ([f.scores, f.mlp, f.mask, 1.0], y, 1.0 / s.peak_bytes as f64)
        })
        .collect();
    // A feature no sample exercises (no sliding window passed) keeps its start value.
    let seen: [bool; N] = std::array::from_fn(|j| rows.iter().any(|r| r.0[j] != 0.0));
    let first = nonnegative_fit(&rows, seen)?;
    let residuals: Vec<f64> = rows
        .iter()
        .map(|(x, y, w)| (dot(x, &first) - y) * w)
        .collect();
    let med = median(&residuals);
    let mad = median(
        &residuals
            .iter()
            .map(|r| (r - med).abs())
            .collect::<Vec<_>>(),
    );
    let kept: Vec<Row> = rows
        .iter()
        .zip(&residuals)
        .filter(|(_, r)| mad <= 0.0 || (*r - med).abs() <= 3.0 * mad)
        .map(|(row, _)| *row)
        .collect();
    let c = if kept.len() >= MIN_SAMPLES_FOR_FIT && kept.len() < rows.len() {
        nonnegative_fit(&kept, seen).unwrap_or(first)
    } else {
        first
    };
    Some(Coefficients {
        score_bytes: c[0],
        mlp_bytes: c[1],
        mask_bytes: if seen[2] { c[2] } else { start.mask_bytes },
        overhead_bytes: c[3],
    })
}

fn dot(a: &[f64; N], b: &[f64; N]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Weighted least squares with non-negative coefficients over the `active` columns: a
/// negative one is fixed at 0 and the others refit (at most N rounds).
fn nonnegative_fit(rows: &[Row], mut active: [bool; N]) -> Option<[f64; N]> {
    for _ in 0..N {
        let c = weighted_lsq(rows, &active)?;
        match (0..N).find(|&i| active[i] && c[i] < 0.0) {
            Some(i) => active[i] = false,
            None => return Some(c),
        }
    }
    None
}

/// Solves the normal equations over the active columns (inactive ones are 0).
fn weighted_lsq(rows: &[Row], active: &[bool; N]) -> Option<[f64; N]> {
    let idx: Vec<usize> = (0..N).filter(|&i| active[i]).collect();
    let n = idx.len();
    if n == 0 || rows.len() < n {
        return None;
    }
    // Columns are scaled to unit size first: the score feature is ~1e8, the constant 1.
    let scale: Vec<f64> = idx
        .iter()
        .map(|&j| {
            rows.iter()
                .map(|(x, _, w)| (x[j] * w).abs())
                .fold(0.0, f64::max)
                .max(f64::MIN_POSITIVE)
        })
        .collect();
    let mut a = vec![vec![0.0; n + 1]; n];
    for (x, y, w) in rows {
        let xs: Vec<f64> = idx.iter().zip(&scale).map(|(&j, s)| x[j] * w / s).collect();
        for r in 0..n {
            for c in 0..n {
                a[r][c] += xs[r] * xs[c];
            }
            a[r][n] += xs[r] * y * w;
        }
    }
    let sol = solve(a)?;
    let mut c = [0.0; N];
    for (k, &j) in idx.iter().enumerate() {
        c[j] = sol[k] / scale[k];
    }
    c.iter().all(|v| v.is_finite()).then_some(c)
}

/// Gaussian elimination with partial pivoting on an augmented n × (n+1) matrix.
fn solve(mut a: Vec<Vec<f64>>) -> Option<Vec<f64>> {
    let n = a.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        let pivot_row = a[col].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (x, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    Some((0..n).map(|i| a[i][n] / a[i][i]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::BUILTIN;

    fn dims() -> ActivationDims {
        ActivationDims {
            heads: 4,
            hidden: 256,
            intermediate: 512,
            vocab: 512,
        }
    }

    /// A sample of `context` tokens whose peak is what `truth` predicts.
    fn sample(
        truth: &ActivationModel,
        elem_bytes: u64,
        chunk: u64,
        context: u64,
        base_bytes: u64,
    ) -> Sample {
        let mut s = Sample {
            dims: dims(),
            elem_bytes,
            chunk,
            context,
            attended: Attended::full(context),
            base_bytes,
            peak_bytes: 0,
        };
        s.peak_bytes = predicted_peak(truth, &s);
        s
    }

    /// Samples generated by known coefficients are recovered by the fit.
    #[test]
    fn recovers_known_coefficients() {
        let truth = Coefficients {
            score_bytes: 6.0,
            mlp_bytes: 20.0,
            mask_bytes: 1.0,
            overhead_bytes: 500_000.0,
        };
        let model = ActivationModel {
            half: truth,
            full: truth,
            vision: BUILTIN.vision,
        };
        let mut samples = Vec::new();
        for context in [128u64, 512, 2048, 8192] {
            for chunk in [256u64, 1024, 2048] {
                let base = 5_000_000 + context * 4096;
                let s = sample(&model, 2, chunk.min(context), context, base);
                samples.push(s);
            }
        }
        let fit = refit(&BUILTIN, &samples);
        let k = fit.half;
        assert!((k.score_bytes - 6.0).abs() < 0.01, "{k:?}");
        assert!((k.mlp_bytes - 20.0).abs() < 0.1, "{k:?}");
        assert!((k.overhead_bytes - 500_000.0).abs() < 5_000.0, "{k:?}");
        // The other class had no samples: unchanged.
        assert_eq!(fit.full, BUILTIN.full);
    }

    /// One outlier among many does not move the fit.
    #[test]
    fn an_outlier_is_dropped() {
        let truth = Coefficients {
            score_bytes: 3.0,
            mlp_bytes: 10.0,
            mask_bytes: 1.0,
            overhead_bytes: 1_000_000.0,
        };
        let model = ActivationModel {
            half: truth,
            full: truth,
            vision: BUILTIN.vision,
        };
        let mut samples = Vec::new();
        for context in [128u64, 256, 512, 1024, 2048, 4096, 8192] {
            let s = sample(&model, 4, 512.min(context), context, 1_000_000);
            samples.push(s);
        }
        samples[3].peak_bytes *= 3;
        let k = refit(&BUILTIN, &samples).full;
        assert!((k.score_bytes - 3.0).abs() < 0.05, "{k:?}");
    }

    /// Under-predicted samples, too few to refit: the coefficients scale up by the median
    /// ratio (one sample: exactly to it).
    #[test]
    fn few_samples_scale_up() {
        let s = Sample {
            dims: dims(),
            elem_bytes: 2,
            chunk: 1024,
            context: 1024,
            attended: Attended::full(1024),
            base_bytes: 1_000_000,
            peak_bytes: 0,
        };
        let before = predicted_peak(&BUILTIN, &s);
        let s = Sample {
            peak_bytes: before * 2,
            ..s
        };
        let fit = refit(&BUILTIN, std::slice::from_ref(&s));
        assert!(predicted_peak(&fit, &s) >= s.peak_bytes);
        assert!(fit.half.score_bytes > BUILTIN.half.score_bytes);
    }

    /// A short ladder (three contexts) keeps the built-in shape: the scale of its
    /// activations and the overhead are recovered.
    #[test]
    fn a_short_ladder_fits_scale_and_overhead() {
        let k = BUILTIN.full;
        let truth = ActivationModel {
            half: BUILTIN.half,
            full: Coefficients {
                score_bytes: k.score_bytes * 1.3,
                mlp_bytes: k.mlp_bytes * 1.3,
                mask_bytes: k.mask_bytes * 1.3,
                overhead_bytes: 200_000.0,
            },
            vision: BUILTIN.vision,
        };
        let samples: Vec<Sample> = [128u64, 512, 2048]
            .iter()
            .map(|&context| {
                sample(
                    &truth,
                    4,
                    2048.min(context),
                    context,
                    10_000_000 + context * 8192,
                )
            })
            .collect();
        let fit = refit(&BUILTIN, &samples).full;
        assert!(
            (fit.score_bytes / k.score_bytes - 1.3).abs() < 1e-3,
            "{fit:?}"
        );
        assert!((fit.overhead_bytes - 200_000.0).abs() < 2_000.0, "{fit:?}");
    }

    /// Many runs of a few lengths (as a user's chats) keep the built-in shape, scaled: a
    /// free fit to them sets an activation term to 0 (measured on this machine's store).
    #[test]
    fn runs_of_similar_lengths_keep_the_activation_terms() {
        let k = BUILTIN.full;
        let truth = ActivationModel {
            half: BUILTIN.half,
            full: Coefficients {
                score_bytes: k.score_bytes * 1.2,
                mlp_bytes: k.mlp_bytes * 1.2,
                mask_bytes: k.mask_bytes * 1.2,
                overhead_bytes: 3_000_000.0,
            },
            vision: BUILTIN.vision,
        };
        // A user's chats: ten runs of three lengths; at the two short ones MLX's peak is
        // the same (its allocator hands out the same buffers), as measured here.
        let mut samples: Vec<Sample> = [21u64, 77, 77, 77, 77, 77, 77, 300, 300, 300]
            .iter()
            .map(|&context| sample(&truth, 4, context, context, 10_000_000 + context * 8192))
            .collect();
        let flat = samples[1].peak_bytes - samples[1].base_bytes;
        samples[0].peak_bytes = samples[0].base_bytes + flat;
        let fit = refit(&BUILTIN, &samples).full;
        for (term, got, built_in) in [
            ("score", fit.score_bytes, k.score_bytes),
            ("mlp", fit.mlp_bytes, k.mlp_bytes),
        ] {
            let scale = got / built_in;
            assert!((1.1..1.3).contains(&scale), "{term} ×{scale}: {fit:?}");
        }
    }

    #[test]
    fn the_floor_is_monotone_in_context_and_chunk() {
        let c = Calibration {
            floor: vec![FloorPoint {
                elem_bytes: 4,
                context: 1024,
                chunk: 512,
                peak_bytes: 99,
            }],
            ..Calibration::default()
        };
        assert_eq!(c.floor_bytes(4, 1024, 512), 99);
        assert_eq!(c.floor_bytes(4, 4096, 2048), 99);
        assert_eq!(c.floor_bytes(4, 512, 512), 0);
        assert_eq!(c.floor_bytes(4, 1024, 256), 0);
        assert_eq!(c.floor_bytes(2, 1024, 512), 0);
    }
}
