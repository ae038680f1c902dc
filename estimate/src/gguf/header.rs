//! Reading a GGUF file's header — the metadata key/value pairs and the tensor table —
//! without touching tensor data, checking every count and length against the bytes that
//! remain before allocating anything, so a truncated or hostile file is an error naming
//! the problem, never a panic or a huge allocation.
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

pub use super::meta::MetaValue;
use super::types::GgmlType;
use crate::error::EstimateError;

/// The four bytes every GGUF file starts with.
pub const MAGIC: &[u8; 4] = b"GGUF";

/// Longest string accepted (chat templates are kilobytes; this stops a runaway length).
pub const MAX_STRING: u64 = 64 << 20;

/// Most dimensions a ggml tensor has.
pub const MAX_DIMS: u32 = 4;

/// Arrays nested deeper than this are refused.
const MAX_DEPTH: u32 = 2;

/// Arrays up to this length are kept even when [`Arrays::Skip`] is asked.
const SMALL_ARRAY: u64 = 64;

/// Most tensors, metadata pairs and kept array items accepted (real files have at most
/// tens of thousands of tensors and a few hundred thousand vocabulary entries).
pub const MAX_ENTRIES: u64 = 1 << 22;

/// Capacity reserved up front; larger tables grow only as their bytes are actually read.
const RESERVE: u64 = 4096;

/// The alignment of tensor data when `general.alignment` does not say.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Whether long metadata arrays (the tokenizer's vocabulary and merges) are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrays {
    /// Skip the contents of arrays longer than 64 items (the estimate needs none).
    Skip,
    /// Keep everything (import needs the tokenizer).
    Keep,
}

/// One tensor of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensor {
    /// Its GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Its dimensions in ggml order: `dims[0]` is the row (fastest-varying) length.
    pub dims: Vec<u64>,
    /// Its type.
    pub ty: GgmlType,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
    /// Its data's size in bytes.
    pub bytes: u64,
}

impl GgufTensor {
    /// The shape in row-major (safetensors/MLX) order: the dims reversed.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// What the header of a GGUF file says.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    /// The file.
    pub path: PathBuf,
    /// The format version (2 or 3).
    pub version: u32,
    /// Metadata, in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// The tensor table, in file order.
    pub tensors: Vec<GgufTensor>,
    /// Alignment of the tensor data.
    pub alignment: u64,
    /// Where the data section starts in the file.
    pub data_offset: u64,
    /// The file's length.
    pub file_bytes: u64,
    /// Bytes of the header read (the data section is never read).
    pub bytes_read: u64,
}

impl GgufHeader {
    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sum of the tensors' data sizes.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }
}

/// Reads the header of the GGUF file at `path`.
pub fn read_header(path: &Path, arrays: Arrays) -> Result<GgufHeader, EstimateError> {
    let io = |source| EstimateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let file_bytes = file.metadata().map_err(io)?.len();
    parse_header(
        path,
        BufReader::with_capacity(1 << 18, file),
        file_bytes,
        arrays,
    )
}

