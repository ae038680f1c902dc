//! The switches of the families issue 24 added on the shared decoder, as mlx-lm 0.32.2
//! reads them: SmolLM3's layers without RoPE, Granite MoE's multipliers, and the first
//! Qwen's dimensions and tensor names (mapped onto the decoder's).

use serde_json::Value;

use super::{load_failed, num, ConfigError, Decoder};

/// Granite MoE's scalings (`granitemoe.py`), each required by mlx-lm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Multipliers {
    /// The embeddings are multiplied by it.
    pub embedding: f32,
    /// The attention's and the experts' outputs are multiplied by it before each
    /// residual add.
    pub residual: f32,
    /// The logits are divided by it.
    pub logits_scaling: f32,
}

/// A number mlx-lm requires (a dataclass field without a default).
pub(super) fn required(v: &Value, key: &str, source: &str) -> Result<f64, ConfigError> {
    num(v, key)
        .filter(|x| x.is_finite())
        .ok_or_else(|| load_failed(format!("{source}: `{key}` is missing or not a number")))
}

impl Multipliers {
    pub(super) fn read(v: &Value, source: &str) -> Result<Multipliers, ConfigError> {
        let logits_scaling = required(v, "logits_scaling", source)?;
        if logits_scaling == 0.0 {
            return Err(load_failed(format!(
                "{source}: `logits_scaling` is 0 (the logits are divided by it)"
            )));
        }
        Ok(Multipliers {
            embedding: required(v, "embedding_multiplier", source)? as f32,
            residual: required(v, "residual_multiplier", source)? as f32,
            logits_scaling: logits_scaling as f32,
        })
    }
}

/// Per layer, whether it rotates queries and keys: SmolLM3's `no_rope_layers` (1 =
/// RoPE), else every `no_rope_layer_interval`-th layer (default 4) without; every
/// layer for the other families.
pub(super) fn rope_layers(
    v: &Value,
    family: Decoder,
    layers: usize,
    source: &str,
) -> Result<Vec<bool>, ConfigError> {
    if family != Decoder::SmolLm3 {
        return Ok(vec![true; layers]);
    }
    match v.get("no_rope_layers").filter(|x| !x.is_null()) {
        Some(list) => {
            let list = list
                .as_array()
                .ok_or_else(|| load_failed(format!("{source}: `no_rope_layers` is not a list")))?;
            if list.len() != layers {
                return Err(load_failed(format!(
                    "{source}: `no_rope_layers` has {} entries for {layers} layers",
                    list.len()
                )));
            }
            list.iter()
                .map(
                    |x| match x.as_i64().or_else(|| x.as_bool().map(i64::from)) {
                        Some(n) => Ok(n != 0),
                        None => Err(load_failed(format!(
                            "{source}: `no_rope_layers` holds {x}, not 0 or 1"
                        ))),
                    },
                )
                .collect()
        }
        None => {
            let interval = match v.get("no_rope_layer_interval") {
                None | Some(Value::Null) => 4,
                Some(x) => x.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                    load_failed(format!(
                        "{source}: `no_rope_layer_interval` {x} is not a positive integer"
                    ))
                })?,
            };
            Ok((0..layers as u64)
                .map(|i| !(i + 1).is_multiple_of(interval))
                .collect())
        }
    }
}

/// The first Qwen's MLP width (`intermediate_size // 2`), after checking what
/// `qwen.py` assumes: `kv_channels × num_attention_heads = hidden_size`.
pub(super) fn qwen_checks(
    v: &Value,
    hidden: i32,
    heads: i32,
    intermediate: i32,
    source: &str,
) -> Result<i32, ConfigError> {
    let kv_channels = num(v, "kv_channels").unwrap_or(128.0);
    if kv_channels * f64::from(heads) != f64::from(hidden) {
        return Err(load_failed(format!(
            "{source}: kv_channels {kv_channels} × num_attention_heads {heads} is not hidden_size {hidden} (mlx-lm's qwen needs them equal)"
        )));
    }
    if intermediate < 2 {
        return Err(load_failed(format!(
            "{source}: intermediate_size {intermediate} is too small (each of w1, w2 is half of it)"
        )));
    }
    Ok(intermediate / 2)
}

