//! K-way merge of per-shard top-k lists into one top-k with distinct labels.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use rayon::prelude::*;

use crate::error::{CoreError, CoreResult, expect_len};
use crate::hashing::NO_ITEM;

/// Below this many input entries (Q x S x L) the merge stays on the calling thread.
const PARALLEL_MIN_ENTRIES: usize = 32_768;

/// The head of one list in the merge heap: the best entry that list has not given yet.
#[derive(Clone, Copy)]
struct Head {
    score: f32,
    list: u32,
    pos: u32,
}

impl Ord for Head {
    /// Max-heap on score; on a tie the lower list index comes out first (deterministic output).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.list.cmp(&self.list))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

/// Labels are already well mixed (xxh3) but callers may also pass small integers, so one
/// multiply spreads them over the high bits the hash table probes with.
#[derive(Default)]
struct LabelHasher(u64);

impl Hasher for LabelHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 labels are hashed")
    }
    fn write_u64(&mut self, label: u64) {
        self.0 = label.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type LabelSet = HashSet<u64, BuildHasherDefault<LabelHasher>>;

/// Per-thread buffers reused across queries.
#[derive(Default)]
struct Scratch {
    heap: BinaryHeap<Head>,
    seen: LabelSet,
}

/// An entry takes part in the merge only if it names an item and has a usable score.
#[inline]
fn is_entry(label: u64, score: f32) -> bool {
    label != NO_ITEM && !score.is_nan() && score != f32::NEG_INFINITY
}

/// Merges the `lists` lists of `len` entries of one query into `out_labels`/`out_scores` (k each).
fn merge_one(
    labels: &[u64],
    scores: &[f32],
    len: usize,
    out_labels: &mut [u64],
    out_scores: &mut [f32],
    scratch: &mut Scratch,
) {
    let Scratch { heap, seen } = scratch;
    heap.clear();
    seen.clear();
    let k = out_labels.len();

    // First usable entry of `list` at or after `pos`.
    let next_head = |list: usize, mut pos: usize| -> Option<Head> {
        let base = list * len;
        while pos < len {
            let (label, score) = (labels[base + pos], scores[base + pos]);
            if is_entry(label, score) {
                return Some(Head {
                    score,
                    list: list as u32,
                    pos: pos as u32,
                });
            }
            pos += 1;
        }
        None
    };

    let n_lists = labels.len().checked_div(len).unwrap_or(0);
    heap.extend((0..n_lists).filter_map(|list| next_head(list, 0)));
    let mut filled = 0;
    while filled < k {
        let Some(head) = heap.pop() else { break };
        let (list, pos) = (head.list as usize, head.pos as usize);
        let label = labels[list * len + pos];
        // A label met again comes from a later pop, so with a score no better: keep the first.
        if seen.insert(label) {
            out_labels[filled] = label;
            out_scores[filled] = head.score;
            filled += 1;
        }
        if let Some(next) = next_head(list, pos + 1) {
            heap.push(next);
        }
    }
    out_labels[filled..].fill(NO_ITEM);
    out_scores[filled..].fill(f32::NEG_INFINITY);
}

/// Top `k` distinct labels of each query across its `lists` lists.
///
/// `labels` and `scores` are row-major (queries, lists, len); each list is sorted by descending
/// score. Entries with label `NO_ITEM`, a NaN score or a score of -inf are skipped (padding). A
/// label seen in several lists is returned once with its best score. Each output row is sorted by
/// descending score (ties: lower list index first) and padded with `NO_ITEM` / -inf.
/// Returns (labels, scores), each row-major (queries, k).
pub fn merge_topk(
    labels: &[u64],
    scores: &[f32],
    shape: [usize; 3],
    k: usize,
) -> CoreResult<(Vec<u64>, Vec<f32>)> {
    let [queries, lists, len] = shape;
    if k == 0 {
        return Err(CoreError::InvalidArgument("`k` must be >= 1".into()));
    }
    if u32::try_from(lists).is_err() || u32::try_from(len).is_err() {
        return Err(CoreError::ShapeMismatch(format!(
            "`labels` has shape {shape:?}; lists and their length must each be below 2^32"
        )));
    }
    expect_len("labels", labels.len(), &shape)?;
    expect_len("scores", scores.len(), &shape)?;

    let mut out_labels = vec![NO_ITEM; queries * k];
    let mut out_scores = vec![f32::NEG_INFINITY; queries * k];
    let per_query = lists * len;
    if per_query == 0 {
        return Ok((out_labels, out_scores));
    }
    let rows = out_labels
        .chunks_exact_mut(k)
        .zip(out_scores.chunks_exact_mut(k))
        .zip(
            labels
                .chunks_exact(per_query)
                .zip(scores.chunks_exact(per_query)),
        );
    if queries < 2 || labels.len() < PARALLEL_MIN_ENTRIES {
        let mut scratch = Scratch::default();
        for ((ol, os), (l, s)) in rows {
            merge_one(l, s, len, ol, os, &mut scratch);
        }
    } else {
        out_labels
            .par_chunks_exact_mut(k)
            .zip(out_scores.par_chunks_exact_mut(k))
            .zip(
                labels
                    .par_chunks_exact(per_query)
                    .zip(scores.par_chunks_exact(per_query)),
            )
            .for_each_init(Scratch::default, |scratch, ((ol, os), (l, s))| {
                merge_one(l, s, len, ol, os, scratch)
            });
    }
    Ok((out_labels, out_scores))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAD: u64 = NO_ITEM;
    const NEG: f32 = f32::NEG_INFINITY;

    /// Best score of each usable label.
    fn best_scores(labels: &[u64], scores: &[f32]) -> std::collections::HashMap<u64, f32> {
        let mut best = std::collections::HashMap::new();
        for (&l, &s) in labels.iter().zip(scores) {
            if is_entry(l, s) {
                let e = best.entry(l).or_insert(s);
                *e = f32::max(*e, s);
            }
        }
        best
    }

    struct Case {
        name: &'static str,
        lists: Vec<Vec<(u64, f32)>>,
        k: usize,
        want: Vec<(u64, f32)>,
    }

    fn run(lists: &[Vec<(u64, f32)>], k: usize) -> Vec<(u64, f32)> {
        let len = lists.iter().map(Vec::len).max().unwrap_or(0);
        let mut labels = Vec::new();
        let mut scores = Vec::new();
        for list in lists {
            for i in 0..len {
                let (l, s) = list.get(i).copied().unwrap_or((PAD, NEG));
                labels.push(l);
                scores.push(s);
            }
        }
        let (ol, os) = merge_topk(&labels, &scores, [1, lists.len(), len], k).unwrap();
        ol.into_iter().zip(os).collect()
    }

    #[test]
    fn table() {
        let cases = vec![
            Case {
                name: "interleaves two lists",
                lists: vec![vec![(1, 0.9), (2, 0.5)], vec![(3, 0.7), (4, 0.1)]],
                k: 3,
                want: vec![(1, 0.9), (3, 0.7), (2, 0.5)],
            },
            Case {
                name: "duplicate across lists keeps the best score once",
                lists: vec![vec![(1, 0.9), (2, 0.8)], vec![(2, 0.95), (1, 0.3)]],
                k: 4,
                want: vec![(2, 0.95), (1, 0.9), (PAD, NEG), (PAD, NEG)],
            },
            Case {
                name: "k beyond the available pads",
                lists: vec![vec![(5, 1.0)]],
                k: 3,
                want: vec![(5, 1.0), (PAD, NEG), (PAD, NEG)],
            },
            Case {
                name: "padding in the middle of the lists",
                lists: vec![
                    vec![(1, 0.4), (PAD, NEG)],
                    vec![(PAD, NEG), (PAD, NEG)],
                    vec![(2, 0.6)],
                ],
                k: 2,
                want: vec![(2, 0.6), (1, 0.4)],
            },
            Case {
                name: "NaN scores are missing",
                lists: vec![vec![(1, f32::NAN), (2, 0.2)], vec![(3, 0.3)]],
                k: 3,
                want: vec![(3, 0.3), (2, 0.2), (PAD, NEG)],
            },
            Case {
                name: "ties go to the lower list",
                lists: vec![vec![(7, 0.5)], vec![(8, 0.5)], vec![(9, 0.5)]],
                k: 2,
                want: vec![(7, 0.5), (8, 0.5)],
            },
            Case {
                name: "no lists",
                lists: vec![],
                k: 2,
                want: vec![(PAD, NEG), (PAD, NEG)],
            },
            Case {
                name: "empty lists",
                lists: vec![vec![], vec![]],
                k: 1,
                want: vec![(PAD, NEG)],
            },
            Case {
                name: "same label twice in one list",
                lists: vec![vec![(1, 0.9), (1, 0.8), (2, 0.7)]],
                k: 2,
                want: vec![(1, 0.9), (2, 0.7)],
            },
        ];
        for case in cases {
            assert_eq!(run(&case.lists, case.k), case.want, "{}", case.name);
        }
    }

    #[test]
    fn errors() {
        let cases: &[(usize, [usize; 3], usize, usize, &str)] = &[
            (0, [1, 1, 1], 1, 1, "`k`"),
            (2, [1, 1, 2], 3, 2, "`labels`"),
            (2, [1, 1, 2], 2, 1, "`scores`"),
        ];
        for &(k, shape, n_labels, n_scores, needle) in cases {
            let err = merge_topk(&vec![1; n_labels], &vec![0.0; n_scores], shape, k).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    /// Tiny deterministic generator so the test needs no extra crate.
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 33
    }

    #[test]
    fn random_inputs_match_the_reference_serial_and_parallel() {
        let mut rng = 42u64;
        for (queries, lists, len, k) in [(3, 4, 10, 5), (64, 20, 50, 100), (200, 8, 30, 10)] {
            let mut labels = vec![PAD; queries * lists * len];
            let mut scores = vec![NEG; queries * lists * len];
            for list in 0..queries * lists {
                let fill = (lcg(&mut rng) as usize) % (len + 1);
                let mut s: Vec<f32> = (0..fill)
                    .map(|_| (lcg(&mut rng) % 1000) as f32 / 1000.0)
                    .collect();
                s.sort_by(|a, b| b.total_cmp(a));
                for (i, score) in s.into_iter().enumerate() {
                    // A small label space makes duplicates across lists common.
                    labels[list * len + i] = lcg(&mut rng) % 60;
                    scores[list * len + i] = score;
                }
            }
            let (ol, os) = merge_topk(&labels, &scores, [queries, lists, len], k).unwrap();
            let per_query = lists * len;
            for q in 0..queries {
                let span = q * per_query..(q + 1) * per_query;
                let best = best_scores(&labels[span.clone()], &scores[span]);
                let mut want: Vec<f32> = best.values().copied().collect();
                want.sort_by(|a, b| b.total_cmp(a));
                want.truncate(k);
                want.resize(k, NEG);
                let (got_labels, got_scores) = (&ol[q * k..(q + 1) * k], &os[q * k..(q + 1) * k]);
                assert_eq!(got_scores, want.as_slice(), "query {q}");
                // Labels may differ from another right answer only among equal scores: each one is
                // distinct and carries its own best score.
                let real: Vec<u64> = got_labels.iter().copied().filter(|&l| l != PAD).collect();
                assert_eq!(real.len(), best.len().min(k), "query {q}");
                assert_eq!(
                    real.iter().collect::<HashSet<_>>().len(),
                    real.len(),
                    "query {q}"
                );
                for (l, s) in real.iter().zip(got_scores) {
                    assert_eq!(best[l], *s, "query {q} label {l}");
                }
            }
        }
    }
}
