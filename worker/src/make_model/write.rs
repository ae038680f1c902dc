//! Writing the folder's files: the safetensors file (header, then tensors in name order)
//! and pretty-printed JSON.

use std::io::{BufWriter, Write};
use std::path::Path;

use protocol::WorkerError;
use serde_json::{json, Value};

use super::io;
use super::tensors::Tensor;

pub(super) fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
) -> Result<u64, WorkerError> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "mlx"}));
    let mut offset = 0usize;
    for (name, t) in tensors {
        let end = offset + t.data.len();
        header.insert(
            name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::to_string(&Value::Object(header)).map_err(|e| io(path, e))?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let file = std::fs::File::create(path).map_err(|e| io(path, e))?;
    let mut w = BufWriter::new(file);
    w.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(|e| io(path, e))?;
    w.write_all(text.as_bytes()).map_err(|e| io(path, e))?;
    for (_, t) in tensors {
        w.write_all(&t.data).map_err(|e| io(path, e))?;
    }
    w.flush().map_err(|e| io(path, e))?;
    Ok(offset as u64)
}

pub(super) fn write_json(dir: &Path, name: &str, v: &Value) -> Result<(), WorkerError> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(v).map_err(|e| io(&path, e))?;
    std::fs::write(&path, text + "\n").map_err(|e| io(&path, e))
}
