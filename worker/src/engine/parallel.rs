//! Row-split matmuls across CPU streams, for native-dtype compute on the CPU device.
//!
//! MLX's CPU kernels for bf16/f16 matmuls (`simd_gemm`) and for quantized matmuls run on
//! one thread; f32 goes to the multi-threaded BLAS. So on the CPU device a large bf16 or
//! quantized projection is cut by output rows into one part per core; each part runs on
//! its own CPU stream (MLX runs every stream on a thread of its own) and the parts are
//! concatenated. Every output element is the same kernel over the same inputs, so the
//! result is bit-identical to the unsplit matmul (tested in `engine::tests`). The parts
//! are views of the loaded matrix: no weight is copied.
//!
//! Measured on 2 cores (576×49152 bf16 head, one token): 25.1 ms → 13.2 ms.

use mlx_rs::{
    error::Exception,
    ops::{self, indexing::IndexOp},
    with_stream, Array, Device, DeviceType, Stream,
};

/// Matrices with fewer elements than this stay whole: the streams' synchronisation costs
/// more than a small matmul gains (a 576×192 split was slower).
pub const MIN_SPLIT_ELEMENTS: i64 = 1 << 18;

/// At most this many lanes, whatever the core count.
pub const MAX_LANES: usize = 8;

/// `MLXSUP_MATMUL_LANES`: the number of CPU streams a matmul is split over (`1` turns
/// the split off); unset or `0`, one per core on the CPU device.
pub const LANES_ENV: &str = "MLXSUP_MATMUL_LANES";

/// The CPU streams a split matmul runs on: the first part runs on the caller's default
/// stream, part `i > 0` on `streams[i - 1]`.
#[derive(Clone)]
pub struct Lanes {
    streams: Vec<Stream>,
}

impl Lanes {
    /// `requested` lanes (0 = decide: the environment, else one per core when the
    /// default device is the CPU, else none).
    pub fn new(requested: usize) -> Lanes {
        let n = if requested > 0 { requested } else { decide() }.clamp(1, MAX_LANES);
        let cpu = Device::cpu();
        Lanes {
            streams: (1..n).map(|_| Stream::new_with_device(&cpu)).collect(),
        }
    }

    /// One lane: nothing is split.
    pub fn single() -> Lanes {
        Lanes {
            streams: Vec::new(),
        }
    }

    /// How many parts a matrix is cut into.
    pub fn count(&self) -> usize {
        self.streams.len() + 1
    }

    /// Whether a `rows × cols` matrix is worth splitting: returns the row ranges.
    pub fn ranges(&self, rows: i32, cols: i32) -> Option<Vec<(i32, i32)>> {
        let n = self.count() as i32;
        if n < 2 || (rows as i64) * (cols as i64) < MIN_SPLIT_ELEMENTS || rows < 2 * n {
            return None;
        }
        let step = (rows + n - 1) / n;
        Some(
            (0..n)
                .map(|i| (i * step, ((i + 1) * step).min(rows)))
                .filter(|(a, b)| a < b)
                .collect(),
        )
    }

    /// Runs `part(i)` for every part, part `i` on lane `i`, and concatenates the results
    /// along the last axis.
    pub fn run(
        &self,
        parts: usize,
        part: impl Fn(usize) -> Result<Array, Exception>,
    ) -> Result<Array, Exception> {
        let mut outs = Vec::with_capacity(parts);
        outs.push(part(0)?);
        for i in 1..parts {
            let stream = &self.streams[(i - 1) % self.streams.len().max(1)];
            outs.push(with_stream(stream, || part(i))?);
        }
        ops::concatenate(&outs, -1)
    }
}

/// The lane count when none was asked for.
fn decide() -> usize {
    let on_cpu = Device::try_default()
        .and_then(|d| d.get_type())
        .is_ok_and(|t| matches!(t, DeviceType::Cpu));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    lanes_for(std::env::var(LANES_ENV).ok().as_deref(), on_cpu, cores)
}

/// `MLXSUP_MATMUL_LANES`'s value if it is a positive number; else (unset, `0`, not a
/// number) one lane per core on the CPU device, one elsewhere.
fn lanes_for(env: Option<&str>, on_cpu: bool, cores: usize) -> usize {
    match env.and_then(|v| v.trim().parse::<usize>().ok()) {
        Some(n) if n > 0 => n,
        _ if on_cpu => cores.max(1),
        _ => 1,
    }
}

