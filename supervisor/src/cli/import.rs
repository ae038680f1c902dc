//! `mlxsup import`: a GGUF file converted into an MLX model folder ([`crate::import`]),
//! reported as one JSON object or a line for a person.

use std::{io::IsTerminal, path::PathBuf};

use estimate::Bytes;

use crate::{exit::Exit, import::import};

#[derive(clap::Args, Clone, Debug)]
pub struct ImportArgs {
    /// The GGUF file (or a folder holding one).
    pub gguf: PathBuf,
    /// The MLX model folder to write (must not exist, or be empty).
    pub dir: PathBuf,
    /// Dtype of dense tensors and of quantization scales [default: bf16 when nothing is
    /// carried quantized; else f16 (GGUF scales are f16: exact) on Metal and CUDA, and
    /// f32 (also exact) on MLX's CPU backend, whose f16 quantized kernels are ~40× slower].
    #[arg(long, value_parser = ["bf16", "f16", "f32"])]
    pub dtype: Option<String>,
    /// Dequantize every tensor to --dtype (a dense model) instead of carrying blocks.
    #[arg(long)]
    pub dense: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn main(args: ImportArgs) -> Exit {
    let progress = !args.json && std::io::stderr().is_terminal();
    match import(
        &args.gguf,
        &args.dir,
        args.dtype.as_deref(),
        !args.dense,
        progress,
    ) {
        Ok(r) => {
            if args.json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                println!(
                    "imported {} → {} ({} {}, {} of weights from {} in the file): {} tensors carried as MLX quantized weights ({} exact), {} as {}; {:.1} s",
                    r.source,
                    r.dir,
                    r.architecture,
                    r.dtype,
                    Bytes(r.weight_bytes),
                    Bytes(r.gguf_weight_bytes),
                    r.carried_exact + r.carried_rounded,
                    r.carried_exact,
                    r.dense,
                    r.dtype,
                    r.seconds
                );
                if r.rounded_scales > 0 {
                    println!(
                        "{} scales/biases rounded to {} (largest relative error {:.2e})",
                        r.rounded_scales, r.dtype, r.max_scale_rel_error
                    );
                }
            }
            Exit::Ok
        }
        Err((exit, msg)) => {
            eprintln!("mlxsup: import: {msg}");
            exit
        }
    }
}
