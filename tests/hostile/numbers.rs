//! Implausible numbers in config.json: (a) layer counts that sized a per-layer Vec, (b)
//! widths that wrapped or were truncated; each is exit 5 naming the field, the value and
//! the range.
use std::path::Path;

use serde_json::json;

use super::*;

// --- (a) layer counts that sized a per-layer Vec -------------------------------------

case!(layers_u64_max_inspect, |m| {
    config(m, "num_hidden_layers", json!(U64_MAX));
    inspect(
        m,
        5,
        "`num_hidden_layers` = 18446744073709551615 is outside the accepted range 1..=1024",
    );
});
case!(layers_u64_max_run, |m| {
    config(m, "num_hidden_layers", json!(U64_MAX));
    run_refused(
        m,
        &[],
        5,
        "config.json: `num_hidden_layers` = 18446744073709551615",
    );
});
case!(layers_1e12_inspect, |m| {
    config(m, "num_hidden_layers", json!(1_000_000_000_000u64));
    inspect(m, 5, "`num_hidden_layers` = 1000000000000");
});
case!(layers_1e9_run, |m| {
    config(m, "num_hidden_layers", json!(1_000_000_000u64));
    run_refused(m, &[], 5, "`num_hidden_layers` = 1000000000");
});
case!(layers_zero, |m| {
    config(m, "num_hidden_layers", json!(0));
    inspect(m, 5, "accepted range 1..=1024");
});

// --- (b) widths that wrapped or were truncated ---------------------------------------

case!(hidden_u64_max, |m| {
    config(m, "hidden_size", json!(U64_MAX));
    inspect(
        m,
        5,
        "`hidden_size` = 18446744073709551615 is outside the accepted range 1..=131072",
    );
});
case!(intermediate_u64_max, |m| {
    config(m, "intermediate_size", json!(U64_MAX));
    inspect(m, 5, "`intermediate_size` = 18446744073709551615");
});
case!(hidden_2_32_plus_128_run, |m| {
    config(m, "hidden_size", json!((1u64 << 32) + 128));
    run_refused(m, &[], 5, "`hidden_size` = 4294967424");
});
case!(vocab_u64_max_run, |m| {
    config(m, "vocab_size", json!(U64_MAX));
    run_refused(m, &[], 5, "`vocab_size` = 18446744073709551615");
});
case!(heads_huge, |m| {
    config(m, "num_attention_heads", json!(1u64 << 40));
    inspect(m, 5, "`num_attention_heads` = 1099511627776");
});
case!(intermediate_negative, |m| {
    config(m, "intermediate_size", json!(-5));
    inspect(m, 5, "`intermediate_size` = -5");
});
case!(hidden_float_huge, |m| {
    config(m, "hidden_size", json!(1e300));
    inspect(m, 5, "`hidden_size` = 1e+300");
});
case!(hidden_fractional, |m| {
    config(m, "hidden_size", json!(64.5));
    inspect(m, 5, "`hidden_size` = 64.5");
});
case!(head_dim_huge_run, |m| {
    config(m, "head_dim", json!(1u64 << 33));
    run_refused(m, &[], 5, "`head_dim` = 8589934592");
});
case!(kv_heads_huge_run, |m| {
    config(m, "num_key_value_heads", json!(U64_MAX));
    run_refused(m, &[], 5, "`num_key_value_heads`");
});
case!(rope_theta_negative_run, |m| {
    config(m, "rope_theta", json!(-1.0));
    run_refused(m, &[], 5, "`rope_theta` = -1.0");
});
case!(eos_token_id_past_u32_run, |m| {
    config(m, "eos_token_id", json!([509, 4294967301u64]));
    run_refused(m, &[], 5, "`eos_token_id` = 4294967301");
});
case!(max_positions_huge, |m| {
    config(m, "max_position_embeddings", json!(U64_MAX));
    inspect(m, 5, "`max_position_embeddings`");
});
case!(sliding_window_huge, |m| {
    config(m, "sliding_window", json!(1e30));
    inspect(m, 5, "`sliding_window`");
});
case!(quant_bits_99, |m| {
    config(m, "quantization", json!({"bits": 99, "group_size": 64}));
    inspect(
        m,
        5,
        "`quantization.bits` = 99 is outside the accepted range 1..=16",
    );
});
case!(quant_group_zero, |m| {
    config(m, "quantization", json!({"bits": 4, "group_size": 0}));
    inspect(m, 5, "`quantization.group_size` = 0");
});
case!(text_config_hidden_huge, |m| {
    config(m, "text_config", json!({"hidden_size": U64_MAX}));
    inspect(m, 5, "`text_config.hidden_size`");
});
case!(vision_config_image_size_huge, |m| {
    config(
        m,
        "vision_config",
        json!({"hidden_size": 64, "image_size": U64_MAX}),
    );
    inspect(m, 5, "`vision_config.image_size`");
});
case!(vision_extremes_with_huge_request_numbers, |m| {
    config(
        m,
        "vision_config",
        json!({"hidden_size": 1024, "intermediate_size": 1 << 20, "num_heads": 1,
            "image_size": 65536, "patch_size": 1}),
    );
    let max = U64_MAX.to_string();
    check(
        &[
            "inspect",
            m.to_str().unwrap(),
            "--images",
            &max,
            "--batch",
            &max,
            "--context",
            &max,
        ],
        &[],
        0,
        "does not fit",
    );
});
