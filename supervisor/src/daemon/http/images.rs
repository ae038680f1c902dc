//! Chat messages' `image_url` parts: only `data:` URLs (base64 PNG or JPEG) are taken —
//! the daemon makes no outbound requests, so a remote URL is a 400 saying so. The bytes
//! are decoded and resized here, with the model's processor settings, by the same
//! `vision` crate `run --image` uses; the worker gets the resized RGB.

use std::path::Path;

use protocol::ImageInput;

use super::error::ApiError;

/// One image part as the request gave it: its chat message and where it was.
pub struct RawImage {
    pub message: u32,
    /// `messages[i].content[j].image_url`, for errors.
    pub param: String,
    pub url: String,
}

/// The bytes of a `data:[type];base64,…` URL; anything else is a 400 naming `param`.
pub fn data_url_bytes(url: &str, param: &str) -> Result<Vec<u8>, ApiError> {
    let Some(rest) = url.strip_prefix("data:") else {
        let scheme = url.split(':').next().unwrap_or("");
        let what = if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") {
            "remote image URLs are refused: the daemon makes no outbound requests; send the image inline as a data: URL (data:image/png;base64,…)".to_string()
        } else {
            "an image_url must be a data: URL (data:image/png;base64,…)".to_string()
        };
        return Err(ApiError::bad_request(param, what));
    };
    let Some((meta, payload)) = rest.split_once(',') else {
        return Err(ApiError::bad_request(param, "a data: URL without a comma"));
    };
    if !meta.ends_with(";base64") {
        return Err(ApiError::bad_request(
            param,
            "a data: URL for an image must be base64 (;base64)",
        ));
    }
    let cap = vision::MAX_FILE_BYTES as usize;
    if payload.len() / 4 * 3 > cap {
        return Err(ApiError::bad_request(
            param,
            format!("the image is over the {cap}-byte cap"),
        ));
    }
    base64_decode(payload)
        .ok_or_else(|| ApiError::bad_request(param, "invalid base64 in the data: URL"))
}

/// Standard base64 (padding optional, no whitespace inside).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    base64::decode_config(s.trim_end_matches('='), base64::STANDARD_NO_PAD).ok()
}

/// Decodes and resizes the images for the model in `dir`.
pub fn prepare(dir: &Path, raw: &[RawImage]) -> Result<Vec<ImageInput>, ApiError> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let cfg = vision::ProcessorConfig::from_model_dir(dir)
        .map_err(|e| ApiError::bad_request("model", format!("cannot read model: {e}")))?;
    let mut total = 0usize;
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        let bytes = data_url_bytes(&r.url, &r.param)?;
        let img = vision::decode_bytes(&bytes, Path::new(&r.param))
            .map_err(|e| ApiError::bad_request(&r.param, e.to_string()))?;
        let resized = vision::resize_for_model(&img, &cfg).map_err(|reason| {
            ApiError::bad_request(&r.param, format!("{}x{}: {reason}", img.width, img.height))
        })?;
        total = total.saturating_add(resized.data.len());
        if total > crate::images::MAX_IMAGE_BYTES {
            return Err(ApiError::bad_request(
                &r.param,
                format!(
                    "the images come to {total} bytes of RGB at the model's processed sizes, over the {} one request carries",
                    crate::images::MAX_IMAGE_BYTES
                ),
            ));
        }
        out.push(ImageInput {
            message: r.message,
            width: resized.width,
            height: resized.height,
            rgb: resized.data,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_refuses_garbage() {
        assert_eq!(base64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
        assert!(base64_decode("aGV$bG8=").is_none());
        assert!(base64_decode("a").is_none());
    }

    #[test]
    fn remote_urls_are_refused_by_name() {
        let e = data_url_bytes(
            "https://example.com/cat.png",
            "messages[0].content[1].image_url",
        )
        .err()
        .map(|e| e.message)
        .unwrap_or_default();
        assert!(e.contains("no outbound requests"), "{e}");
        let e = data_url_bytes("data:image/png,abc", "p")
            .err()
            .map(|e| e.message);
        assert!(e.is_some_and(|m| m.contains("base64")));
    }
}
