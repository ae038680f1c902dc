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
use serde_json::{Map, Value};

use crate::config::{map_u64, Config};
use crate::dtype::Dtype;
use crate::error::EstimateError;
use crate::quantization::{LinearKind, Quantization};

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

/// Accumulates bytes per component.
struct Counter<'a> {
    quant: &'a Quantization,
    dt: u64,
    parts: WeightParts,
}

#[derive(Clone, Copy)]
enum Part {
    Embedding,
    Layers,
    Head,
    Vision,
    Extra,
}

impl Counter<'_> {
    fn slot(&mut self, part: Part) -> &mut u64 {
        match part {
            Part::Embedding => &mut self.parts.embedding,
            Part::Layers => &mut self.parts.layers,
            Part::Head => &mut self.parts.lm_head,
            Part::Vision => &mut self.parts.vision,
            Part::Extra => &mut self.parts.extra,
        }
    }

    /// Unquantized elements (norms, biases, convolutions, position tables).
    fn dense(&mut self, part: Part, elements: u64) {
        let b = elements.saturating_mul(self.dt);
        let slot = self.slot(part);
        *slot = slot.saturating_add(b);
    }

    /// A linear layer `[out, inp]`, quantized per the scheme, plus an optional bias.
    fn linear(&mut self, part: Part, path: &str, out: u64, inp: u64, bias: bool) {
        let kind = match part {
            Part::Vision => LinearKind::Vision,
            Part::Head => LinearKind::Head,
            Part::Embedding => LinearKind::Embedding,
            _ => LinearKind::Layer,
        };
        let b = self.quant.linear_bytes(path, kind, out, inp, self.dt);
        let slot = self.slot(part);
        *slot = slot.saturating_add(b);
        if bias {
            self.dense(part, out);
        }
    }

    /// `count` MoE experts' linear layers `[out, inp]`.
    fn experts(&mut self, part: Part, path: &str, count: u64, out: u64, inp: u64) {
        let b = count.saturating_mul(self.quant.linear_bytes(
            path,
            LinearKind::Expert,
            out,
            inp,
            self.dt,
        ));
        let slot = self.slot(part);
        *slot = slot.saturating_add(b);
    }
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
    let text = TextDims::read(cfg)?;
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

/// The language model's main dimensions.
#[derive(Clone, Debug)]
pub struct TextDims {
    /// Hidden size.
    pub hidden: u64,
    /// Decoder layers.
    pub layers: u64,
    /// Query heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Per-head dimension.
    pub head_dim: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// Dense MLP intermediate size (0 when unknown).
    pub intermediate: u64,
}

impl TextDims {
    /// Reads the dimensions, with the aliases of the families covered.
    pub fn read(cfg: &Config) -> Result<TextDims, EstimateError> {
        let hidden = cfg.require(&["hidden_size", "d_model", "n_embd", "dim"])?;
        let layers = cfg.require(&["num_hidden_layers", "n_layer", "num_layers", "n_layers"])?;
        let heads = cfg.require(&["num_attention_heads", "n_head", "num_heads", "n_heads"])?;
        let vocab = cfg.require(&["vocab_size", "padded_vocab_size"])?;
        if hidden == 0 || layers == 0 || heads == 0 || vocab == 0 {
            return Err(cfg.error("hidden_size, num_hidden_layers, num_attention_heads and vocab_size must be positive".into()));
        }
        let falcon_kv = if cfg.bool("new_decoder_architecture") == Some(true) {
            cfg.u64(&["num_kv_heads"])
        } else if cfg.bool("multi_query") == Some(true) {
            Some(1)
        } else {
            None
        };
        let kv_heads = falcon_kv
            .or_else(|| {
                cfg.u64(&[
                    "num_key_value_heads",
                    "num_kv_heads",
                    "multi_query_group_num",
                    "n_kv_heads",
                ])
            })
            .unwrap_or(heads);
        if kv_heads == 0 || kv_heads > heads {
            return Err(cfg.error(format!(
                "num_key_value_heads {kv_heads} is not between 1 and num_attention_heads {heads}"
            )));
        }
        let head_dim = cfg
            .u64(&["head_dim", "kv_channels"])
            .filter(|&d| d > 0)
            .unwrap_or(hidden / heads);
        let intermediate = cfg
            .u64(&["intermediate_size", "ffn_hidden_size", "n_inner", "ffn_dim"])
            .unwrap_or(0);
        Ok(TextDims {
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            vocab,
            intermediate,
        })
    }
}

/// What kind of mixer layer `i` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mixer {
    /// Full (global) attention.
    Full,
    /// Sliding-window attention.
    Sliding,
    /// Linear attention (Gated DeltaNet) with a fixed-size state.
    Linear,
    /// Short convolution (LFM2) with a fixed-size state.
    Conv,
}

