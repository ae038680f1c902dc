//! The prefix cache: the KV caches of finished generations, keyed by the token ids they
//! hold, bounded in bytes, least recently used out first. A new prompt starts from the
//! KV of its longest cached prefix (token-level, at least one token left to prefill) and
//! prefills only the rest.
//!
//! The interface is three calls a scheduler can make around any generation:
//! [`PrefixCache::lookup`] (prompt ids → cached prefix length and the KV to start from),
//! [`PrefixCache::insert`] (ids and KV after a generation) and [`PrefixCache::evict`]
//! (free bytes under memory pressure). The KV handed out shares its buffers with the
//! entry; MLX copies a shared buffer on its first write, so the entry never sees the new
//! request's tokens.
//!
//! Correctness of reuse: a full-attention cache is rewound to the prefix (the positions
//! past it are overwritten); a sliding-window (rotating) cache is reused only when it can
//! be rewound (it has not wrapped) or when the prefix is the whole entry (nothing to drop):
//! never reused wrongly ([`LayerCache::can_rewind`]).

use super::cache::LayerCache;

/// One finished generation's KV.
struct Entry {
    /// The tokens whose keys and values the caches hold, in order.
    ids: Vec<u32>,
    caches: Vec<LayerCache>,
    bytes: u64,
    /// The [`PrefixCache`] clock at its last use (insert or hit).
    used: u64,
}

/// Counters for `ps`: lookups, hits and tokens reused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixStats {
    pub lookups: u64,
    pub hits: u64,
    pub cached_tokens: u64,
}

/// What [`PrefixCache::insert`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted {
    /// Kept; the entries it made redundant and those evicted to fit are gone.
    Kept,
    /// Larger than the whole bound: not kept.
    TooLarge { bytes: u64, limit: u64 },
    /// The caches cannot be kept (a quantized cache).
    Unsupported,
}

/// The bounded, least-recently-used store of finished generations' KV.
pub struct PrefixCache {
    limit: u64,
    entries: Vec<Entry>,
    clock: u64,
    stats: PrefixStats,
}

impl PrefixCache {
    /// A cache holding at most `limit` bytes (0: caches nothing).
    pub fn new(limit: u64) -> PrefixCache {
        PrefixCache {
            limit,
            entries: Vec::new(),
            clock: 0,
            stats: PrefixStats::default(),
        }
    }

