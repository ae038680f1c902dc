//! `Quantization`: how a checkpoint stores its linear layers (MLX affine with per-layer
//! overrides, MXFP4, bitsandbytes int8, compressed-tensors packed ints, FP8 blocks), and
//! the bytes one linear layer takes under it.
use serde_json::Value;

use crate::view::{as_u64, ConfigView as Config};

/// The storage scheme of a checkpoint's weights.
#[derive(Clone, Debug, PartialEq)]
pub enum Quantization {
    /// Plain tensors in the config's dtype.
    None,
    /// MLX affine quantization: `bits` per weight, one scale and one bias (in the model's
    /// dtype) per `group_size` weights; `overrides` per module path (`None` = left dense).
    MlxAffine {
        /// Default bits per weight.
        bits: u64,
        /// Default group size.
        group_size: u64,
        /// Per-module settings, keyed by module path.
        overrides: Vec<(String, Option<(u64, u64)>)>,
    },
    /// OpenAI MXFP4: MoE expert weights as 4-bit blocks with one u8 scale per 32 weights.
    Mxfp4 {
        /// Glob patterns of modules left unquantized.
        not_converted: Vec<String>,
    },
    /// bitsandbytes LLM.int8: int8 weights and an f32 scale per output row (`SCB`), for
    /// the linear layers inside the decoder layers.
    BnbInt8,
    /// bitsandbytes 4-bit (NF4/FP4): packed 4-bit weights plus small per-block state.
    Bnb4,
    /// compressed-tensors `pack-quantized` (AWQ/GPTQ exports): `bits`-bit ints packed in
    /// i32, one scale per `group_size` weights, modules in `ignore` left dense.
    PackQuantized {
        /// Bits per weight.
        bits: u64,
        /// Group size.
        group_size: u64,
        /// Module paths (or `re:` patterns) left dense.
        ignore: Vec<String>,
    },
    /// FP8 weights with an f32 inverse scale per block (DeepSeek).
    Fp8Block {
        /// Block rows and columns.
        block: (u64, u64),
    },
    /// A scheme this estimator does not model; weights are counted at the config's dtype.
    Unknown(String),
}