/// Rows `a..b` of `w` (a view: no copy), evaluated.
pub fn rows(w: &Array, (a, b): (i32, i32)) -> Result<Array, Exception> {
    let part = w.index(a..b);
    part.eval()?;
    Ok(part)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.

    use protocol::{GenerateRequest, ModelSpec, Phase, Prompt, Sampling, WorkerError};

    use super::super::tests::mlx_lock;
    use super::super::{Engine, GenerateOptions, Hooks, LoadOptions};
    use super::*;

    /// `0` is the default, as unset is (the benchmark's "0" had meant one lane).
    #[test]
    fn zero_or_unset_lanes_mean_one_per_core_on_the_cpu() {
        assert_eq!(lanes_for(None, true, 2), 2);
        assert_eq!(lanes_for(Some("0"), true, 2), 2);
        assert_eq!(lanes_for(Some(" 3 "), true, 2), 3);
        assert_eq!(lanes_for(Some("1"), true, 2), 1);
        assert_eq!(lanes_for(Some("many"), true, 4), 4);
        assert_eq!(lanes_for(None, false, 8), 1);
        assert_eq!(lanes_for(Some("2"), false, 8), 2);
    }

    #[derive(Default)]
    struct Tokens(Vec<u32>);

    impl Hooks for Tokens {
        fn before_step(&mut self, _: Phase, _: u32, _: u64) -> Result<(), WorkerError> {
            Ok(())
        }
        fn token(&mut self, id: u32, _: &str) {
            self.0.push(id);
        }
    }

    /// 16 greedy tokens and the first step's log-probabilities with `lanes` lanes.
    fn run(dir: &std::path::Path, lanes: usize) -> (Vec<u32>, Vec<f32>) {
        let mut engine = Engine::load(
            dir,
            &LoadOptions {
                prefill_chunk: 5,
                f32: false,
                matmul_lanes: lanes,
                kv_bits: None,
                prefix_cache: 0,
            },
            &mut Tokens::default(),
        )
        .unwrap();
        let req = GenerateRequest {
            prompt: Prompt::Text("Split the rows, keep the bits.".into()),
            max_tokens: 16,
            sampling: Sampling::default(),
            stop: vec![],
            fault: None,
            images: Vec::new(),
        };
        let opts = GenerateOptions {
            ignore_eos: true,
            keep_first_logprobs: true,
        };
        let mut rec = Tokens::default();
        engine.generate_with(&req, &opts, &mut rec).unwrap();
        (rec.0, engine.first_logprobs().unwrap().to_vec())
    }

    #[test]
    fn ranges_cover_every_row_once_and_small_matrices_stay_whole() {
        let lanes = Lanes::new(3);
        assert_eq!(lanes.count(), 3);
        let r = lanes.ranges(1000, 576).unwrap();
        assert_eq!(r, vec![(0, 334), (334, 668), (668, 1000)]);
        assert_eq!(lanes.ranges(192, 576), None, "110K elements stay whole");
        assert_eq!(Lanes::single().ranges(49152, 576), None);
        assert_eq!(Lanes::new(1).count(), 1);
    }

    fn spec(dir: &std::path::Path, arch: &str, quant_bits: Option<u32>) -> ModelSpec {
        ModelSpec {
            dir: dir.display().to_string(),
            arch: arch.into(),
            hidden: 256,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 1024,
            vocab: 1024,
            dtype: "bf16".into(),
            quant_bits,
            group_size: 64,
            seed: 11,
            options: Default::default(),
        }
    }

    /// A large projection is cut (and a small one is not), and the cut one computes the
    /// same bits as the whole one.
    #[test]
    fn large_projections_are_split_and_compute_the_same_bits() {
        use super::super::config;
        use super::super::layers::Linear;
        use super::super::weights::WeightStore;
        let _mlx = mlx_lock();
        for quant_bits in [None, Some(4)] {
            let tmp = tempfile::tempdir().unwrap();
            crate::make_model::make_model(&spec(tmp.path(), "llama", quant_bits)).unwrap();
            let cfg = config::load(tmp.path()).unwrap();
            let load = |lanes: Lanes, name: &str, inp: i32, out: i32| {
                let mut store = WeightStore::open(tmp.path(), false, None, &mut |_, _| {})
                    .unwrap()
                    .with_lanes(lanes);
                Linear::load(&mut store, name, &cfg, inp, out, false).unwrap()
            };
            let gate = "model.layers.0.mlp.gate_proj";
            let split = load(Lanes::new(2), gate, 256, 1024);
            let whole = load(Lanes::single(), gate, 256, 1024);
            assert!(matches!(split, Linear::Split { .. }), "{quant_bits:?}");
            assert!(!matches!(whole, Linear::Split { .. }));
            assert_eq!(split.nbytes(), whole.nbytes(), "views, not copies");
            let k = load(Lanes::new(2), "model.layers.0.self_attn.k_proj", 256, 128);
            assert!(
                !matches!(k, Linear::Split { .. }),
                "32K elements stay whole"
            );
            let x = mlx_rs::random::normal::<f32>(&[3, 7, 256], None, None, None)
                .unwrap()
                .as_dtype(mlx_rs::Dtype::Bfloat16)
                .unwrap();
            let (a, b) = (split.forward(&x).unwrap(), whole.forward(&x).unwrap());
            assert_eq!(a.shape(), &[3, 7, 1024]);
            let bits = |y: &Array| {
                y.as_dtype(mlx_rs::Dtype::Float32)
                    .unwrap()
                    .as_slice::<f32>()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&a), bits(&b), "{quant_bits:?}");
        }
    }

    /// The split is bit-identical to one matmul: same tokens, same log-probabilities, for
    /// bf16 and 4-bit weights, tied (qwen3) and untied (llama) heads, even and uneven cuts.
    #[test]
    fn split_matmuls_give_bit_identical_results() {
        let _mlx = mlx_lock();
        for (arch, quant_bits) in [("qwen3", None), ("llama", Some(4)), ("qwen3", Some(8))] {
            let tmp = tempfile::tempdir().unwrap();
            crate::make_model::make_model(&spec(tmp.path(), arch, quant_bits)).unwrap();
            let (tokens, lp) = run(tmp.path(), 1);
            for lanes in [2, 3] {
                let (t, l) = run(tmp.path(), lanes);
                assert_eq!(
                    t, tokens,
                    "{arch} {quant_bits:?}: tokens with {lanes} lanes"
                );
                assert!(
                    l.iter().zip(&lp).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{arch} {quant_bits:?}: log-probs with {lanes} lanes differ"
                );
            }
        }
    }
}
