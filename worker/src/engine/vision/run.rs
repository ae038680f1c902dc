//! A vision-language model in the engine: its tower and processor settings loaded
//! beside the language model, and a request's images turned into the prompt's inputs
//! (expanded image tokens, spliced embeddings, multimodal positions) for the one
//! generation loop.

use std::path::Path;

use mlx_rs::Array;
use protocol::{GenerateRequest, ImageInput, Prompt, WorkerError};
use vision::{PixelValues, ProcessorConfig, RgbImage};

use super::super::config::ModelConfig;
use super::super::error::{bad_request, load_failed, MlxResultExt};
use super::super::generate::Prepared;
use super::super::weights::WeightStore;
use super::super::Engine;
use super::mrope;
use super::qwen25::VisionTower;
use super::splice;

/// The vision half of a loaded vision-language model.
pub struct Vision {
    pub tower: VisionTower,
    pub processor: ProcessorConfig,
}

impl Vision {
    /// Takes the `vision_tower.*` tensors out of `store` and reads the folder's
    /// processor settings. The tower is kept as stored (mlx-community ships it
    /// unquantized); a quantized one is refused by name.
    pub fn load(
        dir: &Path,
        cfg: &ModelConfig,
        store: &mut WeightStore,
    ) -> Result<Vision, WorkerError> {
        let Some(vl) = &cfg.vl else {
            return Err(load_failed("not a vision-language model"));
        };
        let mut weights = store.take_prefixed("vision_tower.");
        if let Some(q) = weights.keys().find(|n| n.ends_with(".scales")) {
            return Err(load_failed(format!(
                "{q}: a quantized vision tower is not supported (in {})",
                dir.display()
            )));
        }
        let tower = VisionTower::load(vl.tower.clone(), &mut weights)
            .map_err(|e| load_failed(format!("{e} (in {})", dir.display())))?;
        let processor =
            ProcessorConfig::from_model_dir(dir).map_err(|e| load_failed(e.to_string()))?;
        Ok(Vision { tower, processor })
    }

    /// Bytes of the tower's weights.
    pub fn weight_bytes(&self) -> u64 {
        self.tower.weight_bytes()
    }
}

/// The pixel values of the request's images (each at its processed size already).
pub fn pixel_values(
    vision: &Vision,
    images: &[ImageInput],
) -> Result<Vec<(usize, PixelValues)>, WorkerError> {
    images
        .iter()
        .enumerate()
        .map(|(i, im)| {
            let img = RgbImage {
                width: im.width,
                height: im.height,
                data: im.rgb.clone(),
            };
            let pv = vision::patchify(&img, &vision.processor)
                .map_err(|e| bad_request(format!("image {}: {e}", i + 1)))?;
            Ok((im.message as usize, pv))
        })
        .collect()
}

impl Engine {
    /// Generates for a prompt with images: `images` are (chat message, pixel values),
    /// in prompt order.
    pub fn generate_images(
        &mut self,
        req: &GenerateRequest,
        images: &[(usize, PixelValues)],
        opts: &super::super::GenerateOptions,
        hooks: &mut dyn super::super::Hooks,
    ) -> Result<protocol::DoneInfo, WorkerError> {
        // The tower runs before the first prefill chunk: the soft guard is asked first,
        // with the estimate's vision term for these images (its coefficients).
        hooks.phase(protocol::Phase::Prefill);
        let predicted = self.tower_bytes(images);
        hooks
            .before_step(protocol::Phase::Prefill, 0, predicted)
            .map_err(|mut e| {
                if e.kind == protocol::WorkerErrorKind::MemoryBudgetExceeded {
                    e.message = format!(
                        "the vision tower on {} image(s): {}",
                        images.len(),
                        e.message
                    );
                }
                e
            })?;
        let (ids, prepared, activation_bytes) = self.prepare_images(&req.prompt, images)?;
        hooks.vision(&protocol::VisionPeak {
            patches: images.iter().map(|(_, p)| p.rows as u64).collect(),
            activation_bytes,
            predicted_bytes: predicted,
        });
        let result = super::super::generate::run(self, &ids, req, opts, &prepared, hooks);
        if result.is_err() {
            let _ = mlx_rs::memory::clear_cache();
        }
        result
    }