impl Quantization {
    /// Reads `quantization` (MLX) or `quantization_config` (Hugging Face) from a config.
    pub fn from_config(cfg: &Config) -> Quantization {
        if let Some(q) = cfg
            .root("quantization")
            .or_else(|| cfg.get("quantization"))
            .and_then(Value::as_object)
        {
            let bits = q.get("bits").and_then(as_u64).unwrap_or(4);
            let group_size = q.get("group_size").and_then(as_u64).unwrap_or(64);
            let overrides = q
                .iter()
                .filter_map(|(k, v)| match v {
                    Value::Bool(false) => Some((k.clone(), None)),
                    Value::Object(o) => Some((
                        k.clone(),
                        Some((
                            o.get("bits").and_then(as_u64).unwrap_or(bits),
                            o.get("group_size").and_then(as_u64).unwrap_or(group_size),
                        )),
                    )),
                    _ => None,
                })
                .collect();
            return Quantization::MlxAffine {
                bits,
                group_size,
                overrides,
            };
        }
        let Some(q) = cfg
            .root("quantization_config")
            .or_else(|| cfg.get("quantization_config"))
            .and_then(Value::as_object)
        else {
            return Quantization::None;
        };
        let strings = |key: &str| -> Vec<String> {
            q.get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("");
        match method {
            "mxfp4" => Quantization::Mxfp4 {
                not_converted: strings("modules_to_not_convert"),
            },
            "bitsandbytes" => {
                if q.get("load_in_4bit").and_then(Value::as_bool) == Some(true) {
                    Quantization::Bnb4
                } else {
                    Quantization::BnbInt8
                }
            }
            "fp8" => {
                let block = q
                    .get("weight_block_size")
                    .and_then(Value::as_array)
                    .and_then(|a| Some((as_u64(a.first()?)?, as_u64(a.get(1)?)?)))
                    .unwrap_or((128, 128));
                Quantization::Fp8Block { block }
            }
            "compressed-tensors" | "awq" | "gptq" | "" if q.get("config_groups").is_some() => {
                let weights = q
                    .get("config_groups")
                    .and_then(Value::as_object)
                    .and_then(|g| g.values().next())
                    .and_then(|g| g.get("weights"));
                let bits = weights
                    .and_then(|w| w.get("num_bits"))
                    .and_then(as_u64)
                    .unwrap_or(4);
                let group_size = weights
                    .and_then(|w| w.get("group_size"))
                    .and_then(as_u64)
                    .unwrap_or(128);
                Quantization::PackQuantized {
                    bits,
                    group_size,
                    ignore: strings("ignore"),
                }
            }
            _ => {
                // A config written by mlx-lm carries both `quantization` and a copy in
                // `quantization_config`; the first branch handles that. Anything else:
                if q.get("bits").is_some() && q.get("group_size").is_some() {
                    let bits = q.get("bits").and_then(as_u64).unwrap_or(4);
                    let group_size = q.get("group_size").and_then(as_u64).unwrap_or(64);
                    Quantization::MlxAffine {
                        bits,
                        group_size,
                        overrides: Vec::new(),
                    }
                } else {
                    Quantization::Unknown(method.to_string())
                }
            }
        }
    }

    /// Whether weights are stored quantized at all.
    pub fn is_quantized(&self) -> bool {
        !matches!(self, Quantization::None)
    }

    /// A short name (`mlx-affine 4-bit g64`).
    pub fn describe(&self) -> String {
        match self {
            Quantization::None => "none".to_string(),
            Quantization::MlxAffine {
                bits,
                group_size,
                overrides,
            } => {
                let o = if overrides.is_empty() {
                    String::new()
                } else {
                    format!(" ({} per-layer overrides)", overrides.len())
                };
                format!("mlx affine {bits}-bit group {group_size}{o}")
            }
            Quantization::Mxfp4 { .. } => "mxfp4".to_string(),
            Quantization::BnbInt8 => "bitsandbytes int8".to_string(),
            Quantization::Bnb4 => "bitsandbytes 4-bit".to_string(),
            Quantization::PackQuantized {
                bits, group_size, ..
            } => format!("packed int{bits} group {group_size}"),
            Quantization::Fp8Block { block } => format!("fp8 blocks {}x{}", block.0, block.1),
            Quantization::Unknown(m) => format!("unknown ({m})"),
        }
    }

    /// Bytes of one linear layer `path` with weight `[out, inp]` (no bias), with weights
    /// otherwise stored at `dtype_bytes` per element. `kind` says what the layer is.
    pub fn linear_bytes(
        &self,
        path: &str,
        kind: LinearKind,
        out: u64,
        inp: u64,
        dtype_bytes: u64,
    ) -> u64 {
        let dense = out * inp * dtype_bytes;
        match self {
            Quantization::None | Quantization::Unknown(_) => dense,
            Quantization::MlxAffine {
                bits,
                group_size,
                overrides,
            } => {
                let (bits, group) = match overrides.iter().find(|(k, _)| same_module(k, path)) {
                    Some((_, None)) => return dense,
                    Some((_, Some(bg))) => *bg,
                    None => (*bits, *group_size),
                };
                if group == 0 || !inp.is_multiple_of(group) {
                    return dense;
                }
                out * inp * bits / 8 + 2 * out * (inp / group) * dtype_bytes
            }
            Quantization::Mxfp4 { not_converted } => {
                if kind != LinearKind::Expert || not_converted.iter().any(|p| glob_prefix(p, path))
                {
                    dense
                } else {
                    out * inp / 2 + out * inp.div_ceil(32)
                }
            }
            Quantization::BnbInt8 => match kind {
                LinearKind::Layer | LinearKind::Expert => out * inp + out * 4 + 1,
                _ => dense,
            },
            Quantization::Bnb4 => match kind {
                LinearKind::Layer | LinearKind::Expert => {
                    out * inp / 2 + (out * inp).div_ceil(64) * 4 + 64
                }
                _ => dense,
            },
            Quantization::PackQuantized {
                bits,
                group_size,
                ignore,
            } => {
                let ignored = ignore.iter().any(|p| match p.strip_prefix("re:") {
                    Some(re) => simple_regex(re, path),
                    None => same_module(p, path),
                });
                if ignored
                    || matches!(
                        kind,
                        LinearKind::Embedding | LinearKind::Head | LinearKind::Vision
                    )
                {
                    dense
                } else {
                    out * inp * bits / 8 + out * inp.div_ceil(*group_size) * 2 + 16
                }
            }
            Quantization::Fp8Block { block } => match kind {
                LinearKind::Layer | LinearKind::Expert => {
                    out * inp + out.div_ceil(block.0) * inp.div_ceil(block.1) * 4
                }
                _ => dense,
            },
        }
    }

    /// Bytes of an embedding table `[vocab, hidden]`: MLX quantizes embeddings too.
    pub fn embedding_bytes(&self, path: &str, vocab: u64, hidden: u64, dtype_bytes: u64) -> u64 {
        match self {
            Quantization::MlxAffine { .. } => {
                self.linear_bytes(path, LinearKind::Layer, vocab, hidden, dtype_bytes)
            }
            _ => vocab * hidden * dtype_bytes,
        }
    }
}

/// What a linear layer is, for schemes that quantize only some of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearKind {
    /// A projection inside a decoder layer (attention, dense MLP, router).
    Layer,
    /// An MoE expert's projection.
    Expert,
    /// The token embedding.
    Embedding,
    /// The output head (`lm_head`).
    Head,
    /// A vision-tower or projector layer.
    Vision,
}