    /// The byte bound.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.bytes).sum()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lookups, hits and reused tokens so far.
    pub fn stats(&self) -> PrefixStats {
        self.stats
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The longest cached prefix of `prompt` that leaves at least one token to prefill,
    /// and KV rewound to it (sharing the entry's buffers); `None` when no entry helps.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<(usize, Vec<LayerCache>)> {
        if self.limit == 0 {
            return None;
        }
        self.stats.lookups += 1;
        let most = prompt.len().saturating_sub(1);
        let best = self
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let common = common_prefix(&e.ids, prompt).min(most);
                let len = i32::try_from(common).ok()?;
                (common > 0 && e.caches.iter().all(|c| c.can_rewind(len))).then_some((i, common))
            })
            .max_by_key(|&(i, common)| (common, self.entries[i].used))?;
        let (i, len) = best;
        let now = self.tick();
        let entry = &mut self.entries[i];
        entry.used = now;
        let mut caches = Vec::with_capacity(entry.caches.len());
        for c in &entry.caches {
            let mut c = c.share()?;
            if !c.rewind(len as i32) {
                return None;
            }
            caches.push(c);
        }
        self.stats.hits += 1;
        self.stats.cached_tokens += len as u64;
        Some((len, caches))
    }

    /// Keeps `caches` (holding the KV of `ids`) as the most recently used entry, then
    /// drops the entries it makes redundant (an entry whose ids are a prefix of `ids`
    /// when every cache here can be rewound to it) and the least recently used ones
    /// until the bound holds.
    pub fn insert(&mut self, ids: Vec<u32>, caches: Vec<LayerCache>) -> Inserted {
        if caches.iter().any(|c| matches!(c, LayerCache::Quantized(_))) {
            return Inserted::Unsupported;
        }
        let bytes: u64 = caches.iter().map(|c| c.nbytes() as u64).sum();
        if bytes > self.limit || ids.is_empty() {
            return Inserted::TooLarge {
                bytes,
                limit: self.limit,
            };
        }
        self.entries.retain(|e| {
            let covered = e.ids.len() <= ids.len()
                && ids.starts_with(&e.ids)
                && i32::try_from(e.ids.len())
                    .is_ok_and(|len| caches.iter().all(|c| c.can_rewind(len)));
            !covered
        });
        let used = self.tick();
        self.entries.push(Entry {
            ids,
            caches,
            bytes,
            used,
        });
        let over = self.bytes().saturating_sub(self.limit);
        self.evict(over);
        Inserted::Kept
    }

    /// Drops least recently used entries until at least `bytes` are freed (or nothing is
    /// left); returns the bytes freed.
    pub fn evict(&mut self, bytes: u64) -> u64 {
        let mut freed = 0;
        while freed < bytes {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i)
            else {
                break;
            };
            freed += self.entries.swap_remove(oldest).bytes;
        }
        freed
    }

    /// Drops everything; returns the bytes freed.
    pub fn clear(&mut self) -> u64 {
        self.evict(u64::MAX)
    }

    /// The ids of the entries, least recently used first (tests).
    #[cfg(test)]
    fn order(&self) -> Vec<Vec<u32>> {
        let mut e: Vec<&Entry> = self.entries.iter().collect();
        e.sort_by_key(|e| e.used);
        e.into_iter().map(|e| e.ids.clone()).collect()
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test scaffolding: a failure here is a test failure.
mod tests {
    use mlx_rs::Array;

    use super::super::cache::{KvCache, RotatingKvCache};
    use super::*;

    /// One layer's cache holding `n` positions (keys and values of 1 head × 2 f32).
    fn full(n: i32) -> Vec<LayerCache> {
        let mut c = LayerCache::Full(KvCache::default());
        let k = Array::from_slice(&vec![1f32; (2 * n) as usize], &[1, 1, n, 2]);
        c.update_and_fetch(&k, &k).unwrap();
        vec![c]
    }

    fn bytes_of(n: i32) -> u64 {
        full(n).iter().map(|c| c.nbytes() as u64).sum()
    }

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        let _mlx = crate::engine::tests::mlx_lock();
        let one = bytes_of(4);
        let mut pc = PrefixCache::new(2 * one);
        assert_eq!(pc.insert(vec![1, 2, 3, 4], full(4)), Inserted::Kept);
        assert_eq!(pc.insert(vec![5, 6, 7, 8], full(4)), Inserted::Kept);
        // A hit on the first makes the second the least recently used...
        let (len, kv) = pc.lookup(&[1, 2, 3, 9, 9]).unwrap();
        assert_eq!((len, kv[0].offset()), (3, 3));
        // ...so a third entry evicts the second.
        assert_eq!(pc.insert(vec![10, 11, 12, 13], full(4)), Inserted::Kept);
        assert_eq!(pc.order(), vec![vec![1, 2, 3, 4], vec![10, 11, 12, 13]]);
        assert_eq!(pc.bytes(), 2 * one);
        assert!(pc.lookup(&[5, 6, 7, 8, 9]).is_none());
        // Explicit eviction frees the oldest first.
        assert_eq!(pc.evict(1), one);
        assert_eq!(pc.order(), vec![vec![10, 11, 12, 13]]);
        assert_eq!(
            pc.stats(),
            PrefixStats {
                lookups: 2,
                hits: 1,
                cached_tokens: 3
            }
        );
    }

    #[test]
    fn an_entry_larger_than_the_bound_is_not_kept() {
        let _mlx = crate::engine::tests::mlx_lock();
        let mut pc = PrefixCache::new(bytes_of(4) - 1);
        assert!(matches!(
            pc.insert(vec![1, 2, 3, 4], full(4)),
            Inserted::TooLarge { .. }
        ));
        assert!(pc.is_empty());
        let mut off = PrefixCache::new(0);
        assert!(matches!(
            off.insert(vec![1, 2, 3, 4], full(4)),
            Inserted::TooLarge { .. }
        ));
        assert!(off.lookup(&[1, 2, 3, 4, 5]).is_none());
    }

    #[test]
    fn a_prompt_keeps_one_token_to_prefill_and_longer_entries_replace_their_prefixes() {
        let _mlx = crate::engine::tests::mlx_lock();
        let mut pc = PrefixCache::new(u64::MAX);
        pc.insert(vec![1, 2, 3], full(3));
        // The same prompt again reuses all but its last token.
        assert_eq!(pc.lookup(&[1, 2, 3]).unwrap().0, 2);
        // Nothing in common: no hit.
        assert!(pc.lookup(&[7, 8]).is_none());
        // A longer conversation replaces the entry it extends.
        pc.insert(vec![1, 2, 3, 4, 5], full(5));
        assert_eq!(pc.len(), 1);
        assert_eq!(pc.lookup(&[1, 2, 3, 4, 5, 6]).unwrap().0, 5);
    }

    #[test]
    fn a_wrapped_rotating_cache_is_reused_only_whole() {
        let _mlx = crate::engine::tests::mlx_lock();
        let w = 4;
        let mut c = LayerCache::Rotating(RotatingKvCache::new(w));
        for p in 0..6 {
            let k = Array::from_slice(&[p as f32, p as f32], &[1, 1, 1, 2]);
            c.update_and_fetch(&k, &k).unwrap();
        }
        let mut pc = PrefixCache::new(u64::MAX);
        pc.insert(vec![1, 2, 3, 4, 5, 6], vec![c]);
        // Rewinding a wrapped ring would keep positions the prefix never saw.
        assert!(pc.lookup(&[1, 2, 3, 4, 9, 9]).is_none());
        // The whole entry is a prefix: nothing to drop, so it is reused.
        let (len, kv) = pc.lookup(&[1, 2, 3, 4, 5, 6, 7]).unwrap();
        assert_eq!((len, kv[0].offset()), (6, 6));
        // A ring that has not wrapped rewinds.
        let mut r = LayerCache::Rotating(RotatingKvCache::new(8));
        let k = Array::from_slice(&[0f32; 6], &[1, 1, 3, 2]);
        r.update_and_fetch(&k, &k).unwrap();
        let mut pc = PrefixCache::new(u64::MAX);
        pc.insert(vec![1, 2, 3], vec![r]);
        assert_eq!(pc.lookup(&[1, 2, 9]).unwrap().0, 2);
    }
}
