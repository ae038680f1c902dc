//! The Qwen2.5-VL and Qwen2-VL towers against mlx-vlm's (0.7.6, .venv-vlm) on tiny random folders from
//! `make_model`, with pixel values from the `vision` crate for images made here (one and
//! two, different sizes and aspects, windows cut at the edges). The reference runs with
//! the OpenBLAS this process uses (`LD_PRELOAD`): with the wheel's own BLAS, bf16 results
//! move by one ulp (1.7e-2 at the outputs' magnitude) where the sums round differently.
#![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use mlx_rs::Array;
use protocol::ModelSpec;
use vision::{process_image, ProcessorConfig, RgbImage};

use super::qwen25::{to_f32_vec, TowerConfig, VisionTower};

pub(super) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The OpenBLAS this process runs MLX's matmuls with (the build links Debian's ahead of
/// the wheel's reference BLAS), so the reference can be given the same one: the two BLAS
/// libraries sum in different orders, which moves bf16 results by an ulp.
pub(super) fn own_openblas() -> Option<String> {
    std::fs::read_to_string("/proc/self/maps")
        .ok()?
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("libopenblas"))
        .map(str::to_string)
}

fn picture(w: u32, h: u32, seed: u32) -> RgbImage {
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3u32 {
                data.push(((x * (7 + c) + y * (3 + seed) + (x ^ y) % 29) % 256) as u8);
            }
        }
    }
    RgbImage {
        width: w,
        height: h,
        data,
    }
}

fn compare(arch: &str, dtype: &str, images: &[(u32, u32)]) -> f32 {
    let py = repo().join(".venv-vlm/bin/python");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let spec = ModelSpec {
        dir: dir.display().to_string(),
        arch: arch.into(),
        hidden: 128,
        layers: 3,
        heads: 4,
        kv_heads: 2,
        intermediate: 256,
        vocab: 1024,
        dtype: dtype.into(),
        quant_bits: None,
        group_size: 64,
        seed: 5,
        options: Default::default(),
    };
    crate::make_model::make_model(&spec).unwrap();
    let cfg = ProcessorConfig::from_model_dir(&dir).unwrap();
    let mut pixels = Vec::new();
    let mut grids = Vec::new();
    for (i, (w, h)) in images.iter().enumerate() {
        let pv = process_image(&picture(*w, *h, i as u32), &cfg).unwrap();
        grids.push(pv.grid_thw.map(|g| g as i32));
        pixels.extend(pv.data);
    }
    let pix_path = tmp.path().join("pixels.f32");
    std::fs::write(
        &pix_path,
        pixels
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let out_path = tmp.path().join("tower.f32");
    let mut cmd = Command::new(&py);
    if let Some(blas) = own_openblas() {
        cmd.env("LD_PRELOAD", blas);
    }
    let run = cmd
        .arg(repo().join("tests/vlm_reference.py"))
        .arg("tower")
        .arg(&dir)
        .arg(&pix_path)
        .arg(serde_json::to_string(&grids).unwrap())
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "mlx-vlm: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let theirs: Vec<f32> = std::fs::read(&out_path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();

    let tcfg: TowerConfig = crate::engine::config::load(&dir).unwrap().vl.unwrap().tower;
    let mut weights = Array::load_safetensors(dir.join("model.safetensors")).unwrap();
    let tower = VisionTower::load(tcfg, &mut weights).unwrap();
    let cols = 3 * 2 * 14 * 14;
    let rows = (pixels.len() / cols) as i32;
    let x = Array::from_slice(&pixels, &[rows, cols as i32]);
    let ours = to_f32_vec(&tower.forward(&x, &grids).unwrap()).unwrap();
    assert_eq!(ours.len(), theirs.len(), "output sizes");
    assert_eq!(ours.len(), rows as usize / 4 * 128);
    let max = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = theirs.iter().map(|v| v.abs()).fold(0f32, f32::max);
    eprintln!("{arch} {dtype} {images:?}: max |ours - mlx-vlm| = {max:e} (outputs up to {scale})");
    assert!(scale > 0.1, "a flat output proves nothing: {scale}");
    max
}

pub(super) fn have_reference() -> bool {
    let present = repo().join(".venv-vlm/bin/python").exists();
    assert!(
        present || std::env::var_os("MLXSUP_SKIP_VLM").is_some(),
        ".venv-vlm is missing: run scripts/setup.sh (or set MLXSUP_SKIP_VLM=1)"
    );
    present
}

#[test]
fn qwen25_tower_matches_mlx_vlm() {
    if !have_reference() {
        return;
    }
    // 300x200 → 308x196: 22×14 patches, windows of 4×4 merged units cut at both edges;
    // with 97x160 the second image's rotary and window indices follow the first's.
    for dtype in ["f32", "bf16"] {
        for images in [&[(300, 200)][..], &[(300, 200), (97, 160)][..]] {
            // Measured: f32 within 1e-6, bf16 bit-identical (with the same BLAS).
            let max = compare("qwen2_5_vl", dtype, images);
            assert!(max <= 1e-3, "{dtype} {images:?}: {max} over 1e-3");
        }
    }
}

#[test]
fn qwen2_tower_matches_mlx_vlm() {
    if !have_reference() {
        return;
    }
    // Qwen2-VL: LayerNorm blocks, the GELU MLP, full attention per image.
    for dtype in ["f32", "bf16"] {
        for images in [&[(300, 200)][..], &[(300, 200), (97, 160)][..]] {
            let max = compare("qwen2_vl", dtype, images);
            assert!(max <= 1e-3, "{dtype} {images:?}: {max} over 1e-3");
        }
    }
}

/// Both of transformers' Qwen-VL layouts map to mlx-community's names; those stay.
#[test]
fn hugging_face_names_map_to_mlx_community_names() {
    use super::mlx_name;
    let cases = [
        (
            "visual.blocks.0.attn.qkv.weight",
            Some("vision_tower.blocks.0.attn.qkv.weight"),
        ),
        (
            "model.visual.merger.mlp.0.bias",
            Some("vision_tower.merger.mlp.0.bias"),
        ),
        (
            "model.layers.3.mlp.up_proj.weight",
            Some("language_model.model.layers.3.mlp.up_proj.weight"),
        ),
        (
            "model.language_model.norm.weight",
            Some("language_model.model.norm.weight"),
        ),
        ("lm_head.weight", Some("language_model.lm_head.weight")),
        (
            "model.embed_tokens.weight",
            Some("language_model.model.embed_tokens.weight"),
        ),
        ("language_model.model.norm.weight", None),
        ("vision_tower.patch_embed.proj.weight", None),
    ];
    for (hf, mlx) in cases {
        assert_eq!(mlx_name(hf).as_deref(), mlx, "{hf}");
    }
}
