//! Hostile images: truncated files, headers claiming 30000×30000, random bytes, mutated
//! real files. Each is a clear error naming the file (or decodes within the caps), never
//! a panic, and the pixel cap refuses a huge header before any pixel is allocated.
use std::io::Cursor;
use std::path::Path;

use image::{ImageBuffer, ImageFormat, Rgb};
use proptest::prelude::*;
use vision::{decode_bytes, decode_file, process_file, ImageError, ProcessorConfig, MAX_PIXELS};

fn encoded(format: ImageFormat, w: u32, h: u32) -> Vec<u8> {
    let img: ImageBuffer<Rgb<u8>, Vec<u8>> = ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([(x * 7) as u8, (y * 5) as u8, (x ^ y) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid PNG whose IHDR (with a correct CRC) claims `w × h`.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut png = encoded(ImageFormat::Png, 8, 8);
    // signature (8), length (4), "IHDR" (4), width, height, ...
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// A JPEG whose SOF segment claims `w × h`.
fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let mut jpg = encoded(ImageFormat::Jpeg, 8, 8);
    let sof = jpg
        .windows(2)
        .position(|m| m[0] == 0xFF && (0xC0..=0xC2).contains(&m[1]))
        .expect("SOF marker");
    // FF Cx, length (2), precision (1), height (2), width (2)
    jpg[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    jpg[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    jpg
}

#[test]
fn huge_headers_are_refused_before_decoding() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, bytes) in [
        ("huge.png", png_claiming(30_000, 30_000)),
        ("huge.jpg", jpeg_claiming(30_000, 30_000)),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).expect("write");
        match decode_file(&path) {
            Err(e @ ImageError::TooManyPixels { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(name) && msg.contains("30000x30000"), "{msg}");
                assert!(msg.contains(&MAX_PIXELS.to_string()), "{msg}");
            }
            other => panic!("{name}: expected TooManyPixels, got {other:?}"),
        }
    }
}

#[test]
fn truncated_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, format) in [
        ("cut.png", ImageFormat::Png),
        ("cut.jpg", ImageFormat::Jpeg),
    ] {
        let full = encoded(format, 64, 48);
        for keep in [0, 1, 4, 8, 20, 40, full.len() / 2, full.len() - 2] {
            let path = dir.path().join(name);
            std::fs::write(&path, &full[..keep]).expect("write");
            let e = match decode_file(&path) {
                Ok(img) => panic!(
                    "{keep} bytes of {name} decoded to {}x{}",
                    img.width, img.height
                ),
                Err(e) => e,
            };
            assert!(e.to_string().contains(name), "{keep} bytes of {name}: {e}");
        }
    }
}

#[test]
fn non_images_missing_files_and_bad_geometry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("notes.png");
    std::fs::write(&text, b"this is not an image at all, just text").expect("write");
    let e = decode_file(&text).expect_err("text");
    assert!(
        matches!(e, ImageError::NotAnImage { .. }) && e.to_string().contains("notes.png"),
        "{e}"
    );
    let gif = dir.path().join("anim.gif");
    std::fs::write(&gif, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").expect("write");
    let e = decode_file(&gif).expect_err("gif");
    assert!(e.to_string().contains("not supported"), "{e}");
    let missing = dir.path().join("nowhere.jpg");
    let e = decode_file(&missing).expect_err("missing");
    assert!(
        matches!(e, ImageError::Read { .. }) && e.to_string().contains("nowhere.jpg"),
        "{e}"
    );
    // 1×300: over the reference's aspect-ratio limit of 200.
    let thin = dir.path().join("thin.png");
    std::fs::write(&thin, encoded(ImageFormat::Png, 300, 1)).expect("write");
    let e = process_file(&thin, &ProcessorConfig::default()).expect_err("aspect");
    assert!(
        e.to_string().contains("thin.png") && e.to_string().contains("aspect"),
        "{e}"
    );
}

fn never_panics(bytes: &[u8]) {
    match decode_bytes(bytes, Path::new("fuzz.bin")) {
        Ok(img) => {
            assert!(u64::from(img.width) * u64::from(img.height) <= MAX_PIXELS);
            assert_eq!(
                img.data.len() as u64,
                u64::from(img.width) * u64::from(img.height) * 3
            );
        }
        Err(e) => assert!(e.to_string().contains("fuzz.bin"), "{e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        never_panics(&bytes);
    }

    #[test]
    fn mutated_images_never_panic(
        png in any::<bool>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encoded(if png { ImageFormat::Png } else { ImageFormat::Jpeg }, 40, 30);
        for (at, v) in edits {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        let keep = cut.index(bytes.len() + 1).max(bytes.len() / 2);
        never_panics(&bytes[..keep]);
    }

    #[test]
    fn claimed_sizes_over_the_cap_are_refused(w in 1u32..200_000, h in 1u32..200_000) {
        let r = decode_bytes(&png_claiming(w, h), Path::new("claim.png"));
        if u64::from(w) * u64::from(h) > MAX_PIXELS {
            let refused = matches!(r, Err(ImageError::TooManyPixels { .. }));
            prop_assert!(refused, "{w}x{h}: {r:?}");
        } else {
            // Under the cap the header is believed, and the 8×8 data does not fill it.
            prop_assert!(r.is_err() || (w <= 8 && h <= 8), "{w}x{h} decoded");
        }
    }
}
