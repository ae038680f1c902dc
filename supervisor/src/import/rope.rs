//! Llama 3 RoPE scaling from a GGUF's `rope_freqs.weight`: llama.cpp's convert stores the
//! per-frequency factors Hugging Face computes from `rope_scaling` (factor, low/high
//! frequency factors, original context) and drops the parameters; MLX computes the
//! factors itself, so the parameters are recovered by matching the stored factors.
use serde_json::{json, Value};

/// The factors `rope_scaling` of type `llama3` yields for `dims` rotary dimensions.
pub fn llama3_factors(
    theta: f64,
    dims: usize,
    factor: f64,
    low: f64,
    high: f64,
    old: f64,
) -> Vec<f64> {
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    (0..dims / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / dims as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// The `rope_scaling` object reproducing `stored` (all ones: none), or why not.
pub fn recover(stored: &[f32], theta: f64, dims: usize) -> Result<Option<Value>, String> {
    if stored.len() != dims / 2 {
        return Err(format!(
            "rope_freqs has {} factors, the head has {} rotary pairs",
            stored.len(),
            dims / 2
        ));
    }
    if stored.iter().all(|&f| f == 1.0) {
        return Ok(None);
    }
    let factor = f64::from(stored.iter().copied().fold(f32::MIN, f32::max));
    for old in [8192.0, 4096.0, 16384.0, 32768.0, 65536.0, 131072.0] {
        for low in [1.0, 2.0, 0.5] {
            for high in [4.0, 8.0, 2.0, 16.0] {
                let want = llama3_factors(theta, dims, factor, low, high, old);
                let close = want
                    .iter()
                    .zip(stored)
                    .all(|(w, s)| (w - f64::from(*s)).abs() <= 1e-4 * w.abs().max(1.0));
                if close {
                    return Ok(Some(json!({"rope_type": "llama3", "type": "llama3",
                        "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                        "original_max_position_embeddings": old})));
                }
            }
        }
    }
    Err("rope_freqs does not match Llama 3 RoPE scaling for any usual parameters; not supported yet".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_3_1_parameters_are_recovered_from_their_factors() {
        let f: Vec<f32> = llama3_factors(500_000.0, 128, 8.0, 1.0, 4.0, 8192.0)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let got = recover(&f, 500_000.0, 128)
            .unwrap_or_default()
            .unwrap_or_default();
        assert_eq!(got["factor"], 8.0);
        assert_eq!(got["high_freq_factor"], 4.0);
        assert_eq!(got["original_max_position_embeddings"], 8192.0);
        assert_eq!(recover(&[1.0; 64], 500_000.0, 128).ok(), Some(None));
        let mut bad = f.clone();
        bad[20] *= 1.5;
        assert!(recover(&bad, 500_000.0, 128).is_err());
    }
}