/// The mixer of every layer, from `layer_types`, the family's pattern or the config's
/// indexes. Sliding layers are reported only when the config sets a window.
pub fn layer_mixers(cfg: &Config, layers: u64) -> Vec<Mixer> {
    // mlx-lm 0.32.2 (and the worker, token for token with it) keeps a full cache on every
    // layer of these, whatever sliding_window / layer_types say.
    if matches!(
        cfg.text_model_type(),
        "gemma2" | "phi3" | "mixtral" | "qwen3_moe"
    ) {
        return vec![Mixer::Full; layers as usize];
    }
    let window = sliding_window(cfg).is_some();
    if let Some(types) = cfg.layer_types() {
        if types.len() as u64 == layers {
            return types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" | "local_attention" | "sliding" if window => Mixer::Sliding,
                    "linear_attention" | "mamba" | "ssm" => Mixer::Linear,
                    "conv" | "short_conv" => Mixer::Conv,
                    _ => Mixer::Full,
                })
                .collect();
        }
    }
    let mt = cfg.text_model_type();
    if mt == "lfm2" {
        let full = cfg.u64_list("full_attn_idxs").unwrap_or_default();
        return (0..layers)
            .map(|i| {
                if full.contains(&i) {
                    Mixer::Full
                } else {
                    Mixer::Conv
                }
            })
            .collect();
    }
    if mt.starts_with("qwen3_next") || mt.starts_with("qwen3_5") {
        let interval = cfg.u64(&["full_attention_interval"]).unwrap_or(4).max(1);
        return (0..layers)
            .map(|i| {
                if (i + 1) % interval == 0 {
                    Mixer::Full
                } else {
                    Mixer::Linear
                }
            })
            .collect();
    }
    if !window {
        return vec![Mixer::Full; layers as usize];
    }
    // Gemma 2 alternates sliding and global; Gemma 3 has one global layer in every
    // `sliding_window_pattern` (6); others (Mistral) slide in every layer.
    let pattern = match mt {
        "gemma2" => Some(2),
        m if m.starts_with("gemma3") => Some(cfg.u64(&["sliding_window_pattern"]).unwrap_or(6)),
        _ => cfg.u64(&["sliding_window_pattern"]),
    };
    (0..layers)
        .map(|i| match pattern {
            Some(p) if p > 0 && (i + 1) % p == 0 => Mixer::Full,
            _ => Mixer::Sliding,
        })
        .collect()
}

/// The sliding window in tokens, when the config enables one.
pub fn sliding_window(cfg: &Config) -> Option<u64> {
    if cfg.bool("use_sliding_window") == Some(false) {
        return None;
    }
    cfg.u64(&["sliding_window", "attention_window_size"])
        .filter(|&w| w > 0)
}

fn layers_prefix(names: Names<'_>, default: &str) -> String {
    names
        .0
        .and_then(|n| {
            n.iter()
                .find(|s| {
                    s.contains(".layers.0.")
                        && !s.contains("vision")
                        && !s.contains("visual")
                        && !s.contains("mtp")
                })
                .and_then(|s| s.find(".layers.0.").map(|p| s[..p + 7].to_string()))
        })
        .unwrap_or_else(|| default.to_string())
}

fn family_in(mt: &str, list: &[&str]) -> bool {
    list.iter().any(|f| mt.starts_with(f))
}

