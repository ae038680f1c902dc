//! The folder's `config.json`: the fields every family writes, then each family's own.

use protocol::ModelSpec;
use serde_json::{json, Value};

use super::family;
use super::tensors::dtype_of;
use super::text_tensors::tied;

pub(super) fn config_json(spec: &ModelSpec, endoftext: usize) -> Value {
    let (_, _, torch_dtype) = dtype_of(spec);
    let hd = spec.hidden / spec.heads;
    let arch = match spec.arch.as_str() {
        "llama" => "LlamaForCausalLM",
        "mistral" => "MistralForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        "gemma" => "GemmaForCausalLM",
        "gemma2" => "Gemma2ForCausalLM",
        "gemma3_text" => "Gemma3ForCausalLM",
        "gemma3" => "Gemma3ForConditionalGeneration",
        "phi3" => "Phi3ForCausalLM",
        "mixtral" => "MixtralForCausalLM",
        "qwen3_moe" => "Qwen3MoeForCausalLM",
        "smollm3" => "SmolLM3ForCausalLM",
        "mimo" => "MiMoForCausalLM",
        "qwen" => "QWenLMHeadModel",
        "granitemoe" => "GraniteMoeForCausalLM",
        _ => "Qwen3ForCausalLM",
    };
    let mut c = json!({
        "architectures": [arch],
        "model_type": spec.arch,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": hd,
        "vocab_size": spec.vocab,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": tied(spec),
        "torch_dtype": torch_dtype,
        "attention_dropout": 0.0,
        "bos_token_id": null,
        "eos_token_id": endoftext,
        "use_cache": true,
    });
    let extra = match spec.arch.as_str() {
        "llama" => json!({
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "attention_bias": false, "mlp_bias": false,
            "max_position_embeddings": 131072,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"}
        }),
        "mistral" => json!({"rope_theta": 1000000.0, "sliding_window": 4096}),
        "qwen2" => {
            json!({"rope_theta": 1000000.0, "use_sliding_window": false, "sliding_window": null})
        }
        "gemma" | "gemma2" | "gemma3_text" | "phi3" | "mixtral" | "qwen3_moe" | "smollm3"
        | "mimo" | "qwen" | "granitemoe" => family::config(spec),
        _ => {
            json!({"rope_theta": 1000000.0, "attention_bias": false, "use_sliding_window": false, "sliding_window": null})
        }
    };
    if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
        c.extend(e);
        if spec.arch == "qwen" {
            // The first Qwen's config names no KV heads nor head_dim (kv_channels).
            for key in [
                "num_key_value_heads",
                "head_dim",
                "rms_norm_eps",
                "tie_word_embeddings",
            ] {
                c.remove(key);
            }
        }
        family::apply_options(spec, c);
        if let Some(bits) = spec.quant_bits {
            let mut q = json!({"group_size": spec.group_size, "bits": bits, "mode": "affine"});
            if let Some(q) = q.as_object_mut() {
                q.extend(family::quant_overrides(spec));
            }
            c.insert("quantization".into(), q.clone());
            c.insert("quantization_config".into(), q);
        }
    }
    c
}