/// The decoder's name for a tensor (or module path) of a first-Qwen checkpoint:
/// `transformer.wte` → `model.embed_tokens`, `transformer.h.N` → `model.layers.N`,
/// `ln_1`/`ln_2` → the block's norms, `attn.c_attn` → `self_attn.qkv_proj`,
/// `attn.c_proj` → `self_attn.o_proj`, `mlp.w2`/`w1`/`c_proj` → `mlp.gate_proj`/
/// `up_proj`/`down_proj` (qwen.py's `swiglu(w2(x), w1(x))`), `transformer.ln_f` →
/// `model.norm`. `None` for a name it leaves as it is (`lm_head.*`).
pub fn qwen_weight_name(name: &str) -> Option<String> {
    let rest = name.strip_prefix("transformer.")?;
    if let Some(r) = rest.strip_prefix("wte") {
        return Some(format!("model.embed_tokens{r}"));
    }
    if let Some(r) = rest.strip_prefix("ln_f") {
        return Some(format!("model.norm{r}"));
    }
    let r = rest.strip_prefix("h.")?;
    let (layer, tail) = r.split_once('.')?;
    const MAP: &[(&str, &str)] = &[
        ("ln_1", "input_layernorm"),
        ("ln_2", "post_attention_layernorm"),
        ("attn.c_attn", "self_attn.qkv_proj"),
        ("attn.c_proj", "self_attn.o_proj"),
        ("mlp.w2", "mlp.gate_proj"),
        ("mlp.w1", "mlp.up_proj"),
        ("mlp.c_proj", "mlp.down_proj"),
    ];
    MAP.iter().find_map(|(from, to)| {
        let after = tail.strip_prefix(from)?;
        (after.is_empty() || after.starts_with('.'))
            .then(|| format!("model.layers.{layer}.{to}{after}"))
    })
}

/// The quantization's per-layer entries under the decoder's names.
pub(super) fn qwen_quant_paths(
    q: serde_json::Map<String, Value>,
) -> serde_json::Map<String, Value> {
    q.into_iter()
        .map(|(k, x)| (qwen_weight_name(&k).unwrap_or(k), x))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::qwen_weight_name as n;

    #[test]
    fn qwen_names_map_onto_the_decoders() {
        let cases = [
            ("transformer.wte.weight", "model.embed_tokens.weight"),
            ("transformer.wte.scales", "model.embed_tokens.scales"),
            ("transformer.ln_f.weight", "model.norm.weight"),
            (
                "transformer.h.0.ln_1.weight",
                "model.layers.0.input_layernorm.weight",
            ),
            (
                "transformer.h.12.ln_2.weight",
                "model.layers.12.post_attention_layernorm.weight",
            ),
            (
                "transformer.h.3.attn.c_attn.bias",
                "model.layers.3.self_attn.qkv_proj.bias",
            ),
            (
                "transformer.h.3.attn.c_proj.weight",
                "model.layers.3.self_attn.o_proj.weight",
            ),
            (
                "transformer.h.3.mlp.w2.biases",
                "model.layers.3.mlp.gate_proj.biases",
            ),
            (
                "transformer.h.3.mlp.w1.weight",
                "model.layers.3.mlp.up_proj.weight",
            ),
            ("transformer.h.3.mlp.c_proj", "model.layers.3.mlp.down_proj"),
        ];
        for (from, to) in cases {
            assert_eq!(n(from).as_deref(), Some(to), "{from}");
        }
        for kept in [
            "lm_head.weight",
            "transformer.h.3.mlp.w10.weight",
            "transformer.h.3.attn.rotary_emb.inv_freq",
            "model.layers.0.input_layernorm.weight",
        ] {
            assert_eq!(n(kept), None, "{kept}");
        }
    }
}