/// The generic decoder: Llama, Mistral, Mixtral, Qwen 2/2.5/3 (dense, MoE, VL, 3.5
/// hybrids), Phi-3/4, Gemma 1–4, gpt-oss, DeepSeek V2/V3 (MLA), Granite MoE, SmolLM,
/// MiMo and relatives.
fn decoder(
    cfg: &Config,
    t: &TextDims,
    c: &mut Counter<'_>,
    names: Names<'_>,
) -> Result<(), EstimateError> {
    let mt = cfg.text_model_type().to_string();
    let h = t.hidden;
    let prefix = layers_prefix(names, "model.layers");
    let mixers = layer_mixers(cfg, t.layers);
    let per_layer = names.per_layer();

    // Embeddings (Gemma 3n/4 may add per-layer input embeddings).
    c.dense(Part::Embedding, 0);
    let emb = c
        .quant
        .embedding_bytes("model.embed_tokens", t.vocab, h, c.dt);
    c.parts.embedding += emb;
    let per_layer_input = cfg.u64(&["hidden_size_per_layer_input"]).unwrap_or(0);
    if per_layer_input > 0 {
        let v = cfg.u64(&["vocab_size_per_layer_input"]).unwrap_or(t.vocab);
        c.dense(Part::Embedding, v * t.layers * per_layer_input);
    }

    let qkv_bias = names
        .has_suffix(".self_attn.q_proj.bias")
        .unwrap_or_else(|| {
            cfg.bool("attention_bias")
                .or_else(|| cfg.bool("qkv_bias"))
                .unwrap_or(family_in(&mt, &["qwen2", "mimo", "gpt_oss"]))
        });
    let o_bias = names.has_suffix(".self_attn.o_proj.bias").unwrap_or(
        mt == "gpt_oss" || (cfg.bool("attention_bias") == Some(true) && !family_in(&mt, &["qwen"])),
    );
    let qk_norm = names
        .has_suffix(".self_attn.q_norm.weight")
        .unwrap_or(family_in(
            &mt,
            &["qwen3", "gemma3", "gemma4", "olmo2", "olmo3"],
        ));
    let mlp_bias = cfg.bool("mlp_bias").unwrap_or(false);
    let gated_q = cfg
        .bool("attn_output_gate")
        .unwrap_or(family_in(&mt, &["qwen3_next", "qwen3_5"]));
    let k_eq_v = cfg.bool("attention_k_eq_v").unwrap_or(false);
    let mla = cfg
        .u64(&["kv_lora_rank"])
        .filter(|_| cfg.bool("use_mla") != Some(false));

    // MoE shape.
    let experts = cfg
        .u64(&["num_local_experts", "num_experts", "n_routed_experts"])
        .filter(|&e| e > 1 && cfg.bool("enable_moe_block") != Some(false));
    let moe_inter = cfg
        .u64(&["moe_intermediate_size", "expert_intermediate_size"])
        .unwrap_or(t.intermediate);
    let first_dense = cfg.u64(&["first_k_dense_replace"]).unwrap_or(0);
    let moe_freq = cfg
        .u64(&["moe_layer_freq", "decoder_sparse_step"])
        .unwrap_or(1)
        .max(1);
    let mlp_only: Vec<u64> = cfg.u64_list("mlp_only_layers").unwrap_or_default();
    let shared_inter = cfg
        .u64(&["shared_expert_intermediate_size"])
        .or_else(|| cfg.u64(&["n_shared_experts"]).map(|n| n * moe_inter))
        .unwrap_or(0);
    let gemma4_moe = mt.starts_with("gemma4") && experts.is_some();

    for i in 0..t.layers {
        let p = format!("{prefix}.{i}");
        let mixer = mixers.get(i as usize).copied().unwrap_or(Mixer::Full);
        // Norms: count them from the names of this layer when known.
        let norms = layer_names(&per_layer, i, |s| {
            (s.contains("norm") || s.starts_with("ln"))
                && !s.contains("q_norm")
                && !s.contains("k_norm")
                && !s.contains("q_a_")
                && !s.contains("kv_a_")
                && !s.contains("linear_attn")
                && !s.contains("layernorm.bias")
                && !s.contains("q_layernorm")
                && !s.contains("k_layernorm")
        })
        .map(|s| s.len() as u64)
        .filter(|&n| n > 0)
        .unwrap_or(if family_in(&mt, &["gemma2", "gemma3", "gemma4"]) {
            if gemma4_moe {
                7
            } else {
                4
            }
        } else {
            2
        });
        c.dense(Part::Layers, norms * h);
        if mt.starts_with("gemma4") {
            c.dense(Part::Layers, 1); // layer_scalar
        }

        // Mixer.
        match (mixer, mla) {
            (Mixer::Linear, _) => gated_delta_net(cfg, h, &p, c),
            (Mixer::Conv, _) => {}
            (_, Some(kv_lora)) => {
                let nope = cfg.u64(&["qk_nope_head_dim"]).unwrap_or(128);
                let rope = cfg.u64(&["qk_rope_head_dim"]).unwrap_or(64);
                let v_dim = cfg.u64(&["v_head_dim"]).unwrap_or(128);
                let a = format!("{p}.self_attn");
                match cfg.u64(&["q_lora_rank"]) {
                    Some(q_lora) => {
                        c.linear(Part::Layers, &format!("{a}.q_a_proj"), q_lora, h, false);
                        c.dense(Part::Layers, q_lora);
                        c.linear(
                            Part::Layers,
                            &format!("{a}.q_b_proj"),
                            t.heads * (nope + rope),
                            q_lora,
                            false,
                        );
                    }
                    None => c.linear(
                        Part::Layers,
                        &format!("{a}.q_proj"),
                        t.heads * (nope + rope),
                        h,
                        false,
                    ),
                }
                c.linear(
                    Part::Layers,
                    &format!("{a}.kv_a_proj_with_mqa"),
                    kv_lora + rope,
                    h,
                    false,
                );
                c.dense(Part::Layers, kv_lora);
                c.linear(
                    Part::Layers,
                    &format!("{a}.kv_b_proj"),
                    t.heads * (nope + v_dim),
                    kv_lora,
                    false,
                );
                c.linear(
                    Part::Layers,
                    &format!("{a}.o_proj"),
                    h,
                    t.heads * v_dim,
                    false,
                );
            }
            (_, None) => {
                let a = format!("{p}.self_attn");
                let global = mixer == Mixer::Full && mt.starts_with("gemma4");
                let (hd, kv) = if global {
                    (
                        cfg.u64(&["global_head_dim"]).unwrap_or(t.head_dim),
                        cfg.u64(&["num_global_key_value_heads"])
                            .unwrap_or(t.kv_heads),
                    )
                } else {
                    (t.head_dim, t.kv_heads)
                };
                let q_out = t.heads * hd * if gated_q { 2 } else { 1 };
                c.linear(Part::Layers, &format!("{a}.q_proj"), q_out, h, qkv_bias);
                c.linear(Part::Layers, &format!("{a}.k_proj"), kv * hd, h, qkv_bias);
                // Fused checkpoints (Phi-3 `qkv_proj`) name no `k_proj`: assume a V.
                let has_v = match layer_names(&per_layer, i, |s| s.starts_with("self_attn.")) {
                    Some(attn) if attn.iter().any(|s| s.starts_with("self_attn.k_proj")) => {
                        attn.iter().any(|s| s.starts_with("self_attn.v_proj"))
                    }
                    _ => !(global && k_eq_v),
                };
                if has_v {
                    c.linear(Part::Layers, &format!("{a}.v_proj"), kv * hd, h, qkv_bias);
                }
                c.linear(
                    Part::Layers,
                    &format!("{a}.o_proj"),
                    h,
                    t.heads * hd,
                    o_bias,
                );
                if qk_norm {
                    c.dense(Part::Layers, 2 * hd);
                }
                if mt == "gpt_oss" {
                    c.dense(Part::Layers, t.heads); // attention sinks
                }
            }
        }

        // Feed-forward.
        let is_moe = experts.is_some()
            && i >= first_dense
            && (i + 1) % moe_freq == 0
            && !mlp_only.contains(&i);
        if mt == "lfm2" {
            continue;
        }
        if !is_moe || gemma4_moe {
            let m = format!("{p}.mlp");
            let inter = if i < first_dense || !is_moe || gemma4_moe {
                t.intermediate
            } else {
                moe_inter
            };
            c.linear(Part::Layers, &format!("{m}.gate_proj"), inter, h, mlp_bias);
            c.linear(Part::Layers, &format!("{m}.up_proj"), inter, h, mlp_bias);
            c.linear(Part::Layers, &format!("{m}.down_proj"), h, inter, mlp_bias);
        }
        if let (true, Some(e)) = (is_moe, experts) {
            let m = format!("{p}.mlp");
            match mt.as_str() {
                "gpt_oss" => {
                    c.linear(Part::Layers, &format!("{m}.router"), e, h, true);
                    c.experts(
                        Part::Layers,
                        &format!("{m}.experts.gate_up_proj"),
                        e,
                        2 * moe_inter,
                        h,
                    );
                    c.experts(
                        Part::Layers,
                        &format!("{m}.experts.down_proj"),
                        e,
                        h,
                        moe_inter,
                    );
                    c.dense(Part::Layers, e * (2 * moe_inter + h));
                }
                "granitemoe" | "granitemoeshared" => {
                    c.linear(
                        Part::Layers,
                        &format!("{p}.block_sparse_moe.router.layer"),
                        e,
                        h,
                        false,
                    );
                    c.experts(
                        Part::Layers,
                        &format!("{p}.block_sparse_moe.input_linear"),
                        e,
                        2 * moe_inter,
                        h,
                    );
                    c.experts(
                        Part::Layers,
                        &format!("{p}.block_sparse_moe.output_linear"),
                        e,
                        h,
                        moe_inter,
                    );
                }
                _ => {
                    c.linear(Part::Layers, &format!("{m}.gate"), e, h, false);
                    if mt.starts_with("gemma4") {
                        c.dense(Part::Layers, h + e); // router scale and per-expert scale
                    }
                    if cfg.str("topk_method") == Some("noaux_tc") {
                        c.dense(Part::Layers, e); // e_score_correction_bias
                    }
                    c.experts(
                        Part::Layers,
                        &format!("{m}.experts.gate_proj"),
                        e,
                        moe_inter,
                        h,
                    );
                    c.experts(
                        Part::Layers,
                        &format!("{m}.experts.up_proj"),
                        e,
                        moe_inter,
                        h,
                    );
                    c.experts(
                        Part::Layers,
                        &format!("{m}.experts.down_proj"),
                        e,
                        h,
                        moe_inter,
                    );
                    if shared_inter > 0 {
                        c.linear(
                            Part::Layers,
                            &format!("{m}.shared_expert.gate_proj"),
                            shared_inter,
                            h,
                            false,
                        );
                        c.linear(
                            Part::Layers,
                            &format!("{m}.shared_expert.up_proj"),
                            shared_inter,
                            h,
                            false,
                        );
                        c.linear(
                            Part::Layers,
                            &format!("{m}.shared_expert.down_proj"),
                            h,
                            shared_inter,
                            false,
                        );
                        if cfg.u64(&["shared_expert_intermediate_size"]).is_some() {
                            c.linear(
                                Part::Layers,
                                &format!("{m}.shared_expert_gate"),
                                1,
                                h,
                                false,
                            );
                        }
                    }
                }
            }
        }
    }
    c.dense(Part::Layers, h); // final norm

    // Output head: the names decide when known (a checkpoint may store lm_head although
    // the config says tied); otherwise the config, with the families' defaults.
    let tied_default = family_in(&mt, &["gemma", "granite", "smollm3", "lfm2"]);
    let head_stored = match names.0 {
        Some(_) => names.contains("lm_head.").unwrap_or(false),
        None => !cfg.bool("tie_word_embeddings").unwrap_or(tied_default),
    };
    if head_stored {
        c.linear(Part::Head, "lm_head", t.vocab, h, false);
    }

    // Multi-token-prediction layers, counted only when the checkpoint stores them.
    if names.contains("mtp_layers.").unwrap_or(false) {
        let n = cfg.u64(&["num_nextn_predict_layers"]).unwrap_or(1);
        for j in 0..n {
            let p = format!("model.mtp_layers.{j}");
            c.dense(Part::Extra, 5 * h);
            c.linear(Part::Extra, &format!("{p}.input_proj"), h, 2 * h, false);
            c.linear(
                Part::Extra,
                &format!("{p}.q_proj"),
                t.heads * t.head_dim,
                h,
                qkv_bias,
            );
            c.linear(
                Part::Extra,
                &format!("{p}.k_proj"),
                t.kv_heads * t.head_dim,
                h,
                qkv_bias,
            );
            c.linear(
                Part::Extra,
                &format!("{p}.v_proj"),
                t.kv_heads * t.head_dim,
                h,
                qkv_bias,
            );
            c.linear(
                Part::Extra,
                &format!("{p}.o_proj"),
                h,
                t.heads * t.head_dim,
                false,
            );
            c.linear(
                Part::Extra,
                &format!("{p}.gate_proj"),
                t.intermediate,
                h,
                false,
            );
            c.linear(
                Part::Extra,
                &format!("{p}.up_proj"),
                t.intermediate,
                h,
                false,
            );
            c.linear(
                Part::Extra,
                &format!("{p}.down_proj"),
                h,
                t.intermediate,
                false,
            );
        }
    }
    Ok(())
}

