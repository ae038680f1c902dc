//! Token sampling: greedy, temperature and top-p (nucleus), with a seeded generator so a
//! seed reproduces a generation on every platform.

use protocol::Sampling;

/// xoshiro256** seeded through splitmix64: small, fast and the same everywhere.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Picks tokens from log-probabilities.
#[derive(Clone, Debug)]
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    rng: Rng,
}

impl Sampler {
    pub fn new(s: &Sampling) -> Sampler {
        let seed = s.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        Sampler {
            temperature: s.temperature,
            top_p: s.top_p,
            rng: Rng::new(seed),
        }
    }

    /// True when sampling is plain argmax (the engine then stays on the device).
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Samples one token id from `logprobs` (one row).
    pub fn sample(&mut self, logprobs: &[f32]) -> u32 {
        if self.is_greedy() {
            return argmax(logprobs);
        }
        let mut order: Vec<usize> = (0..logprobs.len())
            .filter(|&i| logprobs[i].is_finite())
            .collect();
        if order.is_empty() {
            return 0;
        }
        order.sort_by(|&a, &b| logprobs[b].total_cmp(&logprobs[a]).then(a.cmp(&b)));
        // Nucleus: the most likely tokens whose mass reaches top_p (at temperature 1).
        if self.top_p > 0.0 && self.top_p < 1.0 {
            let total: f64 = order.iter().map(|&i| (logprobs[i] as f64).exp()).sum();
            let mut mass = 0.0;
            let mut keep = order.len();
            for (n, &i) in order.iter().enumerate() {
                mass += (logprobs[i] as f64).exp();
                if mass >= self.top_p as f64 * total {
                    keep = n + 1;
                    break;
                }
            }
            order.truncate(keep);
        }
        let t = self.temperature as f64;
        let top = logprobs[order[0]] as f64;
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| ((logprobs[i] as f64 - top) / t).exp())
            .collect();
        let sum: f64 = weights.iter().sum();
        let mut u = self.rng.next_f64() * sum;
        for (&i, w) in order.iter().zip(&weights) {
            if u < *w {
                return i as u32;
            }
            u -= w;
        }
        order[order.len() - 1] as u32
    }
}

/// The index of the largest value (the first on ties, as MLX's argmax).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.
mod tests {
    use super::*;

    fn sampling(t: f32, p: f32, seed: u64) -> Sampling {
        Sampling {
            temperature: t,
            top_p: p,
            seed: Some(seed),
        }
    }

    fn logprobs(p: &[f64]) -> Vec<f32> {
        p.iter().map(|x| x.ln() as f32).collect()
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(&sampling(0.0, 1.0, 1));
        assert_eq!(s.sample(&logprobs(&[0.1, 0.6, 0.3])), 1);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_differs() {
        let lp = logprobs(&[0.2, 0.2, 0.2, 0.2, 0.2]);
        let run = |seed| {
            let mut s = Sampler::new(&sampling(1.0, 1.0, seed));
            (0..64).map(|_| s.sample(&lp)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let lp = logprobs(&[0.5, 0.3, 0.15, 0.05]);
        let mut s = Sampler::new(&sampling(1.0, 0.7, 3));
        let seen: std::collections::BTreeSet<u32> = (0..2000).map(|_| s.sample(&lp)).collect();
        assert_eq!(seen, [0, 1].into_iter().collect());
        let mut s = Sampler::new(&sampling(1.0, 1.0, 3));
        let seen: std::collections::BTreeSet<u32> = (0..2000).map(|_| s.sample(&lp)).collect();
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn temperature_follows_the_distribution() {
        let lp = logprobs(&[0.75, 0.25]);
        let mut s = Sampler::new(&sampling(1.0, 1.0, 11));
        let ones = (0..20000).filter(|_| s.sample(&lp) == 1).count() as f64 / 20000.0;
        assert!((ones - 0.25).abs() < 0.02, "{ones}");
        // A low temperature sharpens towards the argmax.
        let mut s = Sampler::new(&sampling(0.05, 1.0, 11));
        assert!((0..1000).all(|_| s.sample(&lp) == 0));
    }
}
