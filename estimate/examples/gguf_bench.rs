//! Speed check of the GGUF path: `Model::open` + `estimate` of a GGUF file (the header
//! alone), timed over 20 warm runs; prints the median, the fastest, the bytes read and
//! their share of the file.
//!
//! `cargo run --release -p mlxsup-estimate --example gguf_bench -- FILE.gguf`
use std::path::PathBuf;
use std::time::Instant;

use estimate::{estimate, Model, Request};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: gguf_bench FILE.gguf")?,
    );
    let file_bytes = std::fs::metadata(&path)?.len();
    let mut times = Vec::new();
    let mut read = 0;
    let mut weights = 0;
    for _ in 0..21 {
        let t = Instant::now();
        let m = Model::open(&path)?;
        let _ = estimate(&m, &Request::default());
        times.push(t.elapsed().as_secs_f64() * 1e3);
        read = m.bytes_read;
        weights = m.weights.bytes;
    }
    times.remove(0); // the cold run
    times.sort_by(f64::total_cmp);
    println!(
        "| {} | {:.2} ms | {:.2} ms | {read} of {file_bytes} ({:.2}%) | {weights} |",
        path.file_name().and_then(|f| f.to_str()).unwrap_or("?"),
        times[times.len() / 2],
        times[0],
        read as f64 * 100.0 / file_bytes as f64
    );
    Ok(())
}