/// Gated DeltaNet (Qwen3-Next, Qwen3.5) linear-attention layer.
fn gated_delta_net(cfg: &Config, h: u64, p: &str, c: &mut Counter<'_>) {
    let nk = cfg.u64(&["linear_num_key_heads"]).unwrap_or(16);
    let nv = cfg.u64(&["linear_num_value_heads"]).unwrap_or(32);
    let dk = cfg.u64(&["linear_key_head_dim"]).unwrap_or(128);
    let dv = cfg.u64(&["linear_value_head_dim"]).unwrap_or(128);
    let kernel = cfg.u64(&["linear_conv_kernel_dim"]).unwrap_or(4);
    let (key_dim, value_dim) = (nk * dk, nv * dv);
    let conv_dim = 2 * key_dim + value_dim;
    let a = format!("{p}.linear_attn");
    c.linear(
        Part::Layers,
        &format!("{a}.in_proj_qkv"),
        conv_dim,
        h,
        false,
    );
    c.linear(Part::Layers, &format!("{a}.in_proj_z"), value_dim, h, false);
    c.linear(Part::Layers, &format!("{a}.in_proj_b"), nv, h, false);
    c.linear(Part::Layers, &format!("{a}.in_proj_a"), nv, h, false);
    c.dense(Part::Layers, conv_dim * kernel + 2 * nv + dv);
    c.linear(Part::Layers, &format!("{a}.out_proj"), h, value_dim, false);
}

