//! Planning per image: how many patches the vision tower sees and how many tokens the
//! language model gets for an image of a given size. For the Qwen2-VL family this is the
//! image processor's own smart resize (the `vision` crate, the code that really resizes),
//! with the model folder's `preprocessor_config.json` limits; other families have a fixed
//! count from their config.
use std::path::Path;

use serde::Serialize;

use crate::model::VisionDims;

/// The image size planned when none is given (`--image-size`): 448×448, 256 tokens on
/// Qwen2-VL.
pub const DEFAULT_IMAGE_SIZE: (u32, u32) = (448, 448);

/// The Qwen2-VL processor's grid settings, from `vision_config` and
/// `preprocessor_config.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct QwenGrid {
    pub patch_size: u32,
    pub merge_size: u32,
    pub temporal_patch_size: u32,
    pub min_pixels: u64,
    pub max_pixels: u64,
}

impl QwenGrid {
    fn processor(&self) -> vision::ProcessorConfig {
        vision::ProcessorConfig {
            patch_size: self.patch_size,
            merge_size: self.merge_size,
            temporal_patch_size: self.temporal_patch_size,
            min_pixels: self.min_pixels,
            max_pixels: self.max_pixels,
            ..vision::ProcessorConfig::default()
        }
    }
}

/// One image as planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ImagePlan {
    /// The image's size as given (width, height).
    pub width: u32,
    pub height: u32,
    /// What the processor resizes it to (Qwen2-VL), else the size given.
    pub resized_width: u32,
    pub resized_height: u32,
    /// Patches the vision tower sees.
    pub patches: u64,
    /// Tokens the image adds to the language model's context.
    pub tokens: u64,
}

impl QwenGrid {
    /// The defaults of the Qwen2-VL processor on this tower's patch and merge sizes.
    pub(crate) fn new(patch: u64, merge: u64, temporal: u64) -> QwenGrid {
        let d = vision::ProcessorConfig::default();
        let small = |v: u64, d: u32| {
            u32::try_from(v)
                .ok()
                .filter(|v| (1..=1024).contains(v))
                .unwrap_or(d)
        };
        QwenGrid {
            patch_size: small(patch, d.patch_size),
            merge_size: small(merge, d.merge_size),
            temporal_patch_size: small(temporal, d.temporal_patch_size),
            min_pixels: d.min_pixels,
            max_pixels: d.max_pixels,
        }
    }

    /// `min_pixels`/`max_pixels` from the folder's `preprocessor_config.json`, when it has
    /// one (a bad one: the defaults stay, with a warning).
    pub(crate) fn read_preprocessor(
        &mut self,
        dir: &Path,
        warnings: &mut Vec<String>,
        bytes_read: &mut u64,
    ) {
        let path = dir.join("preprocessor_config.json");
        if !crate::fsread::present(&path) {
            return;
        }
        let parsed = crate::fsread::read_capped(
            &path,
            crate::fsread::MAX_CONFIG_BYTES,
            "preprocessor_config.json",
        )
        .map_err(|e| e.to_string())
        .and_then(|buf| {
            *bytes_read += buf.len() as u64;
            match serde_json::from_slice::<serde_json::Value>(&buf) {
                Ok(serde_json::Value::Object(mut m)) => {
                    // The vision_config's patch and merge sizes are what the tower uses.
                    m.insert("patch_size".into(), self.patch_size.into());
                    m.insert("merge_size".into(), self.merge_size.into());
                    m.insert(
                        "temporal_patch_size".into(),
                        self.temporal_patch_size.into(),
                    );
                    vision::ProcessorConfig::from_json(&m)
                }
                Ok(_) => Err("not a JSON object".into()),
                Err(e) => Err(format!("not JSON: {e}")),
            }
        });
        match parsed {
            Ok(c) => {
                self.min_pixels = c.min_pixels;
                self.max_pixels = c.max_pixels;
            }
            Err(e) => warnings.push(format!(
                "{}: {e}; images planned with the Qwen2-VL defaults",
                path.display()
            )),
        }
    }
}

/// One image of `size` (width, height; [`DEFAULT_IMAGE_SIZE`] when `None`) on `v`, or why
/// the processor would refuse it.
pub fn plan_image(v: &VisionDims, size: Option<(u32, u32)>) -> Result<ImagePlan, String> {
    let (width, height) = size.unwrap_or(DEFAULT_IMAGE_SIZE);
    match &v.qwen {
        Some(grid) => {
            let cfg = grid.processor();
            let (rh, rw) = vision::smart_resize(height, width, &cfg)
                .map_err(|e| format!("image {width}x{height}: {e}"))?;
            let (tokens, [_, gh, gw]) = vision::image_tokens(height, width, &cfg)
                .map_err(|e| format!("image {width}x{height}: {e}"))?;
            Ok(ImagePlan {
                width,
                height,
                resized_width: rw,
                resized_height: rh,
                patches: u64::from(gh) * u64::from(gw),
                tokens,
            })
        }
        None => Ok(ImagePlan {
            width,
            height,
            resized_width: width,
            resized_height: height,
            patches: v.patches_per_image,
            tokens: v.tokens_per_image,
        }),
    }
}
