//! The processor against the reference processors on real files: PNG and JPEG images of
//! different sizes and aspect ratios (grey, RGBA, 16-bit, up- and downscaled, unchanged),
//! made here, then read by mlx-vlm's and transformers' Qwen2-VL processors in .venv-vlm
//! (`scripts/setup.sh`). PNG decodes must equal Pillow's byte for byte and the pixel values
//! must equal the references' bit for bit; JPEG decoders (zune-jpeg here, libjpeg-turbo in
//! Pillow) are allowed a small documented difference, and the processing of Pillow's own
//! decode must still be bit-exact.
use std::path::{Path, PathBuf};
use std::process::Command;

use image::{ImageBuffer, ImageEncoder, Luma, LumaA, Rgb, Rgba};
use vision::{decode_file, process_image, smart_resize, ProcessorConfig, Rescale, RgbImage};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// A deterministic picture with smooth gradients, hard edges and noise (so the bicubic
/// lobes clip and every rounding path is taken).
fn pixel(x: u32, y: u32, c: u32, seed: u32) -> u8 {
    let mut h = x.wrapping_mul(0x9E37_79B1)
        ^ y.wrapping_mul(0x85EB_CA77)
        ^ (c + seed).wrapping_mul(0xC2B2_AE3D);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    let grad = (x * 255 / 97 + y * 255 / 61 + c * 85) % 256;
    let edge = if ((x / 9) + (y / 7)).is_multiple_of(2) {
        0
    } else {
        180
    };
    ((grad + edge + (h % 48)) % 256) as u8
}

enum Kind {
    Rgb8,
    Grey8,
    Rgba8,
    Rgb16,
    GreyA8,
}

fn write_png(path: &Path, w: u32, h: u32, kind: Kind, seed: u32) {
    let res = match kind {
        Kind::Rgb8 => {
            ImageBuffer::from_fn(w, h, |x, y| Rgb([0, 1, 2].map(|c| pixel(x, y, c, seed))))
                .save(path)
        }
        Kind::Grey8 => ImageBuffer::from_fn(w, h, |x, y| Luma([pixel(x, y, 0, seed)])).save(path),
        Kind::Rgba8 => ImageBuffer::from_fn(w, h, |x, y| {
            Rgba([0, 1, 2, 3].map(|c| pixel(x, y, c, seed)))
        })
        .save(path),
        Kind::GreyA8 => {
            ImageBuffer::from_fn(w, h, |x, y| LumaA([0, 3].map(|c| pixel(x, y, c, seed))))
                .save(path)
        }
        Kind::Rgb16 => ImageBuffer::from_fn(w, h, |x, y| {
            Rgb([0, 1, 2].map(|c| u16::from(pixel(x, y, c, seed)) * 256 + (x % 200) as u16))
        })
        .save(path),
    };
    res.expect("write png");
}

fn write_jpeg(path: &Path, w: u32, h: u32, seed: u32) {
    let img: ImageBuffer<Rgb<u8>, Vec<u8>> =
        ImageBuffer::from_fn(w, h, |x, y| Rgb([0, 1, 2].map(|c| pixel(x, y, c, seed))));
    let file = std::fs::File::create(path).expect("create jpeg");
    image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(file), 90)
        .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .expect("write jpeg");
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .expect("reference output")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn compare(ours: &[f32], theirs: &[f32]) -> (usize, f32) {
    assert_eq!(ours.len(), theirs.len(), "pixel_values sizes differ");
    let differ = ours
        .iter()
        .zip(theirs)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    let max = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    (differ, max)
}

/// The reference's interpreter, or `None` when MLXSUP_SKIP_VLM says it was not installed.
fn reference_python() -> Option<PathBuf> {
    let py = repo().join(".venv-vlm/bin/python");
    if py.exists() {
        return Some(py);
    }
    assert!(
        std::env::var_os("MLXSUP_SKIP_VLM").is_some(),
        "{} is missing: run scripts/setup.sh (or set MLXSUP_SKIP_VLM=1)",
        py.display()
    );
    eprintln!("skipped: MLXSUP_SKIP_VLM is set and .venv-vlm is missing");
    None
}

#[test]
fn smart_resize_equals_the_references() {
    let Some(py) = reference_python() else { return };
    // Ties (x.5 × 28 rounds to even), both limits, thin and huge images, Qwen2-VL's
    // defaults and Qwen2.5-VL-7B's max_pixels.
    let mut cases: Vec<[u64; 4]> = Vec::new();
    let limits = [
        (3136u64, 1_003_520u64),
        (3136, 12_845_056),
        (200_704, 401_408),
    ];
    let mut x = 12345u64;
    for i in 0..600u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let h = match i % 4 {
            0 => 14 + 28 * (i % 60), // a tie every time
            1 => 1 + (x >> 33) % 9000,
            2 => 1 + (x >> 40) % 300,
            _ => 1 + (x >> 20) % 30000,
        };
        let w = 1 + (x >> 13) % if i % 3 == 0 { 400 } else { 12000 };
        let (lo, hi) = limits[(i % 3) as usize];
        cases.push([h, w, lo, hi]);
    }
    let mut child = Command::new(&py)
        .arg(repo().join("vision/tests/reference_processor.py"))
        .arg("--sizes")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the reference");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(serde_json::to_string(&cases).expect("json").as_bytes())
            .expect("write cases");
    }
    let out = child.wait_with_output().expect("reference output");
    assert!(out.status.success(), "reference failed");
    let theirs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    let mut refused = 0;
    for (c, t) in cases.iter().zip(&theirs) {
        let cfg = ProcessorConfig {
            min_pixels: c[2],
            max_pixels: c[3],
            ..ProcessorConfig::default()
        };
        let ours = match smart_resize(c[0] as u32, c[1] as u32, &cfg) {
            Ok((h, w)) => serde_json::json!([h, w]),
            Err(_) => {
                refused += 1;
                serde_json::Value::Null
            }
        };
        assert_eq!(ours, t["mlxvlm"], "{c:?} vs mlx-vlm");
        assert_eq!(ours, t["hf"], "{c:?} vs transformers");
    }
    assert!(
        refused > 0 && refused < cases.len() / 2,
        "{refused} refused"
    );
}

