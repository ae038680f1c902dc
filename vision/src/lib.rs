//! The image processor of the Qwen2-VL / Qwen2.5-VL family, without MLX: decode a PNG or
//! JPEG with its size capped before decoding, resize to the patch grid (smart resize +
//! Pillow's bicubic), normalize and patchify into the rows the vision tower reads.
//!
//! The numbers follow the reference processors exactly (mlx-vlm's `Qwen3VLImageProcessor`,
//! which mlx-vlm uses for Qwen2/2.5-VL, and transformers' `Qwen2VLImageProcessorPil`):
//! see `tests/reference.rs`.

mod config;
mod decode;
mod error;
mod patchify;
mod resample;
mod smart_resize;

pub use config::{ProcessorConfig, Rescale, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD};
pub use decode::{decode_bytes, decode_file, RgbImage, MAX_FILE_BYTES, MAX_PIXELS};
pub use error::ImageError;
pub use patchify::{patchify, process_file, process_image, resize_for_model, PixelValues};
pub use resample::resize_bicubic;
pub use smart_resize::{image_tokens, smart_resize, MAX_ASPECT_RATIO};
