//! KV-cache figures checked against hand-computed cases, one per layer type.
use std::path::Path;

use estimate::config::Config;
use estimate::kv_cache::{kv_cache, layer_layout, LayerKv};
use estimate::weights::TextDims;
use estimate::{kv_bytes_per_token, Bytes};

fn layout(json: &str) -> Vec<LayerKv> {
    let cfg =
        Config::parse(Path::new("config.json"), json.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let dims = TextDims::read(&cfg).unwrap_or_else(|e| panic!("{e}"));
    layer_layout(&cfg, &dims, 2)
}

const LLAMA3_8B: &str = r#"{"model_type":"llama","hidden_size":4096,"num_hidden_layers":32,"num_attention_heads":32,
"num_key_value_heads":8,"intermediate_size":14336,"vocab_size":128256,"torch_dtype":"bfloat16"}"#;

#[test]
fn gqa_full_attention() {
    let l = layout(LLAMA3_8B);
    // 32 layers × (K + V) × 8 heads × 128 dims × 2 bytes = 131072 bytes per token.
    let kv = kv_cache(&l, 8192, 2, 2, None);
    assert_eq!(kv.bytes_per_token, 131_072);
    assert_eq!(kv.bytes, 131_072 * 8192 * 2);
    assert_eq!(Bytes(kv.bytes).to_string(), "2 GiB");
}

#[test]
fn mqa_uses_one_head() {
    // Gemma 2B: 18 layers, 1 KV head of 256.
    let l = layout(
        r#"{"model_type":"gemma","hidden_size":2048,"num_hidden_layers":18,"num_attention_heads":8,
        "num_key_value_heads":1,"head_dim":256,"intermediate_size":16384,"vocab_size":256000}"#,
    );
    assert_eq!(
        kv_cache(&l, 1, 1, 2, None).bytes_per_token,
        18 * 2 * 256 * 2
    );
}

#[test]
fn sliding_window_caps_at_the_window() {
    // Mistral 7B v0.1: every layer slides over 4096 tokens.
    let l = layout(
        r#"{"model_type":"mistral","hidden_size":4096,"num_hidden_layers":32,"num_attention_heads":32,
        "num_key_value_heads":8,"intermediate_size":14336,"vocab_size":32000,"sliding_window":4096}"#,
    );
    let kv = kv_cache(&l, 32768, 1, 2, None);
    assert_eq!(kv.bytes, 32 * 2 * 8 * 128 * 2 * 4096);
    assert_eq!(kv.full_bytes, 0);
    // Below the window it grows like full attention.
    assert_eq!(
        kv_cache(&l, 1000, 1, 2, None).bytes,
        32 * 2 * 8 * 128 * 2 * 1000
    );
    // Gemma 3: one global layer in six.
    let g = layout(
        r#"{"model_type":"gemma3_text","hidden_size":2560,"num_hidden_layers":12,"num_attention_heads":8,
        "num_key_value_heads":4,"head_dim":256,"intermediate_size":10240,"vocab_size":262208,"sliding_window":1024}"#,
    );
    let kv = kv_cache(&g, 8192, 1, 2, None);
    let per_layer_token = 2 * 4 * 256 * 2;
    assert_eq!(kv.full_bytes, 2 * per_layer_token * 8192);
    assert_eq!(kv.sliding_bytes, 10 * per_layer_token * 1024);
    // `use_sliding_window: false` (Qwen2) disables it.
    let q = layout(
        r#"{"model_type":"qwen2","hidden_size":896,"num_hidden_layers":2,"num_attention_heads":14,
        "num_key_value_heads":2,"intermediate_size":4864,"vocab_size":151936,"sliding_window":4096,"use_sliding_window":false}"#,
    );
    assert_eq!(kv_cache(&q, 8192, 1, 2, None).sliding_bytes, 0);
}

#[test]
fn mla_caches_the_latent() {
    // DeepSeek V3: kv_lora_rank 512 + qk_rope_head_dim 64 = 576 elements per token and layer.
    let l = layout(
        r#"{"model_type":"deepseek_v3","hidden_size":7168,"num_hidden_layers":61,"num_attention_heads":128,
        "num_key_value_heads":128,"intermediate_size":18432,"vocab_size":129280,"kv_lora_rank":512,"qk_rope_head_dim":64,
        "q_lora_rank":1536,"qk_nope_head_dim":128,"v_head_dim":128}"#,
    );
    let kv = kv_cache(&l, 4096, 1, 2, None);
    assert_eq!(kv.bytes_per_token, 61 * 576 * 2);
    assert_eq!(kv.latent_bytes, 61 * 576 * 2 * 4096);
}

#[test]
fn hybrid_linear_attention_has_a_fixed_state() {
    // Qwen3.5 MoE: full attention every 4th layer (10 of 40), Gated DeltaNet elsewhere.
    let l = layout(
        r#"{"model_type":"qwen3_5_moe_text","hidden_size":2048,"num_hidden_layers":40,"num_attention_heads":16,
        "num_key_value_heads":2,"head_dim":256,"vocab_size":248320,"full_attention_interval":4,"linear_conv_kernel_dim":4,
        "linear_key_head_dim":128,"linear_num_key_heads":16,"linear_num_value_heads":32,"linear_value_head_dim":128,
        "mamba_ssm_dtype":"float32"}"#,
    );
    let kv = kv_cache(&l, 10_000, 1, 2, None);
    assert_eq!(kv.bytes_per_token, 10 * 2 * 2 * 256 * 2);
    // conv: 3 × (2×16×128 + 32×128) × 2 bytes; recurrent: 32 × 128 × 128 × 4 bytes.
    let state = 3 * (2 * 16 * 128 + 32 * 128) * 2 + 32 * 128 * 128 * 4;
    assert_eq!(kv.state_bytes, 30 * state);
    assert_eq!(
        kv_cache(&l, 20_000, 1, 2, None).state_bytes,
        30 * state,
        "state does not grow"
    );
    // LFM2: short-convolution layers keep (L_cache - 1) × hidden.
    let lfm = layout(
        r#"{"model_type":"lfm2","hidden_size":2048,"num_hidden_layers":4,"num_attention_heads":32,
        "num_key_value_heads":8,"vocab_size":65536,"conv_L_cache":3,"full_attn_idxs":[2]}"#,
    );
    let kv = kv_cache(&lfm, 100, 1, 2, None);
    assert_eq!(kv.state_bytes, 3 * 2 * 2048 * 2);
    assert_eq!(kv.full_bytes, 2 * 8 * 64 * 2 * 100);
}

#[test]
fn quantized_kv_adds_group_scales() {
    let l = layout(LLAMA3_8B);
    // 4-bit: 128 dims → 64 bytes + 2 groups × (scale + bias) × 2 bytes = 72 per vector.
    assert_eq!(kv_bytes_per_token(&l[0], 2, Some(4)), 2 * 8 * 72);
    assert_eq!(
        kv_cache(&l, 1, 1, 2, Some(4)).bytes_per_token,
        32 * 2 * 8 * 72
    );
    // 8-bit: 128 + 8 = 136 per vector.
    assert_eq!(
        kv_cache(&l, 1, 1, 2, Some(8)).bytes_per_token,
        32 * 2 * 8 * 136
    );
}

#[test]
fn batch_multiplies() {
    let l = layout(LLAMA3_8B);
    assert_eq!(
        kv_cache(&l, 512, 4, 2, None).bytes,
        4 * kv_cache(&l, 512, 1, 2, None).bytes
    );
}