#[test]
fn pixel_values_equal_the_reference_processors() {
    let Some(py) = reference_python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // (file, is_jpeg): sizes chosen for each path of smart resize and the resampler.
    let mut files: Vec<(PathBuf, bool)> = Vec::new();
    let mut png = |name: &str, w, h, kind, seed| {
        let p = d.join(name);
        write_png(&p, w, h, kind, seed);
        files.push((p, false));
    };
    png("photo_640x480.png", 640, 480, Kind::Rgb8, 1); // both sides resized a little
    png("square_448.png", 448, 448, Kind::Rgb8, 2); // already on the grid: a copy
    png("tall_grey_30x200.png", 30, 200, Kind::Grey8, 3); // upscaled to min_pixels
    png("rgba_97x61.png", 97, 61, Kind::Rgba8, 4); // alpha dropped, upscaled
    png("wide_1900x700.png", 1900, 700, Kind::Rgb8, 5); // downscaled under max_pixels
    png("rgb16_150x90.png", 150, 90, Kind::Rgb16, 6); // 16-bit: the high byte
    png("greya_56x300.png", 56, 300, Kind::GreyA8, 7); // only the height changes
    let jpegs = [
        ("jpeg_800x600.jpg", 800, 600, 8),
        ("jpeg_333x1500.jpg", 333, 1500, 9),
    ];
    for (name, w, h, seed) in jpegs {
        let p = d.join(name);
        write_jpeg(&p, w, h, seed);
        files.push((p, true));
    }
    let out = d.join("ref");
    std::fs::create_dir(&out).expect("mkdir");
    let run = Command::new(&py)
        .arg(repo().join("vision/tests/reference_processor.py"))
        .arg(&out)
        .args(files.iter().map(|f| &f.0))
        .output()
        .expect("run the reference processor");
    assert!(
        run.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).expect("reference JSON");

    let mv_cfg = ProcessorConfig::default();
    let hf_cfg = ProcessorConfig {
        rescale: Rescale::F64,
        ..ProcessorConfig::default()
    };
    for (i, (path, is_jpeg)) in files.iter().enumerate() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        let r = &report[i];
        let ours_img = decode_file(path).expect("decode");
        let pil = RgbImage {
            width: ours_img.width,
            height: ours_img.height,
            data: std::fs::read(out.join(format!("{i}.rgb"))).expect("pillow rgb"),
        };
        assert_eq!(
            r["size"],
            serde_json::json!([ours_img.height, ours_img.width]),
            "{name}: size"
        );
        let decode_max = ours_img
            .data
            .iter()
            .zip(&pil.data)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        let decode_differ = ours_img
            .data
            .iter()
            .zip(&pil.data)
            .filter(|(a, b)| a != b)
            .count();
        eprintln!(
            "{name}: decode vs Pillow: {decode_differ} of {} bytes differ, max {decode_max}",
            pil.data.len()
        );
        if *is_jpeg {
            // zune-jpeg vs libjpeg-turbo: IDCT and chroma upsampling round differently.
            assert!(
                decode_max <= 4,
                "{name}: JPEG decode differs from Pillow's by {decode_max}"
            );
        } else {
            assert_eq!(decode_differ, 0, "{name}: PNG decode differs from Pillow's");
        }
        // The processing itself, on Pillow's decode: bit-exact against both references.
        for (cfg, tag, grid_key) in [
            (&mv_cfg, "mlxvlm", "mlxvlm_grid"),
            (&hf_cfg, "hf", "hf_grid"),
        ] {
            let ours = process_image(&pil, cfg).expect("process");
            assert_eq!(
                serde_json::json!(ours.grid_thw),
                r[grid_key],
                "{name}: image_grid_thw vs {tag}"
            );
            let theirs = read_f32(&out.join(format!("{i}.{tag}.f32")));
            assert_eq!(
                theirs.len(),
                ours.rows * ours.cols,
                "{name}: shape vs {tag}"
            );
            let (differ, max) = compare(&ours.data, &theirs);
            assert_eq!(
                differ, 0,
                "{name}: {differ} values differ from {tag} (max {max})"
            );
        }
        // End to end from the file: exact for PNG; for JPEG, how far the decode carries.
        let ours = process_image(&ours_img, &mv_cfg).expect("process");
        let (differ, max) = compare(&ours.data, &read_f32(&out.join(format!("{i}.mlxvlm.f32"))));
        eprintln!(
            "{name}: from the file, {differ} of {} values differ from mlx-vlm, max {max}",
            ours.data.len()
        );
        if !is_jpeg {
            assert_eq!(differ, 0, "{name}: end to end differs from mlx-vlm");
        }
    }
}
