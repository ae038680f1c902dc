//! `Description`: a model's `config.json` read once — its family, dimensions, the plan
//! of every layer, multi-head latent attention, routed experts and the tower — for the
//! estimator to plan and the worker to build from.
use crate::dims::TextDims;
use crate::family::Family;
use crate::layers::{plan, LayerKind, LayerPlan};
use crate::limits::Implausible;
use crate::view::ConfigView;

/// Why a config cannot be described.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DescribeError {
    /// A number is outside its plausible range.
    #[error(transparent)]
    Implausible(#[from] Implausible),
    /// A field is missing or contradictory (the message names it).
    #[error("{0}")]
    Config(String),
    /// Read for the worker, whose families do not include this one
    /// ([`crate::unsupported`]'s message).
    #[error("{0}")]
    Unsupported(String),
}

/// Multi-head latent attention (DeepSeek V2/V3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mla {
    /// `kv_lora_rank`: the latent cached per token.
    pub kv_lora_rank: u64,
    /// `q_lora_rank`, when queries are compressed too.
    pub q_lora_rank: Option<u64>,
    /// `qk_rope_head_dim` (64 when unsaid).
    pub rope_head_dim: u64,
    /// `qk_nope_head_dim` (128 when unsaid).
    pub nope_head_dim: u64,
    /// `v_head_dim` (128 when unsaid).
    pub v_head_dim: u64,
}

/// Routed experts, as the estimator plans them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moe {
    /// Routed experts (> 1).
    pub experts: u64,
    /// Experts each token runs (2 when unsaid).
    pub top_k: u64,
    /// Each expert's MLP width.
    pub intermediate: u64,
    /// The shared experts' MLP width (0 when none).
    pub shared_intermediate: u64,
    /// Whether the shared expert has a gate (`shared_expert_intermediate_size` given).
    pub shared_gate: bool,
    /// Leading layers with a dense MLP (`first_k_dense_replace`).
    pub first_dense: u64,
    /// Every how many layers one is sparse (`moe_layer_freq`, `decoder_sparse_step`).
    pub every: u64,
    /// Layers with a dense MLP whatever the rest says (`mlp_only_layers`).
    pub mlp_only: Vec<u64>,
    /// `enable_moe_block` is not false (Gemma 4 can turn the experts off).
    pub block_enabled: bool,
}

impl Moe {
    /// Whether layer `i` routes its tokens to experts.
    pub fn is_sparse(&self, i: u64) -> bool {
        self.block_enabled
            && i >= self.first_dense
            && (i + 1).is_multiple_of(self.every)
            && !self.mlp_only.contains(&i)
    }
}

/// A model's config, described.
#[derive(Clone, Debug)]
pub struct Description {
    view: ConfigView,
    /// The top-level `model_type` (`"unknown"` when absent).
    pub model_type: String,
    /// The language model's `model_type`.
    pub text_model_type: String,
    /// The architecture.
    pub family: Family,
    /// The language model's dimensions.
    pub dims: TextDims,
    /// Every decoder layer, in order.
    pub layers: Vec<LayerPlan>,
    /// Multi-head latent attention, when the model uses it.
    pub mla: Option<Mla>,
    /// Routed experts, when the model has them.
    pub moe: Option<Moe>,
    /// `max_position_embeddings` (or an alias), when given.
    pub max_position_embeddings: Option<u64>,
    /// How the checkpoint stores its weights (the `quantization` /
    /// `quantization_config` objects, with per-layer overrides).
    pub quantization: crate::quantization::Quantization,
}

impl Description {
    /// Describes a parsed `config.json` object: every number within its range
    /// ([`crate::limits::check_config`]), then the description. The error names the
    /// field and the problem.
    pub fn new(
        root: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Description, DescribeError> {
        crate::limits::check_config(&root)?;
        let view = ConfigView::new(root);
        let model_type = view.model_type().to_string();
        let text_model_type = view.text_model_type().to_string();
        let family = Family::of_config(&view);
        let dims = TextDims::read(&view).map_err(DescribeError::Config)?;
        let layers = plan(&view, family, &dims);
        let mla = view
            .u64(&["kv_lora_rank"])
            .filter(|_| view.bool("use_mla") != Some(false))
            .map(|kv_lora_rank| Mla {
                kv_lora_rank,
                q_lora_rank: view.u64(&["q_lora_rank"]),
                rope_head_dim: view.u64(&["qk_rope_head_dim"]).unwrap_or(64),
                nope_head_dim: view.u64(&["qk_nope_head_dim"]).unwrap_or(128),
                v_head_dim: view.u64(&["v_head_dim"]).unwrap_or(128),
            });
        let moe = view
            .u64(&["num_local_experts", "num_experts", "n_routed_experts"])
            .filter(|&e| e > 1)
            .map(|experts| {
                let intermediate = view
                    .u64(&["moe_intermediate_size", "expert_intermediate_size"])
                    .unwrap_or(dims.intermediate);
                let shared_given = view.u64(&["shared_expert_intermediate_size"]);
                Moe {
                    experts,
                    top_k: view
                        .u64(&[
                            "num_experts_per_tok",
                            "top_k_experts",
                            "moe_top_k",
                            "experts_per_token",
                        ])
                        .unwrap_or(2),
                    intermediate,
                    shared_intermediate: shared_given
                        .or_else(|| view.u64(&["n_shared_experts"]).map(|n| n * intermediate))
                        .unwrap_or(0),
                    shared_gate: shared_given.is_some(),
                    first_dense: view.u64(&["first_k_dense_replace"]).unwrap_or(0),
                    every: view
                        .u64(&["moe_layer_freq", "decoder_sparse_step"])
                        .unwrap_or(1)
                        .max(1),
                    mlp_only: view.u64_list("mlp_only_layers").unwrap_or_default(),
                    block_enabled: view.bool("enable_moe_block") != Some(false),
                }
            });
        let max_position_embeddings = view.u64(&[
            "max_position_embeddings",
            "max_sequence_length",
            "seq_length",
            "n_positions",
        ]);
        let quantization = crate::quantization::Quantization::from_config(&view);
        Ok(Description {
            quantization,
            view,
            model_type,
            text_model_type,
            family,
            dims,
            layers,
            mla,
            moe,
            max_position_embeddings,
        })
    }

    /// [`Description::new`] for the worker: a `model_type` it does not run is refused
    /// first, by name with the list it runs, whatever else the config lacks.
    pub fn new_runnable(
        root: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Description, DescribeError> {
        crate::limits::check_config(&root)?;
        let view = ConfigView::new(root);
        if let Some(why) = crate::family::unsupported(view.model_type()) {
            return Err(DescribeError::Unsupported(why));
        }
        Description::new(view.into_root())
    }

    /// The config itself, for what only one reader needs (the estimator's tensor
    /// counting of families the worker does not run).
    pub fn view(&self) -> &ConfigView {
        &self.view
    }

    /// Whether the worker runs this model.
    pub fn worker_runs(&self) -> bool {
        Family::worker_runs(&self.model_type)
    }

    /// Why the worker cannot run this model (its `model_type`, what the worker lacks,
    /// the list it runs); `None` when it can.
    pub fn unsupported(&self) -> Option<String> {
        crate::family::unsupported(&self.model_type)
    }

    /// Every layer's kind.
    pub fn kinds(&self) -> impl Iterator<Item = LayerKind> + '_ {
        self.layers.iter().map(|l| l.kind)
    }
}
