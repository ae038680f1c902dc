//! Analytic weight bytes from `config.json` (and the quantization it names): embeddings,
//! attention (with biases, q/k norms, MLA, linear attention, convolutions), dense MLP or
//! MoE experts, norms, `lm_head` unless tied, MTP heads and the vision tower.
//!
//! Shapes come from the config. When tensor names are known (from the shard index or
//! the headers) they decide the presence of optional tensors — biases, q/k norms, the
//! number of norms per layer, a stored `lm_head` despite tied embeddings, MTP layers — so
//! the analytic figure describes the checkpoint actually published.
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::dtype::Dtype;
use crate::error::EstimateError;
use crate::quantization::Quantization;

mod counter;
mod decoder;
mod families;
mod vision_tower;

pub use ::model::{LayerKind, TextDims};
use counter::Counter;
use decoder::decoder;
use families::{falcon, lfm2, qwen1};
use vision_tower::vision_tower;

/// Analytic weight bytes, per component.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WeightParts {
    /// Token embeddings (and per-layer input embeddings).
    pub embedding: u64,
    /// The decoder layers.
    pub layers: u64,
    /// The output head (0 when tied).
    pub lm_head: u64,
    /// Vision tower and projector.
    pub vision: u64,
    /// Multi-token-prediction heads and other extras.
    pub extra: u64,
}

impl WeightParts {
    /// Sum of all parts.
    pub fn total(&self) -> u64 {
        self.embedding + self.layers + self.lm_head + self.vision + self.extra
    }
}

/// The result of the analytic model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnalyticWeights {
    /// Bytes per component.
    pub parts: WeightParts,
    /// The dtype assumed for unquantized tensors.
    pub dtype: Dtype,
    /// Notes on assumptions made (missing dtype, unknown vision tower, …).
    pub notes: Vec<String>,
}

/// Tensor names known from the index or headers, for presence checks.
#[derive(Clone, Copy, Debug)]
pub struct Names<'a>(pub Option<&'a BTreeSet<String>>);

impl Names<'_> {
    /// Whether any name ends with `suffix` (`None` when no names are known).
    pub fn has_suffix(&self, suffix: &str) -> Option<bool> {
        self.0.map(|n| n.iter().any(|s| s.ends_with(suffix)))
    }

    /// Whether any name contains `part`.
    pub fn contains(&self, part: &str) -> Option<bool> {
        self.0.map(|n| n.iter().any(|s| s.contains(part)))
    }

    /// The names inside each decoder layer (after `.layers.{i}.`), vision and MTP excluded.
    fn per_layer(&self) -> Option<BTreeMap<u64, BTreeSet<String>>> {
        let names = self.0?;
        let mut m: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
        for s in names {
            if s.contains("vision") || s.contains("visual") || s.contains("mtp") {
                continue;
            }
            let Some(p) = s.find(".layers.") else {
                continue;
            };
            let rest = &s[p + 8..];
            let Some((num, tail)) = rest.split_once('.') else {
                continue;
            };
            if let Ok(i) = num.parse::<u64>() {
                m.entry(i).or_default().insert(tail.to_string());
            }
        }
        Some(m)
    }
}

/// Names of layer `i` matching `pred`, when names are known.
fn layer_names(
    per_layer: &Option<BTreeMap<u64, BTreeSet<String>>>,
    i: u64,
    pred: impl Fn(&str) -> bool,
) -> Option<BTreeSet<String>> {
    per_layer.as_ref().map(|m| {
        m.get(&i)
            .map(|set| set.iter().filter(|s| pred(s)).cloned().collect())
            .unwrap_or_default()
    })
}

/// Computes the analytic weight bytes of the model `cfg` describes.
pub fn analytic_weights(
    cfg: &Config,
    quant: &Quantization,
    names: Names<'_>,
) -> Result<AnalyticWeights, EstimateError> {
    let mut notes = Vec::new();
    let dtype = match cfg.dtype() {
        Some(d) => d,
        None => {
            notes.push("config names no dtype; assumed bfloat16".to_string());
            Dtype::Bf16
        }
    };
    let mut c = Counter {
        quant,
        dt: dtype.bits() / 8,
        parts: WeightParts::default(),
    };
    if let Quantization::Unknown(m) = quant {
        notes.push(format!(
            "quantization method `{m}` is not modelled; weights counted at {dtype}"
        ));
    }
    let text = cfg.description().dims.clone();
    match cfg.text_model_type() {
        "falcon" | "RefinedWeb" | "RefinedWebModel" => falcon(cfg, &text, &mut c, names),
        "qwen" => qwen1(cfg, &text, &mut c),
        "lfm2" => lfm2(cfg, &text, &mut c)?,
        _ => decoder(cfg, &text, &mut c, names)?,
    }
    if let Some(vision) = cfg.vision() {
        if !vision_tower(cfg, vision, &text, &mut c, names)? {
            notes.push(format!(
                "vision tower `{}` is not modelled; its weights are not counted",
                vision
                    .get("model_type")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
            ));
        }
    }
    Ok(AnalyticWeights {
        parts: c.parts,
        dtype,
        notes,
    })
}
