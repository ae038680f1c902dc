//! `mlxsup make-model`: a deterministic random-weight model folder, written by a worker
//! (MLX quantizes it, so the format is exactly MLX's; the supervisor never links MLX).

use std::path::{Path, PathBuf};

use estimate::Bytes;
use protocol::{ModelSpec, Reply, Request};

use crate::{
    exit::Exit,
    supervise::{ReportContext, SpawnError, SpawnOptions, WorkerHandle},
};

#[derive(clap::Args, Clone, Debug)]
pub struct MakeModelArgs {
    /// Folder to write (must not exist, or be empty).
    pub dir: PathBuf,
    #[arg(long, value_parser = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3", "phi3", "mixtral", "qwen3_moe", "qwen2_5_vl", "qwen2_vl", "smollm3", "mimo", "qwen", "granitemoe"])]
    pub arch: String,
    #[arg(long, default_value_t = 256)]
    pub hidden: u32,
    #[arg(long, default_value_t = 4)]
    pub layers: u32,
    #[arg(long, default_value_t = 4)]
    pub heads: u32,
    /// Key/value heads (qwen: not read, every head of the first Qwen is one).
    #[arg(long, default_value_t = 2)]
    pub kv_heads: u32,
    #[arg(long, default_value_t = 512)]
    pub intermediate: u32,
    #[arg(long, default_value_t = 512)]
    pub vocab: u32,
    #[arg(long, default_value = "bf16", value_parser = ["bf16", "f16", "f32"])]
    pub dtype: String,
    #[arg(long, value_parser = ["2", "3", "4", "6", "8"])]
    pub quant_bits: Option<String>,
    #[arg(long, default_value_t = 64)]
    pub group_size: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub family: FamilyArgs,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The family options of `make-model` (issue 13).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct FamilyArgs {
    /// Routed experts per layer (mixtral, qwen3_moe, granitemoe; default 4).
    #[arg(long)]
    pub experts: Option<u32>,
    /// Experts per token (mixtral, qwen3_moe, granitemoe; default 2).
    #[arg(long)]
    pub experts_per_token: Option<u32>,
    /// Write the experts stacked (mlx-community's `switch_mlp`), not per expert.
    #[arg(long)]
    pub stacked_experts: bool,
    /// RoPE scaling `TYPE[:FACTOR]`: linear, dynamic, yarn, longrope, llama3, none.
    #[arg(long, value_name = "TYPE[:FACTOR]")]
    pub rope_scaling: Option<String>,
    /// The sliding window of the sliding-window layers (mistral, gemma2, gemma3_text).
    #[arg(long)]
    pub sliding_window: Option<u32>,
    /// `max_position_embeddings` of config.json.
    #[arg(long)]
    pub max_position: Option<u32>,
    /// qwen2_5_vl, qwen2_vl: write the Hugging Face layout (`visual.*`, `model.*`,
    /// `lm_head.*`, a channels-first patch embedding), as the original checkpoints ship.
    #[arg(long)]
    pub hf_layout: bool,
}

impl MakeModelArgs {
    pub fn spec(&self, dir: &Path) -> ModelSpec {
        ModelSpec {
            dir: dir.display().to_string(),
            arch: self.arch.clone(),
            hidden: self.hidden,
            layers: self.layers,
            heads: self.heads,
            kv_heads: self.kv_heads,
            intermediate: self.intermediate,
            vocab: self.vocab,
            dtype: self.dtype.clone(),
            quant_bits: self.quant_bits.as_deref().and_then(|b| b.parse().ok()),
            group_size: self.group_size,
            seed: self.seed,
            options: protocol::ModelOptions {
                experts: self.family.experts.unwrap_or(0),
                experts_per_token: self.family.experts_per_token.unwrap_or(0),
                stacked_experts: self.family.stacked_experts,
                rope_scaling: self.family.rope_scaling.clone(),
                sliding_window: self.family.sliding_window,
                max_position: self.family.max_position,
                hf_layout: self.family.hf_layout,
            },
        }
    }
}

/// Checks the shape of the model before any worker runs.
fn validate(a: &MakeModelArgs) -> Result<(), String> {
    if a.heads == 0
        || a.kv_heads == 0
        || a.layers == 0
        || a.hidden == 0
        || a.vocab == 0
        || a.intermediate == 0
    {
        return Err("sizes must be at least 1".into());
    }
    if !a.hidden.is_multiple_of(a.heads) {
        return Err(format!(
            "--hidden {} is not a multiple of --heads {}",
            a.hidden, a.heads
        ));
    }
    if !a.heads.is_multiple_of(a.kv_heads) {
        return Err(format!(
            "--heads {} is not a multiple of --kv-heads {}",
            a.heads, a.kv_heads
        ));
    }
    if a.family.experts == Some(0) || a.family.experts_per_token == Some(0) {
        return Err("--experts and --experts-per-token must be at least 1".into());
    }
    if ![32, 64, 128].contains(&a.group_size) {
        return Err(format!(
            "--group-size {} is not 32, 64 or 128",
            a.group_size
        ));
    }
    if a.quant_bits.is_some()
        && (!a.hidden.is_multiple_of(a.group_size) || !a.intermediate.is_multiple_of(a.group_size))
    {
        return Err(format!(
            "quantizing needs --hidden and --intermediate to be multiples of --group-size {}",
            a.group_size
        ));
    }
    Ok(())
}

pub fn main(args: MakeModelArgs) -> Exit {
    if let Err(e) = validate(&args) {
        eprintln!("mlxsup: make-model: {e}");
        return Exit::Usage;
    }
    if let Ok(mut entries) = std::fs::read_dir(&args.dir) {
        if entries.next().is_some() {
            eprintln!(
                "mlxsup: make-model: {} exists and is not empty; nothing was written (choose another folder or remove it)",
                args.dir.display()
            );
            return Exit::Usage;
        }
    }
    crate::rt::block_on(async {
        match make(&args, &args.dir).await {
            Ok(bytes) => {
                if args.json {
                    let v = serde_json::json!({"dir": args.dir.display().to_string(), "weight_bytes": bytes});
                    println!("{v}");
                } else {
                    println!("wrote {} ({} of weights)", args.dir.display(), Bytes(bytes));
                }
                Exit::Ok
            }
            Err((exit, msg)) => {
                eprintln!("mlxsup: make-model: {msg}");
                exit
            }
        }
    })
}

/// Writes the model into `dir` through a worker, via a sibling temporary folder renamed
/// into place, so a failure never leaves half a model behind.
pub async fn make(args: &MakeModelArgs, dir: &Path) -> Result<u64, (Exit, String)> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| {
        (
            Exit::Internal,
            format!("cannot create {}: {e}", parent.display()),
        )
    })?;
    let tmp = tempfile::Builder::new()
        .prefix(".mlxsup-make-model-")
        .tempdir_in(parent)
        .map_err(|e| {
            (
                Exit::Internal,
                format!("cannot create a folder in {}: {e}", parent.display()),
            )
        })?;
    let worker = WorkerHandle::spawn(SpawnOptions::utility(), ReportContext::default())
        .await
        .map_err(|e| match e {
            SpawnError::Setup(m) => (Exit::Internal, m),
            e => (Exit::WorkerFailed, e.to_string()),
        })?;
    let end = worker
        .call(
            Request::MakeModel(args.spec(tmp.path())),
            tokio_util::sync::CancellationToken::new(),
            |_| {},
        )
        .await;
    let bytes = match end.into_reply() {
        Ok(Reply::ModelMade { weight_bytes, .. }) => weight_bytes,
        Ok(other) => {
            worker.shutdown().await;
            return Err((Exit::Internal, format!("unexpected reply {other:?}")));
        }
        Err(m) => {
            worker.shutdown().await;
            return Err((Exit::WorkerFailed, m));
        }
    };
    worker.shutdown().await;
    crate::model_dir::move_into_place(tmp, dir)?;
    Ok(bytes)
}