    /// The tower's predicted activation bytes for `images` (the estimate's vision term,
    /// with the load's coefficients).
    fn tower_bytes(&self, images: &[(usize, PixelValues)]) -> u64 {
        let Some(vl) = &self.model.cfg.vl else {
            return 0;
        };
        let t = &vl.tower;
        let elem = super::super::generate::elem_bytes(self.model.dtype());
        let shape = estimate::vision_activation::TowerShape {
            heads: t.heads as u64,
            hidden: t.hidden as u64,
            intermediate: t.intermediate as u64,
            all_full_attention: t.qwen2,
            values_per_patch: images.first().map_or(0, |(_, p)| p.cols as u64),
        };
        let patches: Vec<u64> = images.iter().map(|(_, p)| p.rows as u64).collect();
        self.activation.vision.predict(&shape, elem, &patches)
    }

    /// The prompt's ids with the image tokens expanded, its embeddings and positions
    /// with the images in, and the MLX peak the tower reached above what MLX held when
    /// it started.
    pub(in super::super) fn prepare_images(
        &self,
        prompt: &Prompt,
        images: &[(usize, PixelValues)],
    ) -> Result<(Vec<u32>, Prepared, u64), WorkerError> {
        let (Some(vision), Some(vl)) = (&self.vision, &self.model.cfg.vl) else {
            return Err(bad_request(format!(
                "{} is not a vision-language model: it takes no images",
                self.model.cfg.model_type
            )));
        };
        let ids = match prompt {
            Prompt::Chat(messages) => {
                let mut per = vec![0usize; messages.len()];
                for (m, _) in images {
                    match per.get_mut(*m) {
                        Some(n) => *n += 1,
                        None => {
                            return Err(bad_request(format!(
                                "an image belongs to message {m}, but the chat has {} message(s)",
                                messages.len()
                            )))
                        }
                    }
                }
                let text = self.prompts.render_with_images(messages, &per)?;
                self.tokenizer.encode(&text, false)?
            }
            other => self.prompt_ids(other)?,
        };
        let merge = vision.processor.merge_size;
        let counts: Vec<usize> = images
            .iter()
            .map(|(_, p)| p.rows / (merge * merge) as usize)
            .collect();
        let ids =
            splice::expand_image_tokens(&ids, vl.tokens.image, &counts).map_err(bad_request)?;
        if ids.last() == Some(&vl.tokens.image) {
            return Err(bad_request("the prompt ends with an image token"));
        }
        let grids: Vec<[u32; 3]> = images.iter().map(|(_, p)| p.grid_thw).collect();
        let (positions, delta) =
            mrope::positions(&ids, &grids, merge, vl.tokens).map_err(bad_request)?;
        let pixels: Vec<PixelValues> = images.iter().map(|(_, p)| p.clone()).collect();
        let _ = mlx_rs::memory::clear_cache();
        let held = crate::peak::active();
        let (features, tower_peak) = crate::peak::during(|| {
            let f = splice::image_features(&vision.tower, &pixels)?;
            f.eval()?;
            Ok::<_, mlx_rs::error::Exception>(f)
        });
        let features = features.ctx("vision tower")?;
        let as_i32: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
        let input = Array::from_slice(&as_i32, &[1, ids.len() as i32]);
        let embeds = self.model.embed(&input).ctx("embedding the prompt")?;
        let embeds =
            splice::splice(&embeds, &ids, vl.tokens.image, &features).ctx("splicing the images")?;
        embeds.eval().ctx("splicing the images")?;
        drop(features);
        let _ = mlx_rs::memory::clear_cache();
        Ok((
            ids,
            Prepared {
                embeds: Some(embeds),
                positions: Some(positions),
                delta,
            },
            tower_peak.saturating_sub(held),
        ))
    }
}
