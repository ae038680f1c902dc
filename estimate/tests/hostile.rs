//! Hostile model folders against the estimator: implausible numbers in every config
//! field, random bytes in every file it reads, and files that are not regular files.
//! Never a panic, never an allocation sized by the file; always an error naming it.
#![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use estimate::{EstimateError, Model, Request};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Records the largest single allocation this test binary makes.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// No single allocation of any test here may pass this: the model files are tiny, so
/// anything larger was sized by a number in a file (1e9 layers was a 1 GB Vec).
const ALLOCATION_CAP: usize = 16 << 20;

fn assert_no_large_allocation() {
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest < ALLOCATION_CAP,
        "an allocation of {largest} bytes was made"
    );
}

fn base() -> Value {
    json!({"model_type":"llama","hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"intermediate_size":128,"vocab_size":256,"torch_dtype":"bfloat16",
        "max_position_embeddings":2048})
}

fn folder(config: &Value) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), config.to_string()).unwrap();
    d
}

fn open_err(dir: &Path) -> String {
    match Model::open(dir) {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string(),
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn huge_layer_counts_are_refused_naming_field_value_and_range() {
    for (v, shown) in [
        (json!(u64::MAX), "18446744073709551615"),
        (json!(1_000_000_000_000u64), "1000000000000"),
        (json!(1_000_000_000u64), "1000000000"),
    ] {
        let mut c = base();
        c["num_hidden_layers"] = v;
        let d = folder(&c);
        let e = open_err(d.path());
        assert!(e.contains("config.json"), "{e}");
        assert!(
            e.contains(&format!(
                "`num_hidden_layers` = {shown} is outside the accepted range 1..=1024"
            )),
            "{e}"
        );
    }
    assert_no_large_allocation();
}

#[test]
fn wide_dimensions_are_refused_not_wrapped() {
    for field in [
        "hidden_size",
        "intermediate_size",
        "vocab_size",
        "num_attention_heads",
    ] {
        for v in [
            json!(u64::MAX),
            json!((1u64 << 32) + 128),
            json!(-1),
            json!(1e300),
        ] {
            let mut c = base();
            c[field] = v.clone();
            let d = folder(&c);
            let e = open_err(d.path());
            assert!(e.contains(&format!("`{field}` =")), "{field}={v}: {e}");
            assert!(e.contains("accepted range"), "{field}={v}: {e}");
        }
    }
}

#[test]
fn a_shard_that_is_a_directory_or_a_fifo_is_named() {
    let d = folder(&base());
    let shard = d.path().join("model.safetensors");
    std::fs::create_dir(&shard).unwrap();
    let e = open_err(d.path());
    assert!(
        e.contains("model.safetensors: the shard is a directory"),
        "{e}"
    );
    std::fs::remove_dir(&shard).unwrap();
    mkfifo(&shard);
    let e = open_err(d.path());
    assert!(e.contains("the shard is a FIFO"), "{e}");
}

#[test]
fn fifo_config_and_index_do_not_block() {
    let d = tempfile::tempdir().unwrap();
    mkfifo(&d.path().join("config.json"));
    assert!(open_err(d.path()).contains("config.json is a FIFO"));
    let d = folder(&base());
    mkfifo(&d.path().join("model.safetensors.index.json"));
    assert!(open_err(d.path()).contains("is a FIFO"));
}

#[test]
fn oversized_json_is_refused_before_reading() {
    let d = tempfile::tempdir().unwrap();
    let f = std::fs::File::create(d.path().join("config.json")).unwrap();
    f.set_len(1 << 40).unwrap();
    let e = open_err(d.path());
    assert!(e.contains("over the 4194304-byte limit"), "{e}");
}

#[test]
fn metadata_only_folders_cannot_be_run() {
    let d = folder(&base());
    let m = Model::open(d.path()).unwrap();
    assert!(matches!(
        m.require_weights(),
        Err(EstimateError::NoWeights { .. })
    ));
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        r#"{"metadata":{"total_size":1000},"weight_map":{"a":"model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let m = Model::open(d.path()).unwrap();
    let e = m.require_weights().unwrap_err().to_string();
    assert!(e.contains("model-00001-of-00002.safetensors"), "{e}");
}

/// Every integer field the estimator or the worker reads.
const FIELDS: &[&str] = &[
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "head_dim",
    "max_position_embeddings",
    "sliding_window",
    "num_local_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "n_shared_experts",
    "kv_lora_rank",
    "q_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "sliding_window_pattern",
    "full_attention_interval",
    "linear_num_key_heads",
    "linear_key_head_dim",
    "linear_num_value_heads",
    "linear_value_head_dim",
    "linear_conv_kernel_dim",
    "hidden_size_per_layer_input",
    "vocab_size_per_layer_input",
    "first_k_dense_replace",
    "eos_token_id",
];

const MODEL_TYPES: &[&str] = &[
    "qwen2_5_vl",
    "gemma3",
    "llava",
    "llama",
    "qwen3_next",
    "gemma3_text",
    "gemma2",
    "deepseek_v3",
    "lfm2",
    "falcon",
    "qwen",
    "mixtral",
    "gemma3n",
    "qwen2_5_vl",
];

/// The vision-config fields the estimator reads.
const VISION_FIELDS: &[&str] = &[
    "hidden_size",
    "intermediate_size",
    "num_heads",
    "image_size",
    "patch_size",
    "spatial_merge_size",
    "depth",
    "num_hidden_layers",
    "mlp_ratio",
    "in_channels",
    "temporal_patch_size",
    "pooling_kernel_size",
];

/// Requests with extreme contexts, batches, images and chunks.
fn request() -> impl Strategy<Value = Request> {
    (
        proptest::option::of(any::<u64>()),
        any::<u64>(),
        proptest::option::of(proptest::sample::select(vec![4u8, 8])),
        prop_oneof![Just(0u64), any::<u64>()],
        proptest::option::of(proptest::sample::select(vec![2u8, 3, 4, 8])),
        any::<u64>(),
    )
        .prop_map(
            |(context, batch, kv_bits, images, quant_bits, prefill_chunk)| Request {
                context,
                batch,
                kv_bits,
                images,
                quant_bits,
                prefill_chunk,
                ..Request::default()
            },
        )
}

fn extreme() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        (0u64..5000).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(u64::MAX)),
        Just(json!(0)),
        Just(json!(1u64 << 32)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(json!("12")),
        Just(json!([1, 2, 3])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Random and extreme values in random fields: open either fails naming config.json
    /// or gives an estimate; the arithmetic never panics.
    #[test]
    fn random_numbers_in_config_fields_never_panic(
        mt in proptest::sample::select(MODEL_TYPES),
        edits in proptest::collection::vec((proptest::sample::select(FIELDS), extreme()), 1..6),
        quant in proptest::option::of((extreme(), extreme())),
        vision in proptest::option::of(proptest::collection::vec(
            (proptest::sample::select(VISION_FIELDS), extreme()), 0..6)),
        req in request(),
    ) {
        let mut c = base();
        c["model_type"] = json!(mt);
        for (f, v) in edits {
            c[f] = v;
        }
        if let Some((bits, group)) = quant {
            c["quantization"] = json!({"bits": bits, "group_size": group});
        }
        if let Some(edits) = vision {
            let mut v = json!({"hidden_size": 64, "num_heads": 4, "intermediate_size": 128,
                "image_size": 224, "patch_size": 14, "depth": 2});
            for (f, x) in edits {
                v[f] = x;
            }
            c["vision_config"] = v;
        }
        let d = folder(&c);
        match Model::open(d.path()) {
            Ok(m) => {
                let est = estimate::estimate(&m, &req);
                prop_assert!(est.total_bytes > 0);
                let _ = m.weights_at_bits(4);
            }
            Err(e) => prop_assert!(e.path().ends_with("config.json"), "{}", e),
        }
        assert_no_large_allocation();
    }

    /// Random bytes as config.json, the index and a shard: never a panic.
    #[test]
    fn random_bytes_in_every_file_never_panic(
        config in proptest::collection::vec(any::<u8>(), 0..300),
        index in proptest::collection::vec(any::<u8>(), 0..300),
        shard in proptest::collection::vec(any::<u8>(), 0..300),
        which in 0u8..3,
    ) {
        let d = folder(&base());
        match which {
            0 => std::fs::write(d.path().join("config.json"), &config).unwrap(),
            1 => std::fs::write(d.path().join("model.safetensors.index.json"), &index).unwrap(),
            _ => std::fs::write(d.path().join("model.safetensors"), &shard).unwrap(),
        }
        let _ = Model::open(d.path());
        assert_no_large_allocation();
    }
}
