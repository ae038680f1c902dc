//! The routed experts of the MoE families the worker runs (Mixtral, Qwen3-MoE, Granite
//! MoE), as
//! mlx-lm 0.32.2 reads them.
use serde_json::Value;

use super::{load_failed, ConfigError, Decoder};

/// How the router's scores become expert weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// Mixtral: the top-k logits, then a softmax over those k.
    TopKSoftmax,
    /// Qwen3-MoE: a softmax over all experts, then the top k (renormalised if `norm`).
    SoftmaxTopK { norm: bool },
    /// Granite MoE: the top-k logits, a softmax over those k in float32, the experts'
    /// outputs mixed in float32 and cast back.
    TopKSoftmaxF32,
}

/// The expert configuration of a MoE model.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub experts: i32,
    pub top_k: i32,
    /// Hidden size of each expert's MLP.
    pub intermediate: i32,
    pub routing: Routing,
    /// Per layer: routed experts (true) or a dense MLP.
    pub layers: Vec<bool>,
}

fn int(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

impl MoeConfig {
    /// The experts of a Mixtral, Qwen3-MoE or Granite MoE config; `None` for the dense families.
    pub fn parse(
        v: &Value,
        family: Decoder,
        layers: usize,
        source: &str,
    ) -> Result<Option<MoeConfig>, ConfigError> {
        let (experts, top_k, inter, routing, which) = match family {
            Decoder::Mixtral => (
                int(v, "num_local_experts").unwrap_or(8),
                int(v, "num_experts_per_tok").unwrap_or(2),
                int(v, "intermediate_size").unwrap_or(0),
                Routing::TopKSoftmax,
                vec![true; layers],
            ),
            Decoder::Qwen3Moe => {
                let step = int(v, "decoder_sparse_step").unwrap_or(1).max(1) as usize;
                let dense: Vec<i64> = v
                    .get("mlp_only_layers")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_i64).collect())
                    .unwrap_or_default();
                let n = int(v, "num_experts").unwrap_or(0);
                let which = (0..layers)
                    .map(|i| n > 0 && !dense.contains(&(i as i64)) && (i + 1) % step == 0)
                    .collect();
                (
                    n,
                    int(v, "num_experts_per_tok").unwrap_or(0),
                    int(v, "moe_intermediate_size").unwrap_or(0),
                    Routing::SoftmaxTopK {
                        norm: v
                            .get("norm_topk_prob")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                    },
                    which,
                )
            }
            Decoder::GraniteMoe => (
                int(v, "num_local_experts").unwrap_or(0),
                int(v, "num_experts_per_tok").unwrap_or(0),
                int(v, "intermediate_size").unwrap_or(0),
                Routing::TopKSoftmaxF32,
                vec![true; layers],
            ),
            _ => return Ok(None),
        };
        let fit = |key: &str, n: i64| {
            i32::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| load_failed(format!("{source}: {key} {n} is not a positive size")))
        };
        let (experts, top_k) = (fit("experts", experts)?, fit("num_experts_per_tok", top_k)?);
        if top_k > experts {
            return Err(load_failed(format!(
                "{source}: num_experts_per_tok {top_k} is more than the {experts} experts"
            )));
        }
        Ok(Some(MoeConfig {
            experts,
            top_k,
            intermediate: fit("the experts' intermediate size", inter)?,
            routing,
            layers: which,
        }))
    }
}