/// Parses a header from `reader`, a file of `file_bytes` bytes read from its start. The
/// same checks as [`read_header`]; for tests and fuzzing on bytes in memory.
pub fn parse_header(
    path: &Path,
    reader: impl Read,
    file_bytes: u64,
    arrays: Arrays,
) -> Result<GgufHeader, EstimateError> {
    let mut c = Cursor {
        r: reader,
        pos: 0,
        len: file_bytes,
        path,
    };
    let mut magic = [0u8; 4];
    c.exact(&mut magic, "the magic")?;
    if &magic != MAGIC {
        return Err(c.error(format!(
            "not a GGUF file: it starts with {magic:02x?}, not \"GGUF\""
        )));
    }
    let version = c.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(c.error(
                "GGUF version 1 is not supported (llama.cpp dropped it; convert the file again)"
                    .into(),
            ))
        }
        v if v.swap_bytes() <= 3 => {
            return Err(c.error("big-endian GGUF files are not supported".into()))
        }
        v => return Err(c.error(format!("unknown GGUF version {v}"))),
    }
    let tensor_count = c.u64("the tensor count")?;
    let kv_count = c.u64("the metadata count")?;
    // Each metadata pair takes at least 12 bytes (key length and value type), each tensor
    // entry at least 32 (name length, one dim, type, offset).
    c.fits(kv_count, 12, "metadata entries")?;
    c.fits(tensor_count, 32, "tensor entries")?;
    c.at_most(kv_count, "metadata entries")?;
    c.at_most(tensor_count, "tensor entries")?;
    let mut metadata: Vec<(String, MetaValue)> = Vec::with_capacity(kv_count.min(RESERVE) as usize);
    for _ in 0..kv_count {
        let key = c.string("a metadata key")?;
        if metadata.iter().any(|(k, _)| *k == key) {
            return Err(c.error(format!("metadata key {key:?} appears twice")));
        }
        let ty = c.u32("a value type")?;
        let value = c.value(ty, &key, arrays, 0)?;
        metadata.push((key, value));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(c.error(format!(
                    "general.alignment {v:?} is not a power of two up to 1 MiB"
                )))
            }
        },
    };
    let mut tensors: Vec<GgufTensor> = Vec::with_capacity(tensor_count.min(RESERVE) as usize);
    let mut names = std::collections::HashSet::with_capacity(tensor_count.min(RESERVE) as usize);
    for _ in 0..tensor_count {
        let name = c.string("a tensor name")?;
        let n_dims = c.u32("a tensor's dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(c.error(format!(
                "tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64("a tensor dimension")?);
        }
        let id = c.u32("a tensor type")?;
        let offset = c.u64("a tensor offset")?;
        let ty = GgmlType::from_id(id)
            .ok_or_else(|| c.error(format!("tensor {name} has unknown ggml type {id}")))?;
        if dims.contains(&0) {
            return Err(c.error(format!("tensor {name} has a zero dimension {dims:?}")));
        }
        let elements = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| c.error(format!("tensor {name}'s dimensions {dims:?} overflow")))?;
        let bytes = ty.tensor_bytes(dims[0], elements).ok_or_else(|| {
            c.error(format!(
                "tensor {name} ({ty}, dims {dims:?}): a row of {} is not a whole number of {}-element blocks, or the size overflows",
                dims[0],
                ty.block().0
            ))
        })?;
        if !offset.is_multiple_of(alignment) {
            return Err(c.error(format!(
                "tensor {name}'s offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        if !names.insert(name.clone()) {
            return Err(c.error(format!("tensor {name} appears twice")));
        }
        tensors.push(GgufTensor {
            name,
            dims,
            ty,
            offset,
            bytes,
        });
    }
    let data_offset = c.pos.div_ceil(alignment) * alignment;
    let data_bytes = file_bytes.saturating_sub(data_offset);
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(tensors.len());
    for t in &tensors {
        let end = t.offset.checked_add(t.bytes).filter(|&e| e <= data_bytes);
        match end {
            Some(end) => spans.push((t.offset, end, &t.name)),
            None => {
                return Err(c.error(format!(
                    "tensor {}'s data ({} bytes at data offset {}) ends past the end of the file ({file_bytes} bytes, data from byte {data_offset}): the file is truncated",
                    t.name, t.bytes, t.offset
                )))
            }
        }
    }
    spans.sort_unstable();
    if let Some(w) = spans.windows(2).find(|w| w[1].0 < w[0].1) {
        return Err(c.error(format!(
            "tensors {} and {} overlap in the data section",
            w[0].2, w[1].2
        )));
    }
    let bytes_read = c.pos;
    Ok(GgufHeader {
        path: path.to_path_buf(),
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
        file_bytes,
        bytes_read,
    })
}

/// A reader that knows how many bytes remain and names the file in errors.
struct Cursor<'p, R> {
    r: R,
    pos: u64,
    len: u64,
    path: &'p Path,
}

