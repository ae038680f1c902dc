//! Reading a safetensors shard's header — the 8-byte length and the JSON table of
//! tensors — without touching the tensor data, and checking it is consistent.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::dtype::Dtype;
use crate::error::EstimateError;

/// Largest header accepted, checked before allocating: 100 MB. Real headers are
/// 19 KB–2.2 MB; a larger length is corruption or an attack.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Most JSON values a header may have: about 12 per tensor, so some 160 000 tensors in
/// one shard (real shards have at most tens of thousands).
pub const MAX_HEADER_VALUES: u64 = 2_000_000;

/// The first line of a Git LFS pointer file.
const LFS_PREFIX: &[u8] = b"version https://git-lfs";

/// One tensor as the header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (`model.layers.0.mlp.up_proj.weight`).
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its size in bytes (dtype × shape, equal to its data range).
    pub bytes: u64,
}

/// What the header of one shard says.
#[derive(Clone, Debug)]
pub struct ShardHeader {
    /// The shard file.
    pub path: PathBuf,
    /// Its tensors, in data-offset order.
    pub tensors: Vec<TensorInfo>,
    /// Bytes of the header: 8 + the JSON length.
    pub header_bytes: u64,
    /// Sum of the tensors' bytes.
    pub tensor_bytes: u64,
    /// The file's length.
    pub file_bytes: u64,
    /// The header's `__metadata__` (string to string).
    pub metadata: BTreeMap<String, String>,
}

/// Reads and checks the header of the shard at `path`, reading only the 8-byte length
/// and the JSON header (never the tensor data).
pub fn read_shard(path: &Path) -> Result<ShardHeader, EstimateError> {
    let io = |source| EstimateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (mut file, file_bytes) = crate::fsread::open_regular(path, "the shard")?;
    let mut prefix = [0u8; 8];
    let got = read_up_to(&mut file, &mut prefix).map_err(io)?;
    if got < 8 {
        return Err(header_error(
            path,
            format!("file is {file_bytes} bytes, shorter than the 8-byte header length"),
        ));
    }
    if prefix.starts_with(&LFS_PREFIX[..8]) {
        let mut rest = vec![0u8; 512];
        let n = read_up_to(&mut file, &mut rest).map_err(io)?;
        let mut text = prefix.to_vec();
        text.extend_from_slice(&rest[..n]);
        if text.starts_with(LFS_PREFIX) {
            return Err(EstimateError::LfsPointer {
                path: path.to_path_buf(),
                size: lfs_pointer_size(&text)
                    .map_or_else(|| "unknown".to_string(), |s| s.to_string()),
            });
        }
    }
    let header_len = u64::from_le_bytes(prefix);
    check_header_len(path, header_len, file_bytes)?;
    // Safe to allocate: header_len <= MAX_HEADER_BYTES and <= the file's length.
    let mut json = vec![0u8; header_len as usize];
    file.read_exact(&mut json).map_err(io)?;
    parse_header_json(path, &json, file_bytes)
}

/// Checks and parses a shard given as bytes: the 8-byte length, then at least the whole
/// JSON header; `file_bytes` is the length of the whole file. For tests and fuzzing; the
/// same checks as [`read_shard`].
pub fn parse_shard_prefix(
    path: &Path,
    bytes: &[u8],
    file_bytes: u64,
) -> Result<ShardHeader, EstimateError> {
    if bytes.starts_with(LFS_PREFIX) {
        return Err(EstimateError::LfsPointer {
            path: path.to_path_buf(),
            size: lfs_pointer_size(bytes).map_or_else(|| "unknown".to_string(), |s| s.to_string()),
        });
    }
    let Some((len_bytes, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(header_error(
            path,
            format!(
                "file is {} bytes, shorter than the 8-byte header length",
                bytes.len()
            ),
        ));
    };
    let header_len = u64::from_le_bytes(*len_bytes);
    check_header_len(path, header_len, file_bytes)?;
    let Some(json) = rest.get(..header_len as usize) else {
        return Err(header_error(
            path,
            format!(
                "header is truncated: {} of {header_len} bytes present",
                rest.len()
            ),
        ));
    };
    parse_header_json(path, json, file_bytes)
}

/// The `size N` line of a Git LFS pointer.
pub fn lfs_pointer_size(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("size "))
        .and_then(|s| s.trim().parse().ok())
}

/// Whether `path` holds a Git LFS pointer rather than data.
pub fn is_lfs_pointer(path: &Path) -> bool {
    let mut buf = [0u8; 23];
    crate::fsread::open_regular(path, "the shard")
        .ok()
        .and_then(|(mut f, _)| read_up_to(&mut f, &mut buf).ok())
        .is_some_and(|n| n == LFS_PREFIX.len() && buf.as_slice() == LFS_PREFIX)
}