/// Falcon (7B/40B/180B): fused QKV, parallel attention and MLP, LayerNorms with biases.
fn falcon(cfg: &Config, t: &TextDims, c: &mut Counter<'_>, names: Names<'_>) {
    let h = t.hidden;
    let new_arch = cfg.bool("new_decoder_architecture") == Some(true);
    let ffn = cfg.u64(&["ffn_hidden_size"]).unwrap_or(4 * h);
    let bias = cfg.bool("bias").unwrap_or(false);
    c.parts.embedding += t.vocab * h * c.dt;
    for i in 0..t.layers {
        let p = format!("transformer.h.{i}");
        let ln = if new_arch && cfg.u64(&["num_ln_in_parallel_attn"]).unwrap_or(2) == 2 {
            2
        } else {
            1
        };
        c.dense(Part::Layers, ln * 2 * h);
        let qkv = (t.heads + 2 * t.kv_heads) * t.head_dim;
        c.linear(
            Part::Layers,
            &format!("{p}.self_attention.query_key_value"),
            qkv,
            h,
            bias,
        );
        c.linear(
            Part::Layers,
            &format!("{p}.self_attention.dense"),
            h,
            h,
            bias,
        );
        c.linear(
            Part::Layers,
            &format!("{p}.mlp.dense_h_to_4h"),
            ffn,
            h,
            bias,
        );
        c.linear(
            Part::Layers,
            &format!("{p}.mlp.dense_4h_to_h"),
            h,
            ffn,
            bias,
        );
    }
    c.dense(Part::Layers, 2 * h);
    if names
        .has_suffix("lm_head.weight")
        .unwrap_or(!cfg.bool("tie_word_embeddings").unwrap_or(true))
    {
        c.linear(Part::Head, "lm_head", t.vocab, h, false);
    }
}

