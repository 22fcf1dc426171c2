//! The stable 64-bit hash of an item id: its label everywhere (hnswlib label, merge key).
//! xxh3 is fixed by its specification, so labels survive restarts, machines and languages.

use rayon::prelude::*;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The label that means "no item" (padding in merge inputs and outputs); no id ever hashes to it.
pub const NO_ITEM: u64 = u64::MAX;

/// Inputs shorter than this are hashed on the calling thread: splitting costs more than it saves.
const PARALLEL_MIN_IDS: usize = 16_384;

/// xxh3_64 (seed 0) of the id's bytes, with `NO_ITEM` moved to `NO_ITEM - 1`.
#[inline]
pub fn stable_hash64(id: &[u8]) -> u64 {
    match xxh3_64(id) {
        NO_ITEM => NO_ITEM - 1,
        h => h,
    }
}

/// `stable_hash64` of each id, in order.
pub fn stable_hash64_batch<S: AsRef<[u8]> + Sync>(ids: &[S]) -> Vec<u64> {
    if ids.len() < PARALLEL_MIN_IDS {
        ids.iter().map(|id| stable_hash64(id.as_ref())).collect()
    } else {
        ids.par_iter()
            .with_min_len(4096)
            .map(|id| stable_hash64(id.as_ref()))
            .collect()
    }
}

/// xxh3_64 with a seed, for hashes that must be independent of the labels (ring positions).
#[inline]
pub fn seeded_hash64(bytes: &[u8], seed: u64) -> u64 {
    xxh3_64_with_seed(bytes, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // The empty-input value is XXH3_64bits' published test vector; "item-42" pins our own
        // output so the Python tests can check the same number through the binding.
        let cases: &[(&str, u64)] = &[("", 0x2D06_8005_38D3_94C2), ("item-42", ITEM_42)];
        for (id, want) in cases {
            assert_eq!(stable_hash64(id.as_bytes()), *want, "id {id:?}");
        }
    }

    /// Also pinned in server/tests/core/test_hashing.py.
    const ITEM_42: u64 = 7_315_637_684_426_602_276;

    #[test]
    fn batch_matches_single_and_is_deterministic() {
        for n in [0usize, 1, 7, PARALLEL_MIN_IDS + 3] {
            let ids: Vec<String> = (0..n).map(|i| format!("item-{i}")).collect();
            let got = stable_hash64_batch(&ids);
            assert_eq!(got.len(), n);
            assert_eq!(got, stable_hash64_batch(&ids));
            for (id, h) in ids.iter().zip(&got) {
                assert_eq!(*h, stable_hash64(id.as_bytes()));
                assert_ne!(*h, NO_ITEM);
            }
        }
    }

    #[test]
    fn seed_changes_the_hash() {
        let a = seeded_hash64(b"shard-01", 0);
        assert_eq!(a, xxh3_64(b"shard-01"));
        assert_ne!(a, seeded_hash64(b"shard-01", 0x5eed));
    }

    #[test]
    fn utf8_bytes_are_hashed() {
        assert_eq!(stable_hash64("é".as_bytes()), stable_hash64(&[0xC3, 0xA9]));
        assert_ne!(stable_hash64(b"a"), stable_hash64(b"A"));
    }
}
