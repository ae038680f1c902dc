//! Planning per image on the fixture corpus's Qwen2-VL-family configs (Qwen2.5-VL-7B,
//! UI-TARS-1.5, olmOCR): the image tokens come from the processor's smart resize with
//! each folder's `preprocessor_config.json`, their KV is added to the context's, and the
//! vision activations are planned at that size.
use std::path::{Path, PathBuf};

use estimate::{estimate, Bytes, Model, Request};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

const QWEN_VL: [&str; 3] = [
    "Qwen__Qwen2.5-VL-7B-Instruct",
    "ByteDance-Seed__UI-TARS-1.5-7B",
    "allenai__olmOCR-7B-0225-preview",
];

fn req(images: u64, size: Option<(u32, u32)>, context: u64) -> Request {
    Request {
        context: Some(context),
        images,
        image_size: size,
        budget: Bytes(64 * Bytes::GIB),
        ..Request::default()
    }
}

#[test]
fn image_tokens_follow_the_processor_resize() {
    for name in QWEN_VL {
        let model = Model::open(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let v = model
            .vision
            .unwrap_or_else(|| panic!("{name}: no vision tower"));
        let grid = v.qwen.unwrap_or_else(|| panic!("{name}: no Qwen grid"));
        // From the folder's preprocessor_config.json, not the processor's defaults.
        assert_eq!(
            (grid.min_pixels, grid.max_pixels),
            (3136, 12_845_056),
            "{name}"
        );
        assert_eq!((grid.patch_size, grid.merge_size), (14, 2), "{name}");
        // (width, height) → (resized w, h, tokens), worked by hand from smart_resize:
        // 1280x720: 45.7 → 46 × 28 = 1288, 25.7 → 26 × 28 = 728; 92×52 patches / 4.
        // 8000x6000 is over max_pixels: beta = sqrt(48e6 / 12845056) = 1.933, so
        // floor(8000/1.933/28) × 28 = 4116 and floor(6000/1.933/28) × 28 = 3080.
        // 20x20 is under min_pixels: scaled up to 56x56, 4 tokens.
        for ((w, h), (rw, rh, tokens)) in [
            ((448, 448), (448, 448, 256)),
            ((1280, 720), (1288, 728, 1196)),
            ((8000, 6000), (4116, 3080, 16_170)),
            ((20, 20), (56, 56, 4)),
        ] {
            let est = estimate(&model, &req(1, Some((w, h)), 1024));
            let vr = est
                .vision
                .unwrap_or_else(|| panic!("{name}: no vision report"));
            let plan = vr.image.unwrap_or_else(|| panic!("{name}: no image plan"));
            assert_eq!(
                (plan.resized_width, plan.resized_height, plan.tokens),
                (rw, rh, tokens),
                "{name} at {w}x{h}"
            );
            assert_eq!(vr.tokens_per_image, tokens);
            assert_eq!(plan.patches, tokens * 4);
        }
    }
}

#[test]
fn image_tokens_kv_and_activations_are_planned() {
    for name in QWEN_VL {
        let model = Model::open(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let v = model
            .vision
            .unwrap_or_else(|| panic!("{name}: no vision tower"));
        let text = estimate(&model, &req(0, None, 4096));
        let two = estimate(&model, &req(2, Some((1280, 720)), 4096));
        // Two images of 1196 tokens are 2392 more tokens in the KV cache, exactly as if
        // the text context were that much longer.
        let longer = estimate(&model, &req(0, None, 4096 + 2 * 1196));
        assert_eq!(two.kv_cache.bytes, longer.kv_cache.bytes, "{name}");
        assert_eq!(two.kv_cache.context, 4096 + 2392, "{name}");
        let vr = two
            .vision
            .unwrap_or_else(|| panic!("{name}: no vision report"));
        assert_eq!(vr.image_tokens, 2392);
        assert_eq!(
            vr.kv_bytes,
            two.kv_cache.bytes - text.kv_cache.bytes,
            "{name}"
        );
        // Qwen2.5-VL-7B's text side: 28 layers × K,V × 4 heads × 128 × bf16.
        assert_eq!(vr.kv_bytes, 2392 * 28 * 2 * 4 * 128 * 2, "{name}");
        // The tower's activations at 92×52 patches per image, not the 448×448 default.
        let elem = if two.weights.compute_f32 { 4 } else { 2 };
        assert_eq!(
            vr.activation_bytes,
            estimate::activation::BUILTIN
                .vision
                .predict(&v.tower_shape(), elem, &[4784, 4784]),
            "{name}"
        );
        assert_eq!(v.tower_shape().values_per_patch, 1176, "{name}");
        let small = estimate(&model, &req(2, Some((448, 448)), 4096));
        let small_act = small.vision.map_or(0, |s| s.activation_bytes);
        assert!(
            vr.activation_bytes > 4 * small_act,
            "{name}: {} vs {small_act}",
            vr.activation_bytes
        );
        assert!(two.total_bytes > small.total_bytes && small.total_bytes > text.total_bytes);
    }
}

#[test]
fn refused_sizes_and_unmodelled_towers_warn() {
    let model = Model::open(&fixture(QWEN_VL[0])).unwrap_or_else(|e| panic!("{e}"));
    // 1×300: the processor refuses an aspect ratio over 200; the default size is planned.
    let est = estimate(&model, &req(1, Some((300, 1)), 1024));
    assert!(
        est.warnings
            .iter()
            .any(|w| w.contains("aspect ratio") && w.contains("300x1")),
        "{:?}",
        est.warnings
    );
    assert_eq!(est.vision.map(|v| v.tokens_per_image), Some(256));
    // A tower whose token count does not depend on the size says so.
    let gemma = Model::open(&fixture("google__medgemma-27b-it")).unwrap_or_else(|e| panic!("{e}"));
    let est = estimate(&gemma, &req(1, Some((1280, 720)), 1024));
    assert!(
        est.warnings
            .iter()
            .any(|w| w.contains("--image-size is not modelled")),
        "{:?}",
        est.warnings
    );
}

#[test]
fn advice_names_how_many_images_or_what_size_fit() {
    let model = Model::open(&fixture(QWEN_VL[0])).unwrap_or_else(|e| panic!("{e}"));
    let text = estimate(&model, &req(0, None, 4096));
    let one = estimate(&model, &req(1, Some((3000, 2000)), 4096));
    // Room for the text and one 3000x2000 image, not for four.
    let budget = Bytes(one.total_bytes + (one.total_bytes - text.total_bytes) / 2);
    let four = estimate(
        &model,
        &Request {
            budget,
            ..req(4, Some((3000, 2000)), 4096)
        },
    );
    assert_eq!(
        four.verdict,
        estimate::Verdict::DoesNotFit,
        "{}",
        four.advice
    );
    assert!(
        four.advice.contains("1 of the 4 images fit at 3000x2000"),
        "{}",
        four.advice
    );
    let size = four
        .advice
        .split("--image-size ")
        .nth(1)
        .and_then(|s| s.trim_end_matches(')').split_once('x'))
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .unwrap_or_else(|| panic!("no size in: {}", four.advice));
    assert!(size.0 < 3000 && size.0 * 2 / 3 <= size.1 + 1, "{size:?}");
    let at = estimate(
        &model,
        &Request {
            budget,
            ..req(4, Some(size), 4096)
        },
    );
    assert_ne!(
        at.verdict,
        estimate::Verdict::DoesNotFit,
        "{size:?}: {}",
        at.advice
    );
    // A few pixels more on the long side no longer fits (the size is the largest).
    let over = estimate(
        &model,
        &Request {
            budget,
            ..req(4, Some((size.0 + 60, size.1 + 40)), 4096)
        },
    );
    assert_eq!(
        over.verdict,
        estimate::Verdict::DoesNotFit,
        "{}",
        over.advice
    );
}