/// Qwen (1): `c_attn` with bias, `w1`/`w2` halves of `intermediate_size`.
fn qwen1(cfg: &Config, t: &TextDims, c: &mut Counter<'_>) {
    let h = t.hidden;
    let ff = t.intermediate / 2;
    c.parts.embedding += t.vocab * h * c.dt;
    for i in 0..t.layers {
        let p = format!("transformer.h.{i}");
        c.dense(Part::Layers, 2 * h);
        c.linear(Part::Layers, &format!("{p}.attn.c_attn"), 3 * h, h, true);
        c.linear(Part::Layers, &format!("{p}.attn.c_proj"), h, h, false);
        c.linear(Part::Layers, &format!("{p}.mlp.w1"), ff, h, false);
        c.linear(Part::Layers, &format!("{p}.mlp.w2"), ff, h, false);
        c.linear(Part::Layers, &format!("{p}.mlp.c_proj"), h, ff, false);
    }
    c.dense(Part::Layers, h);
    if !cfg.bool("tie_word_embeddings").unwrap_or(false) {
        c.linear(Part::Head, "lm_head", t.vocab, h, false);
    }
}

/// LFM2: short-convolution layers and a few attention layers, SwiGLU feed-forward.
fn lfm2(cfg: &Config, t: &TextDims, c: &mut Counter<'_>) -> Result<(), EstimateError> {
    let h = t.hidden;
    let mut ff = cfg
        .u64(&["block_ff_dim", "intermediate_size"])
        .unwrap_or(4 * h);
    if cfg.bool("block_auto_adjust_ff_dim").unwrap_or(false) {
        ff = 2 * ff / 3;
        let mult = cfg.f64(&["block_ffn_dim_multiplier"]).unwrap_or(1.0);
        ff = (mult * ff as f64) as u64;
        let multiple = cfg.u64(&["block_multiple_of"]).unwrap_or(256).max(1);
        ff = ff.div_ceil(multiple) * multiple;
    }
    let kernel = cfg.u64(&["conv_L_cache"]).unwrap_or(3);
    let mixers = layer_mixers(cfg, t.layers);
    c.parts.embedding += c
        .quant
        .embedding_bytes("model.embed_tokens", t.vocab, h, c.dt);
    for (i, mixer) in mixers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        c.dense(Part::Layers, 2 * h);
        if *mixer == Mixer::Conv {
            c.linear(
                Part::Layers,
                &format!("{p}.conv.in_proj"),
                3 * h,
                h,
                cfg.bool("conv_bias").unwrap_or(false),
            );
            c.dense(Part::Layers, h * kernel);
            c.linear(
                Part::Layers,
                &format!("{p}.conv.out_proj"),
                h,
                h,
                cfg.bool("conv_bias").unwrap_or(false),
            );
        } else {
            let a = format!("{p}.self_attn");
            c.linear(
                Part::Layers,
                &format!("{a}.q_proj"),
                t.heads * t.head_dim,
                h,
                false,
            );
            c.linear(
                Part::Layers,
                &format!("{a}.k_proj"),
                t.kv_heads * t.head_dim,
                h,
                false,
            );
            c.linear(
                Part::Layers,
                &format!("{a}.v_proj"),
                t.kv_heads * t.head_dim,
                h,
                false,
            );
            c.linear(
                Part::Layers,
                &format!("{a}.out_proj"),
                h,
                t.heads * t.head_dim,
                false,
            );
            c.dense(Part::Layers, 2 * t.head_dim);
        }
        c.linear(Part::Layers, &format!("{p}.feed_forward.w1"), ff, h, false);
        c.linear(Part::Layers, &format!("{p}.feed_forward.w3"), ff, h, false);
        c.linear(Part::Layers, &format!("{p}.feed_forward.w2"), h, ff, false);
    }
    c.dense(Part::Layers, h);
    if !cfg.bool("tie_word_embeddings").unwrap_or(true) {
        c.linear(Part::Head, "lm_head", t.vocab, h, false);
    }
    Ok(())
}