impl<R: Read> Cursor<'_, R> {
    fn error(&self, reason: String) -> EstimateError {
        EstimateError::Gguf {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn truncated(&self, n: u64, what: &str) -> EstimateError {
        self.error(format!(
            "truncated: {what} needs {n} bytes at byte {} but the file is {} bytes",
            self.pos, self.len
        ))
    }

    /// Checks that `count` items of at least `min` bytes each fit in what remains.
    fn fits(&self, count: u64, min: u64, what: &str) -> Result<(), EstimateError> {
        if count.checked_mul(min).is_none_or(|n| n > self.remaining()) {
            return Err(self.error(format!(
                "{count} {what} cannot fit in the {} bytes left after byte {}",
                self.remaining(),
                self.pos
            )));
        }
        Ok(())
    }

    fn at_most(&self, count: u64, what: &str) -> Result<(), EstimateError> {
        if count > MAX_ENTRIES {
            return Err(self.error(format!("{count} {what} is over the limit of {MAX_ENTRIES}")));
        }
        Ok(())
    }

    fn io(&self, e: io::Error, n: u64, what: &str) -> EstimateError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            self.truncated(n, what)
        } else {
            EstimateError::Io {
                path: self.path.to_path_buf(),
                source: e,
            }
        }
    }

    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), EstimateError> {
        let n = buf.len() as u64;
        if n > self.remaining() {
            return Err(self.truncated(n, what));
        }
        self.r.read_exact(buf).map_err(|e| self.io(e, n, what))?;
        self.pos += n;
        Ok(())
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), EstimateError> {
        if n > self.remaining() {
            return Err(self.truncated(n, what));
        }
        let copied = io::copy(&mut (&mut self.r).take(n), &mut io::sink())
            .map_err(|e| self.io(e, n, what))?;
        if copied != n {
            return Err(self.truncated(n, what));
        }
        self.pos += n;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], EstimateError> {
        let mut b = [0u8; N];
        self.exact(&mut b, what)?;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32, EstimateError> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, EstimateError> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    fn string_len(&mut self, what: &str) -> Result<u64, EstimateError> {
        let n = self.u64(what)?;
        if n > MAX_STRING {
            return Err(self.error(format!(
                "{what} at byte {} claims {n} bytes, over the {MAX_STRING}-byte limit",
                self.pos - 8
            )));
        }
        if n > self.remaining() {
            return Err(self.truncated(n, what));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String, EstimateError> {
        let n = self.string_len(what)?;
        // Safe to allocate: n <= MAX_STRING and <= the bytes left in the file.
        let mut buf = vec![0u8; n as usize];
        self.exact(&mut buf, what)?;
        String::from_utf8(buf).map_err(|_| {
            self.error(format!(
                "{what} ending at byte {} is not valid UTF-8",
                self.pos
            ))
        })
    }

    /// Smallest encoding of one value of type `ty` (for bounding array lengths).
    fn min_size(&self, ty: u32, key: &str) -> Result<u64, EstimateError> {
        Ok(match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            t => return Err(self.error(format!("metadata {key} has unknown value type {t}"))),
        })
    }

    fn value(
        &mut self,
        ty: u32,
        key: &str,
        arrays: Arrays,
        depth: u32,
    ) -> Result<MetaValue, EstimateError> {
        let what = format!("the value of {key}");
        Ok(match ty {
            0 => MetaValue::Uint(u64::from(self.array::<1>(&what)?[0])),
            1 => MetaValue::Int(i64::from(self.array::<1>(&what)?[0] as i8)),
            2 => MetaValue::Uint(u64::from(u16::from_le_bytes(self.array(&what)?))),
            3 => MetaValue::Int(i64::from(i16::from_le_bytes(self.array(&what)?))),
            4 => MetaValue::Uint(u64::from(u32::from_le_bytes(self.array(&what)?))),
            5 => MetaValue::Int(i64::from(i32::from_le_bytes(self.array(&what)?))),
            6 => MetaValue::Float(f64::from(f32::from_le_bytes(self.array(&what)?))),
            7 => match self.array::<1>(&what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.error(format!("metadata {key}: boolean byte is {b}"))),
            },
            8 => MetaValue::Str(self.string(&what)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(self.error(format!(
                        "metadata {key} nests arrays deeper than {MAX_DEPTH}"
                    )));
                }
                let elem = self.u32(&what)?;
                let len = self.u64(&what)?;
                let min = self.min_size(elem, key)?;
                self.fits(len, min, &format!("items of the array {key}"))?;
                if arrays == Arrays::Skip && len > SMALL_ARRAY && depth == 0 {
                    self.skip_items(elem, len, key)?;
                    MetaValue::Array {
                        elem,
                        len,
                        items: None,
                    }
                } else {
                    self.at_most(len, &format!("items of the array {key}"))?;
                    let mut items = Vec::with_capacity(len.min(RESERVE) as usize);
                    for _ in 0..len {
                        items.push(self.value(elem, key, arrays, depth + 1)?);
                    }
                    MetaValue::Array {
                        elem,
                        len,
                        items: Some(items),
                    }
                }
            }
            10 => MetaValue::Uint(self.u64(&what)?),
            11 => MetaValue::Int(i64::from_le_bytes(self.array(&what)?)),
            12 => MetaValue::Float(f64::from_le_bytes(self.array(&what)?)),
            t => return Err(self.error(format!("metadata {key} has unknown value type {t}"))),
        })
    }

    fn skip_items(&mut self, elem: u32, len: u64, key: &str) -> Result<(), EstimateError> {
        let what = format!("the array {key}");
        match elem {
            8 => {
                for _ in 0..len {
                    let n = self.string_len(&what)?;
                    self.skip(n, &what)?;
                }
                Ok(())
            }
            9 => {
                for _ in 0..len {
                    self.value(9, key, Arrays::Skip, 1)?;
                }
                Ok(())
            }
            t => {
                let size = self.min_size(t, key)?;
                self.skip(len * size, &what)
            }
        }
    }
}
