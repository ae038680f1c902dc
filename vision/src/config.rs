//! The processor's settings: the Qwen2-VL defaults, or a model folder's
//! `preprocessor_config.json` read the way mlx-vlm reads it.
use std::path::Path;

use crate::error::ImageError;

/// OpenAI CLIP's normalization, which Qwen2-VL and Qwen2.5-VL ship (transformers' decimal
/// literals, rounded to f32 as numpy rounds them).
#[allow(clippy::excessive_precision)]
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// How `pixel * rescale_factor` is rounded: the two references differ in the last bit of
/// about half the 256 byte values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rescale {
    /// In f32 (mlx-vlm's numpy processor, what mlx-vlm feeds its vision tower).
    F32,
    /// In f64, then rounded to f32 (transformers' `rescale`).
    F64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProcessorConfig {
    pub patch_size: u32,
    pub temporal_patch_size: u32,
    pub merge_size: u32,
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub rescale_factor: f64,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale: Rescale,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            rescale_factor: 1.0 / 255.0,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            rescale: Rescale::F32,
        }
    }
}

impl ProcessorConfig {
    /// The side the resized image is a multiple of (`patch_size * merge_size`, 28).
    pub fn factor(&self) -> u32 {
        self.patch_size.saturating_mul(self.merge_size)
    }

    /// The settings of a model folder: `preprocessor_config.json` (and the
    /// `image_processor` object of `processor_config.json`) over the defaults; a folder
    /// with neither file gets the defaults.
    pub fn from_model_dir(dir: &Path) -> Result<Self, ImageError> {
        let mut raw = serde_json::Map::new();
        for name in ["preprocessor_config.json", "processor_config.json"] {
            let path = dir.join(name);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ImageError::Read { path, source }),
            };
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ImageError::Config {
                    path: path.clone(),
                    reason: format!("not JSON: {e}"),
                })?;
            let obj = if name == "processor_config.json" {
                value.get("image_processor").cloned()
            } else {
                Some(value)
            };
            if let Some(serde_json::Value::Object(m)) = obj {
                raw.extend(m);
            }
        }
        Self::from_json(&raw).map_err(|reason| ImageError::Config {
            path: dir.join("preprocessor_config.json"),
            reason,
        })
    }

    /// The settings of a parsed `preprocessor_config.json` object over the defaults, or
    /// which field is wrong.
    pub fn from_json(raw: &serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let mut c = Self::default();
        let uint = |key: &str, max: u64| -> Result<Option<u64>, String> {
            match raw.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(n) if (1..=max).contains(&n) => Ok(Some(n)),
                    _ => Err(format!("`{key}` must be an integer in 1..={max}, got {v}")),
                },
            }
        };
        let small = |key: &str| -> Result<Option<u32>, String> {
            Ok(uint(key, 1024)?.and_then(|n| u32::try_from(n).ok()))
        };
        if let Some(p) = small("patch_size")? {
            c.patch_size = p;
        }
        if let Some(p) = small("temporal_patch_size")? {
            c.temporal_patch_size = p;
        }
        if let Some(p) = small("merge_size")? {
            c.merge_size = p;
        }
        const PIXELS: u64 = 1 << 40;
        if let Some(serde_json::Value::Object(size)) = raw.get("size") {
            let get = |k: &str| size.get(k).and_then(serde_json::Value::as_u64);
            if let Some(n) = get("shortest_edge").filter(|n| (1..=PIXELS).contains(n)) {
                c.min_pixels = n;
            }
            if let Some(n) = get("longest_edge").filter(|n| (1..=PIXELS).contains(n)) {
                c.max_pixels = n;
            }
        }
        if let Some(n) = uint("min_pixels", PIXELS)? {
            c.min_pixels = n;
        }
        if let Some(n) = uint("max_pixels", PIXELS)? {
            c.max_pixels = n;
        }
        if c.min_pixels > c.max_pixels {
            return Err(format!(
                "min_pixels {} is over max_pixels {}",
                c.min_pixels, c.max_pixels
            ));
        }
        if let Some(v) = raw.get("rescale_factor") {
            c.rescale_factor = v
                .as_f64()
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| format!("`rescale_factor` must be a positive number, got {v}"))?;
        }
        for (key, out) in [
            ("image_mean", &mut c.image_mean),
            ("image_std", &mut c.image_std),
        ] {
            if let Some(v) = raw.get(key) {
                let nums: Option<Vec<f32>> = v.as_array().map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_f64().map(|f| f as f32))
                        .collect()
                });
                match nums {
                    Some(n) if n.len() == 3 && n.iter().all(|f| f.is_finite()) => {
                        out.copy_from_slice(&n)
                    }
                    _ => return Err(format!("`{key}` must be 3 numbers, got {v}")),
                }
            }
        }
        if c.image_std.contains(&0.0) {
            return Err("`image_std` has a zero".into());
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_qwen_preprocessor_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("preprocessor_config.json"),
            r#"{"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14,
                "temporal_patch_size": 2, "merge_size": 2,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "image_processor_type": "Qwen2VLImageProcessor"}"#,
        )
        .expect("write");
        let c = ProcessorConfig::from_model_dir(dir.path()).expect("config");
        assert_eq!(c.max_pixels, 12_845_056);
        assert_eq!(c.factor(), 28);
        assert_eq!(c.image_mean, OPENAI_CLIP_MEAN);
    }

    #[test]
    fn bad_config_names_file_and_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("preprocessor_config.json"),
            r#"{"patch_size": 0}"#,
        )
        .expect("write");
        let e = ProcessorConfig::from_model_dir(dir.path())
            .expect_err("zero patch")
            .to_string();
        assert!(
            e.contains("preprocessor_config.json") && e.contains("patch_size"),
            "{e}"
        );
    }
}
