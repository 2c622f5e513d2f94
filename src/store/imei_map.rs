//! Hash maps keyed by device (IMEI as u64), for the in-memory state the writer touches
//! for every position: tails, device records, the block index.
//!
//! Why not std's default: SipHash costs more than the rest of a tail insert, and the
//! writer does three such lookups per position. Why not a bare multiply: IMEIs are
//! chosen by whoever connects, so a fixed function would let a client pick colliding
//! keys; a per-map random seed folded into a 128-bit multiply keeps that out of reach
//! while costing one multiplication.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

pub type ImeiMap<V> = HashMap<u64, V, ImeiHash>;
pub type ImeiSet = HashSet<u64, ImeiHash>;

/// Builds [`ImeiHasher`]s sharing one random seed.
#[derive(Clone, Copy, Debug)]
pub struct ImeiHash {
    seed: u64,
}

impl Default for ImeiHash {
    fn default() -> Self {
        ImeiHash {
            seed: RandomState::new().hash_one(0x6774_3036_u64),
        }
    }
}

impl BuildHasher for ImeiHash {
    type Hasher = ImeiHasher;

    fn build_hasher(&self) -> ImeiHasher {
        ImeiHasher { state: self.seed }
    }
}

/// Folded multiply: both halves of the 128-bit product, so every input bit reaches the
/// low bits (the bucket) and the high bits (hashbrown's tag).
pub struct ImeiHasher {
    state: u64,
}

const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

impl ImeiHasher {
    fn mix(&mut self, x: u64) {
        let p = u128::from(self.state ^ x) * u128::from(MULTIPLIER);
        self.state = (p as u64) ^ ((p >> 64) as u64);
    }
}

impl Hasher for ImeiHasher {
    fn write_u64(&mut self, x: u64) {
        self.mix(x);
    }

    // Only u64 keys are meant; anything else still hashes correctly, eight bytes at a time.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(b) ^ chunk.len() as u64);
        }
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_imeis_spread_over_buckets_and_tags() {
        let h = ImeiHash { seed: 0 };
        let base = 860_000_000_000_000u64;
        let mut low = HashSet::new();
        let mut tags = HashSet::new();
        for i in 0..4096u64 {
            let v = h.hash_one(base + i);
            low.insert(v & 4095);
            tags.insert(v >> 57);
        }
        // A fair hash fills about 63 % of 4,096 buckets with 4,096 keys and every tag.
        assert!(low.len() > 2400, "{} buckets", low.len());
        assert_eq!(tags.len(), 128);
    }

    #[test]
    fn the_seed_changes_every_hash() {
        let a = ImeiHash { seed: 1 };
        let b = ImeiHash { seed: 2 };
        let same = (0..1000u64)
            .filter(|i| a.hash_one(*i) == b.hash_one(*i))
            .count();
        assert_eq!(same, 0);
    }

    #[test]
    fn maps_work_as_maps() {
        let mut m: ImeiMap<u32> = ImeiMap::default();
        for i in 0..10_000u64 {
            m.insert(i * 7919, i as u32);
        }
        assert_eq!(m.len(), 10_000);
        assert!((0..10_000u64).all(|i| m.get(&(i * 7919)) == Some(&(i as u32))));
        assert_eq!(m.get(&1), None);
    }
}