/// Adds the vision tower and projector; `false` when the family is not modelled.
fn vision_tower(
    cfg: &Config,
    v: &Map<String, Value>,
    t: &TextDims,
    c: &mut Counter<'_>,
    names: Names<'_>,
) -> Result<bool, EstimateError> {
    let mt = cfg.model_type();
    let vt = v.get("model_type").and_then(Value::as_str).unwrap_or("");
    let need = |keys: &[&str]| {
        map_u64(v, keys).ok_or_else(|| {
            cfg.error(format!(
                "vision_config: missing or non-integer `{}`",
                keys.join("` / `")
            ))
        })
    };
    let lin = |c: &mut Counter<'_>, out: u64, inp: u64, bias: bool| {
        c.linear(Part::Vision, "vision", out, inp, bias)
    };
    if mt.starts_with("qwen2_vl") || mt.starts_with("qwen2_5_vl") || mt.starts_with("qwen3_vl") {
        let qwen25 = mt.starts_with("qwen2_5_vl");
        let qwen3 = mt.starts_with("qwen3_vl");
        let d = need(&["embed_dim", "hidden_size"])?;
        let d = if qwen25 || qwen3 {
            need(&["hidden_size"])?
        } else {
            d
        };
        let depth = need(&["depth", "num_hidden_layers"])?;
        let patch = map_u64(v, &["patch_size", "spatial_patch_size"]).unwrap_or(14);
        let temporal = map_u64(v, &["temporal_patch_size"]).unwrap_or(2);
        let chans = map_u64(v, &["in_chans", "in_channels"]).unwrap_or(3);
        let merge = map_u64(v, &["spatial_merge_size"]).unwrap_or(2);
        let out = map_u64(v, &["out_hidden_size"]).unwrap_or(if qwen25 || qwen3 {
            t.hidden
        } else {
            need(&["hidden_size"])?
        });
        c.dense(Part::Vision, d * chans * temporal * patch * patch);
        let (norm, inter) = if qwen25 {
            (d, need(&["intermediate_size"])?)
        } else if qwen3 {
            (2 * d, need(&["intermediate_size"])?)
        } else {
            (2 * d, d * map_u64(v, &["mlp_ratio"]).unwrap_or(4))
        };
        if qwen3 {
            c.dense(
                Part::Vision,
                d + map_u64(v, &["num_position_embeddings"]).unwrap_or(0) * d,
            );
        }
        for _ in 0..depth {
            c.dense(Part::Vision, 2 * norm);
            lin(c, 3 * d, d, true);
            lin(c, d, d, true);
            if qwen25 {
                lin(c, inter, d, true);
                lin(c, inter, d, true);
                lin(c, d, inter, true);
            } else {
                lin(c, inter, d, true);
                lin(c, d, inter, true);
            }
        }
        let m = d * merge * merge;
        let merger = |c: &mut Counter<'_>, norm: u64| {
            c.dense(Part::Vision, norm);
            c.linear(Part::Vision, "vision", m, m, true);
            c.linear(Part::Vision, "vision", out, m, true);
        };
        merger(c, if qwen25 { d } else { 2 * d });
        if qwen3 {
            let deep = v
                .get("deepstack_visual_indexes")
                .and_then(Value::as_array)
                .map_or(0, Vec::len) as u64;
            for _ in 0..deep {
                merger(c, 2 * m);
            }
        }
        return Ok(true);
    }
    if vt.starts_with("siglip")
        || vt == "idefics2"
        || mt == "minicpmv"
        || mt.starts_with("gemma3")
        || mt == "paligemma"
    {
        let d = need(&["hidden_size"])?;
        let inter = need(&["intermediate_size"])?;
        let depth = need(&["num_hidden_layers"])?;
        let patch = map_u64(v, &["patch_size"]).unwrap_or(14);
        let image = map_u64(v, &["image_size"]).unwrap_or(224);
        let chans = map_u64(v, &["num_channels"]).unwrap_or(3);
        let positions = (image / patch.max(1)).pow(2);
        c.dense(Part::Vision, d * chans * patch * patch + d + positions * d);
        for _ in 0..depth {
            c.dense(Part::Vision, 4 * d);
            for _ in 0..4 {
                lin(c, d, d, true);
            }
            lin(c, inter, d, true);
            lin(c, d, inter, true);
        }
        c.dense(Part::Vision, 2 * d);
        if mt.starts_with("gemma3") {
            c.dense(Part::Vision, d * t.hidden + d);
        } else if mt == "minicpmv" {
            // Perceiver resampler: queries, kv projection, one attention, three norms, proj.
            let q = cfg.u64(&["query_num"]).unwrap_or(96);
            let th = t.hidden;
            c.dense(Part::Vision, q * th + 6 * th + th * th);
            lin(c, th, d, false);
            lin(c, 3 * th, th, true);
            lin(c, th, th, true);
        }
        return Ok(true);
    }
    if vt == "gemma4_vision" {
        let d = need(&["hidden_size"])?;
        let inter = need(&["intermediate_size"])?;
        let depth = need(&["num_hidden_layers"])?;
        let heads = need(&["num_attention_heads"])?;
        let hd = map_u64(v, &["head_dim"]).unwrap_or(d / heads);
        let kv = map_u64(v, &["num_key_value_heads"]).unwrap_or(heads);
        let patch = map_u64(v, &["patch_size"]).unwrap_or(16);
        let positions = map_u64(v, &["position_embedding_size"]).unwrap_or(0);
        c.dense(
            Part::Vision,
            d * 3 * patch * patch + 2 * positions * d + 2 * d,
        );
        for _ in 0..depth {
            c.dense(Part::Vision, 4 * d + 2 * hd);
            lin(c, heads * hd, d, false);
            lin(c, kv * hd, d, false);
            lin(c, kv * hd, d, false);
            lin(c, d, heads * hd, false);
            lin(c, inter, d, false);
            lin(c, inter, d, false);
            lin(c, d, inter, false);
        }
        lin(c, t.hidden, d, false);
        return Ok(true);
    }
    if v.get("model_name").and_then(Value::as_str) == Some("deepencoderv2")
        || names.contains("sam_model.").unwrap_or(false)
    {
        deepencoder_v2(cfg, v, t, c);
        return Ok(true);
    }
    Ok(false)
}