fn check_header_len(path: &Path, header_len: u64, file_bytes: u64) -> Result<(), EstimateError> {
    if header_len > MAX_HEADER_BYTES {
        return Err(header_error(
            path,
            format!("header length {header_len} is over the {MAX_HEADER_BYTES}-byte limit"),
        ));
    }
    if header_len.saturating_add(8) > file_bytes {
        return Err(header_error(
            path,
            format!("header length {header_len} runs past the end of the {file_bytes}-byte file"),
        ));
    }
    if header_len < 2 {
        return Err(header_error(
            path,
            format!("header length {header_len} is too short for JSON"),
        ));
    }
    Ok(())
}

fn header_error(path: &Path, reason: String) -> EstimateError {
    EstimateError::Header {
        path: path.to_path_buf(),
        reason,
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Parses the JSON header and checks every tensor: known dtype, data range matching
/// dtype × shape, ranges inside the file's data area and not overlapping.
fn parse_header_json(
    path: &Path,
    json: &[u8],
    file_bytes: u64,
) -> Result<ShardHeader, EstimateError> {
    let header_bytes = 8 + json.len() as u64;
    let data_area = file_bytes.saturating_sub(header_bytes);
    // Counted first: a header of millions of tiny values would take ~20× its size.
    crate::json_size::count_values(json, MAX_HEADER_VALUES)
        .map_err(|e| header_error(path, e.to_string()))?;
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| header_error(path, format!("invalid JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(header_error(
            path,
            "header JSON is not an object".to_string(),
        ));
    };
    let mut tensors = Vec::with_capacity(map.len());
    let mut ranges = Vec::with_capacity(map.len());
    let mut metadata = BTreeMap::new();
    for (name, entry) in map {
        if name == "__metadata__" {
            // MLX's `save_safetensors` without metadata writes `null`.
            if entry.is_null() {
                continue;
            }
            let serde_json::Value::Object(m) = entry else {
                return Err(header_error(
                    path,
                    "`__metadata__` is not an object".to_string(),
                ));
            };
            for (k, v) in m {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                metadata.insert(k, v);
            }
            continue;
        }
        let bad = |what: &str| header_error(path, format!("tensor `{name}`: {what}"));
        let serde_json::Value::Object(fields) = &entry else {
            return Err(bad("entry is not an object"));
        };
        let dtype_name = fields
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("missing `dtype`"))?;
        let dtype = Dtype::from_name(dtype_name)
            .ok_or_else(|| bad(&format!("unknown dtype `{dtype_name}`")))?;
        let shape: Vec<u64> = fields
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("missing `shape`"))?
            .iter()
            .map(|d| d.as_u64())
            .collect::<Option<_>>()
            .ok_or_else(|| bad("`shape` is not a list of non-negative integers"))?;
        let offsets = fields
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .ok_or_else(|| bad("missing `data_offsets`"))?;
        let (begin, end) = match offsets.as_slice() {
            [b, e] => match (b.as_u64(), e.as_u64()) {
                (Some(b), Some(e)) => (b, e),
                _ => return Err(bad("`data_offsets` are not non-negative integers")),
            },
            _ => return Err(bad("`data_offsets` is not [begin, end]")),
        };
        if begin > end {
            return Err(bad(&format!(
                "data_offsets [{begin}, {end}] end before they begin"
            )));
        }
        if end > data_area {
            return Err(bad(&format!(
                "data_offsets [{begin}, {end}] run past the {data_area} data bytes of the file"
            )));
        }
        let bits = shape
            .iter()
            .try_fold(dtype.bits(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad("shape is too large"))?;
        if bits % 8 != 0 {
            return Err(bad(&format!(
                "{dtype} × {shape:?} is not a whole number of bytes"
            )));
        }
        let bytes = bits / 8;
        if end - begin != bytes {
            return Err(bad(&format!(
                "data_offsets [{begin}, {end}] hold {} bytes but {dtype} × {shape:?} needs {bytes}",
                end - begin
            )));
        }
        ranges.push((begin, end, tensors.len()));
        tensors.push(TensorInfo {
            name,
            dtype,
            shape,
            bytes,
        });
    }
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.0 < a.1 {
            return Err(header_error(
                path,
                format!(
                    "tensors `{}` [{}, {}] and `{}` [{}, {}] overlap",
                    tensors[a.2].name, a.0, a.1, tensors[b.2].name, b.0, b.1
                ),
            ));
        }
    }
    let order: Vec<usize> = ranges.iter().map(|r| r.2).collect();
    let mut slots: Vec<Option<TensorInfo>> = tensors.into_iter().map(Some).collect();
    let tensors: Vec<TensorInfo> = order.into_iter().filter_map(|i| slots[i].take()).collect();
    let tensor_bytes = tensors.iter().map(|t| t.bytes).sum();
    Ok(ShardHeader {
        path: path.to_path_buf(),
        tensors,
        header_bytes,
        tensor_bytes,
        file_bytes,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shard(json: &str, data: usize) -> Vec<u8> {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data));
        v
    }

    fn parse(bytes: &[u8]) -> Result<ShardHeader, EstimateError> {
        parse_shard_prefix(Path::new("x.safetensors"), bytes, bytes.len() as u64)
    }

    #[test]
    fn parses_a_valid_header() {
        let b = shard(
            r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}"#,
            12,
        );
        let h = parse(&b).expect("valid");
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.tensors[0].name, "a");
        assert_eq!(h.tensor_bytes, 12);
        assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
    }

    fn reason(bytes: &[u8]) -> String {
        match parse(bytes) {
            Err(e) => e.to_string(),
            Ok(_) => "ok".to_string(),
        }
    }

    #[test]
    fn names_each_problem() {
        let t = |s: &str| reason(&shard(s, 8));
        assert!(
            t(r#"{"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,2]}}"#)
                .contains("unknown dtype `Q7`")
        );
        assert!(
            t(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#).contains("run past")
        );
        assert!(t(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}}"#).contains("needs 4"));
        assert!(t(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F16","shape":[2],"data_offsets":[2,6]}}"#).contains("overlap"));
        assert!(
            t(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#).contains("end before")
        );
        assert!(t(r#"[1,2]"#).contains("not an object"));
        assert!(t(r#"{"a":"#).contains("invalid JSON"));
        assert!(
            t(r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}"#).contains("whole number")
        );
        let mut huge = (MAX_HEADER_BYTES + 1).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(reason(&huge).contains("over the 100000000-byte limit"));
        let mut past = 100u64.to_le_bytes().to_vec();
        past.extend_from_slice(b"{}");
        assert!(reason(&past).contains("past the end"));
        assert!(reason(b"abc").contains("shorter than the 8-byte"));
        let lfs = b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1234\n";
        assert!(reason(lfs).contains("Git LFS pointer (1234 bytes"));
    }

    #[test]
    fn null_metadata_is_no_metadata() {
        let b = shard(
            r#"{"__metadata__":null,"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            4,
        );
        let h = parse(&b).expect("MLX writes this");
        assert!(h.metadata.is_empty());
        assert!(reason(&shard(r#"{"__metadata__":[1]}"#, 0)).contains("not an object"));
    }

    #[test]
    fn a_header_of_too_many_values_is_refused() {
        let json = format!(
            "{{\"__metadata__\":{{\"x\":[{}0]}}}}",
            "0,".repeat(2_000_001)
        );
        assert!(reason(&shard(&json, 0)).contains("more than 2000000 JSON values"));
    }

    #[test]
    fn truncated_prefix_is_named() {
        let b = shard(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            4,
        );
        let cut = &b[..20];
        let err = parse_shard_prefix(Path::new("x.safetensors"), cut, b.len() as u64);
        assert!(err
            .map_or_else(|e| e.to_string(), |_| String::new())
            .contains("truncated"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), extra in 0u64..1_000_000) {
            let _ = parse_shard_prefix(Path::new("f"), &bytes, bytes.len() as u64 + extra);
        }

        #[test]
        fn garbage_after_a_plausible_length_never_panics(len in 0u64..300, body in "[{}\\[\\]\":,a-zA-Z0-9_ ]{0,300}", file_extra in 0u64..5000) {
            let mut b = len.to_le_bytes().to_vec();
            b.extend_from_slice(body.as_bytes());
            let _ = parse_shard_prefix(Path::new("f"), &b, b.len() as u64 + file_extra);
        }

        #[test]
        fn mutated_valid_headers_never_panic(
            dtype in proptest::sample::select(Dtype::ALL.to_vec()),
            dims in proptest::collection::vec(0u64..u64::MAX, 0..4),
            begin in any::<u64>(), end in any::<u64>(), cut in 0usize..200, flip in any::<(usize, u8)>()
        ) {
            let json = format!(
                r#"{{"t":{{"dtype":"{}","shape":{:?},"data_offsets":[{begin},{end}]}}}}"#,
                dtype.name(), dims
            );
            let mut b = shard(&json, 64);
            let len = b.len();
            let i = flip.0 % len;
            b[i] ^= flip.1;
            let cut = cut.min(len);
            let _ = parse_shard_prefix(Path::new("f"), &b[..len - cut], len as u64);
        }

        #[test]
        fn valid_single_tensor_headers_parse_exactly(dtype in proptest::sample::select(Dtype::ALL.to_vec()), dims in proptest::collection::vec(1u64..6, 0..4)) {
            let numel: u64 = dims.iter().product();
            prop_assume!((numel * dtype.bits()).is_multiple_of(8));
            let bytes = numel * dtype.bits() / 8;
            let json = format!(r#"{{"t":{{"dtype":"{}","shape":{:?},"data_offsets":[0,{bytes}]}}}}"#, dtype.name(), dims);
            let b = shard(&json, bytes as usize);
            let h = parse(&b);
            prop_assert!(h.is_ok(), "{:?}", h.err().map(|e| e.to_string()));
            prop_assert_eq!(h.map(|h| h.tensor_bytes).unwrap_or(0), bytes);
        }
    }
}