/// Whether two module paths name the same module, ignoring the wrappers VLM checkpoints
/// put in front (`language_model.`, `model.language_model.`, `model.`).
pub fn same_module(a: &str, b: &str) -> bool {
    strip_wrappers(a) == strip_wrappers(b)
}

fn strip_wrappers(mut s: &str) -> &str {
    loop {
        let before = s;
        for p in ["model.", "language_model.", "text_model."] {
            s = s.strip_prefix(p).unwrap_or(s);
        }
        if s == before {
            return s;
        }
    }
}

/// Whether glob `pattern` (`*` = any run of characters) matches `path` or a parent of it.
pub fn glob_prefix(pattern: &str, path: &str) -> bool {
    fn matches(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty() || s[0] == b'.',
            Some((b'*', rest)) => (0..=s.len()).any(|i| matches(rest, &s[i..])),
            Some((c, rest)) => s.first() == Some(c) && matches(rest, &s[1..]),
        }
    }
    matches(pattern.as_bytes(), path.as_bytes())
        || matches(pattern.as_bytes(), strip_wrappers(path).as_bytes())
}

/// A tiny regex subset for compressed-tensors `re:` entries: `.*` wildcards and escaped
/// dots, anchored at the start like Python's `re.match`.
fn simple_regex(re: &str, path: &str) -> bool {
    let pattern = re
        .trim_end_matches('$')
        .replace(".*", "*")
        .replace("\\.", ".");
    glob_prefix(&pattern, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_ignore_wrappers() {
        assert!(same_module(
            "language_model.model.layers.0.mlp.gate",
            "model.layers.0.mlp.gate"
        ));
        assert!(!same_module(
            "model.layers.1.mlp.gate",
            "model.layers.10.mlp.gate"
        ));
        assert!(glob_prefix(
            "model.layers.*.self_attn",
            "model.layers.3.self_attn.q_proj"
        ));
        assert!(!glob_prefix(
            "model.layers.*.self_attn",
            "model.layers.3.mlp.experts"
        ));
        assert!(glob_prefix("lm_head", "lm_head"));
    }

    #[test]
    fn mlx_affine_bytes() {
        let q = Quantization::MlxAffine {
            bits: 4,
            group_size: 64,
            overrides: vec![
                ("model.layers.0.mlp.down_proj".into(), Some((8, 64))),
                ("model.layers.1.mlp.gate".into(), None),
            ],
        };
        // 4-bit: 128×256/2 weights + 2 × 128 × 4 groups × 2 bytes.
        assert_eq!(
            q.linear_bytes(
                "model.layers.2.mlp.down_proj",
                LinearKind::Layer,
                128,
                256,
                2
            ),
            16384 + 2048
        );
        assert_eq!(
            q.linear_bytes(
                "model.layers.0.mlp.down_proj",
                LinearKind::Layer,
                128,
                256,
                2
            ),
            32768 + 2048
        );
        assert_eq!(
            q.linear_bytes("model.layers.1.mlp.gate", LinearKind::Layer, 8, 256, 2),
            8 * 256 * 2
        );
        // Not divisible by the group size: left dense.
        assert_eq!(q.linear_bytes("x", LinearKind::Layer, 10, 100, 2), 2000);
    }
}