/// DeepSeek-OCR 2's encoder: a SAM ViT-B, a Qwen2-0.5B-shaped encoder with learned
/// queries, and a linear projector.
fn deepencoder_v2(cfg: &Config, v: &Map<String, Value>, t: &TextDims, c: &mut Counter<'_>) {
    let sam = v.get("width").and_then(|w| w.get("sam_vit_b"));
    let get = |k: &str, d: u64| {
        sam.and_then(|s| s.get(k))
            .and_then(crate::config::as_u64)
            .unwrap_or(d)
    };
    let (d, layers, heads) = (get("width", 768), get("layers", 12), get("heads", 12));
    let image = map_u64(v, &["image_size"]).unwrap_or(1024);
    let patch = 16;
    let grid = image / patch;
    let window = 14;
    let global: Vec<u64> = sam
        .and_then(|s| s.get("global_attn_indexes"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(crate::config::as_u64).collect())
        .unwrap_or_default();
    let lin = |c: &mut Counter<'_>, out: u64, inp: u64, bias: bool| {
        c.linear(Part::Vision, "vision", out, inp, bias)
    };
    c.dense(Part::Vision, d * 3 * patch * patch + d + grid * grid * d);
    for i in 0..layers {
        let size = if global.contains(&i) { grid } else { window };
        c.dense(Part::Vision, 4 * d + 2 * (2 * size - 1) * (d / heads));
        lin(c, 3 * d, d, true);
        lin(c, d, d, true);
        lin(c, 4 * d, d, true);
        lin(c, d, 4 * d, true);
    }
    // Neck (1×1 conv, LayerNorm, 3×3 conv, LayerNorm) and two downsampling convs.
    let down: Vec<u64> = sam
        .and_then(|s| s.get("downsample_channels"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(crate::config::as_u64).collect())
        .unwrap_or_else(|| vec![512, 1024]);
    c.dense(Part::Vision, 256 * d + 2 * 256 + 256 * 256 * 9 + 2 * 256);
    let mut ch = 256;
    for &next in &down {
        c.dense(Part::Vision, next * ch * 9);
        ch = next;
    }
    // Qwen2-0.5B-shaped encoder.
    let qd = v
        .get("width")
        .and_then(|w| w.get("qwen2-0-5b"))
        .and_then(|q| q.get("dim"))
        .and_then(crate::config::as_u64)
        .unwrap_or(896);
    let (q_layers, q_inter, q_heads, q_kv) = (24, 4864, 14, 2);
    let hd = qd / q_heads;
    for _ in 0..q_layers {
        c.dense(Part::Vision, 2 * qd);
        lin(c, q_heads * hd, qd, true);
        lin(c, q_kv * hd, qd, true);
        lin(c, q_kv * hd, qd, true);
        lin(c, qd, q_heads * hd, false);
        lin(c, q_inter, qd, false);
        lin(c, q_inter, qd, false);
        lin(c, qd, q_inter, false);
    }
    c.dense(Part::Vision, qd + (256 + 144) * qd);
    let n_embed = cfg
        .root("projector_config")
        .and_then(|p| p.get("n_embed"))
        .and_then(crate::config::as_u64)
        .unwrap_or(t.hidden);
    lin(c, n_embed, ch.min(qd), true);
    c.dense(Part::Vision, n_embed);
}
