//! Per-query hit lists with excluded labels (a user's seen items) and padding dropped.

use rayon::prelude::*;

use crate::csr::{check_offsets, contains_sorted, span};
use crate::error::{CoreError, CoreResult, expect_len};
use crate::hashing::NO_ITEM;

/// Below this many input entries (Q x L) the rows are filtered on the calling thread.
const PARALLEL_MIN_ENTRIES: usize = 32_768;

/// One query: the first `out_labels.len()` entries of its row that are neither `NO_ITEM` nor in
/// `excluded`, in order, then padding. Returns how many were written.
fn exclude_row(
    labels: &[u64],
    scores: &[f32],
    excluded: &[u64],
    out_labels: &mut [u64],
    out_scores: &mut [f32],
) -> i64 {
    let k = out_labels.len();
    let mut kept = 0;
    for (&label, &score) in labels.iter().zip(scores) {
        if kept == k {
            break;
        }
        if label == NO_ITEM || contains_sorted(excluded, label) {
            continue;
        }
        out_labels[kept] = label;
        out_scores[kept] = score;
        kept += 1;
    }
    // The outputs start as padding, so nothing is left to fill.
    kept as i64
}

/// What `exclude_hits` returns: labels and scores row-major (queries, k), and per query how many
/// entries of its row are hits (the rest is padding).
pub type Kept = (Vec<u64>, Vec<f32>, Vec<i64>);

/// Drops excluded labels and padding from each query's hit list, keeping the first `k` others.
///
/// `labels` and `scores` are row-major (queries, len). Query q's excluded labels are
/// `excluded[offsets[q]..offsets[q + 1]]`, which must be sorted ascending (unique or not); this is
/// not checked (O(M) per call would cost more than the filtering), and a part that is not sorted
/// gives unspecified hits but never reads outside it. An empty part excludes nothing. `offsets`
/// must have queries + 1 entries, non-decreasing, within 0..=excluded.len().
///
/// Per query, walks the row in order, drops entries whose label is `NO_ITEM` or excluded (scores
/// are passed through as they are, whatever they are) and keeps the first `k` survivors; the rest
/// of the row is `NO_ITEM` / -inf. Returns (labels, scores, kept) with kept[q] <= k the number of
/// survivors written for q.
pub fn exclude_hits(
    labels: &[u64],
    scores: &[f32],
    shape: [usize; 2],
    excluded: &[u64],
    offsets: &[i64],
    k: usize,
) -> CoreResult<Kept> {
    let [queries, len] = shape;
    if k == 0 {
        return Err(CoreError::InvalidArgument("`k` must be >= 1".into()));
    }
    expect_len("labels", labels.len(), &shape)?;
    expect_len("scores", scores.len(), &shape)?;
    check_offsets("offsets", offsets, queries, "excluded", excluded.len())?;

    let mut out_labels = vec![NO_ITEM; queries * k];
    let mut out_scores = vec![f32::NEG_INFINITY; queries * k];
    let mut kept = vec![0i64; queries];
    if len == 0 {
        return Ok((out_labels, out_scores, kept));
    }
    let one = |q: usize, l: &[u64], s: &[f32], ol: &mut [u64], os: &mut [f32]| {
        exclude_row(l, s, &excluded[span(offsets, q)], ol, os)
    };
    if queries < 2 || labels.len() < PARALLEL_MIN_ENTRIES {
        for (q, (((l, s), (ol, os)), n)) in labels
            .chunks_exact(len)
            .zip(scores.chunks_exact(len))
            .zip(
                out_labels
                    .chunks_exact_mut(k)
                    .zip(out_scores.chunks_exact_mut(k)),
            )
            .zip(kept.iter_mut())
            .enumerate()
        {
            *n = one(q, l, s, ol, os);
        }
    } else {
        labels
            .par_chunks_exact(len)
            .zip(scores.par_chunks_exact(len))
            .zip(
                out_labels
                    .par_chunks_exact_mut(k)
                    .zip(out_scores.par_chunks_exact_mut(k)),
            )
            .zip(kept.par_iter_mut())
            .enumerate()
            .for_each(|(q, (((l, s), (ol, os)), n))| *n = one(q, l, s, ol, os));
    }
    Ok((out_labels, out_scores, kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAD: u64 = NO_ITEM;
    const NEG: f32 = f32::NEG_INFINITY;

    struct Case {
        name: &'static str,
        row: Vec<(u64, f32)>,
        excluded: Vec<u64>,
        k: usize,
        want: Vec<(u64, f32)>,
    }

    fn run_one(row: &[(u64, f32)], excluded: &[u64], k: usize) -> (Vec<(u64, f32)>, i64) {
        let labels: Vec<u64> = row.iter().map(|e| e.0).collect();
        let scores: Vec<f32> = row.iter().map(|e| e.1).collect();
        let offsets = [0, excluded.len() as i64];
        let (l, s, kept) =
            exclude_hits(&labels, &scores, [1, row.len()], excluded, &offsets, k).unwrap();
        (l.into_iter().zip(s).collect(), kept[0])
    }

    #[test]
    fn table() {
        let cases = vec![
            Case {
                name: "nothing excluded keeps the first k",
                row: vec![(5, 0.9), (3, 0.8), (7, 0.1)],
                excluded: vec![],
                k: 2,
                want: vec![(5, 0.9), (3, 0.8)],
            },
            Case {
                name: "excluded labels are dropped, order kept",
                row: vec![(5, 0.9), (3, 0.8), (7, 0.1), (1, 0.0)],
                excluded: vec![3, 5],
                k: 2,
                want: vec![(7, 0.1), (1, 0.0)],
            },
            Case {
                name: "short rows are padded",
                row: vec![(5, 0.9), (3, 0.8)],
                excluded: vec![1, 3, 4],
                k: 3,
                want: vec![(5, 0.9), (PAD, NEG), (PAD, NEG)],
            },
            Case {
                name: "NO_ITEM is dropped anywhere in the row",
                row: vec![(PAD, 0.5), (2, 0.4), (PAD, NEG), (4, 0.3)],
                excluded: vec![],
                k: 3,
                want: vec![(2, 0.4), (4, 0.3), (PAD, NEG)],
            },
            Case {
                name: "scores pass through, even NaN and -inf",
                row: vec![(1, f32::NAN), (2, NEG), (3, f32::INFINITY)],
                excluded: vec![2],
                k: 2,
                want: vec![(1, f32::NAN), (3, f32::INFINITY)],
            },
            Case {
                name: "a long exclusion list (binary search)",
                row: vec![(40, 1.0), (41, 0.9), (3, 0.8), (99, 0.7)],
                excluded: (0..50).map(|i| 2 * i).collect(), // even labels below 100
                k: 4,
                want: vec![(41, 0.9), (3, 0.8), (99, 0.7), (PAD, NEG)],
            },
            Case {
                name: "label 0 and the largest real label",
                row: vec![(0, 1.0), (PAD - 1, 0.5)],
                excluded: vec![0],
                k: 2,
                want: vec![(PAD - 1, 0.5), (PAD, NEG)],
            },
            Case {
                name: "empty row",
                row: vec![],
                excluded: vec![1],
                k: 1,
                want: vec![(PAD, NEG)],
            },
        ];
        for case in cases {
            let (got, kept) = run_one(&case.row, &case.excluded, case.k);
            let real = case.want.iter().filter(|e| e.0 != PAD).count() as i64;
            assert_eq!(kept, real, "{}", case.name);
            assert_eq!(got.len(), case.want.len(), "{}", case.name);
            for (g, w) in got.iter().zip(&case.want) {
                // Bit equality so that NaN matches NaN.
                assert_eq!((g.0, g.1.to_bits()), (w.0, w.1.to_bits()), "{}", case.name);
            }
        }
    }

    #[test]
    fn each_query_uses_its_own_part() {
        // Query 0 excludes 1, query 1 excludes nothing, query 2 excludes 1 and 2.
        let labels = [1, 2, 3, 1, 2, 3, 1, 2, 3];
        let scores = [0.3, 0.2, 0.1, 0.3, 0.2, 0.1, 0.3, 0.2, 0.1];
        let (l, _, kept) =
            exclude_hits(&labels, &scores, [3, 3], &[1, 1, 2], &[0, 1, 1, 3], 2).unwrap();
        assert_eq!(l, [2, 3, 1, 2, 3, PAD]);
        assert_eq!(kept, [2, 2, 1]);
    }

    #[test]
    fn empty_shapes() {
        assert_eq!(
            exclude_hits(&[], &[], [0, 4], &[], &[0], 2).unwrap(),
            (vec![], vec![], vec![])
        );
        assert_eq!(
            exclude_hits(&[], &[], [2, 0], &[], &[0, 0, 0], 1).unwrap(),
            (vec![PAD, PAD], vec![NEG, NEG], vec![0, 0])
        );
    }

    #[test]
    #[allow(clippy::type_complexity)] // a table of tuples
    fn errors() {
        let cases: &[(usize, usize, usize, &[i64], usize, &str)] = &[
            // (labels, scores, excluded lengths, offsets, k, needle) for shape (2, 2)
            (4, 4, 0, &[0, 0, 0], 0, "`k`"),
            (3, 4, 0, &[0, 0, 0], 1, "`labels`"),
            (4, 5, 0, &[0, 0, 0], 1, "`scores`"),
            (4, 4, 0, &[0, 0], 1, "`offsets` has 2 values"),
            (4, 4, 2, &[0, 3, 2], 1, "`offsets[1]` is 3"),
            (4, 4, 2, &[0, 2, 1], 1, "`offsets` must be non-decreasing"),
        ];
        for &(nl, ns, ne, offsets, k, needle) in cases {
            let err = exclude_hits(
                &vec![1; nl],
                &vec![0.0; ns],
                [2, 2],
                &vec![0; ne],
                offsets,
                k,
            )
            .unwrap_err();
            assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
        }
    }

    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 33
    }

    #[test]
    fn random_inputs_match_a_brute_force_filter_serial_and_parallel() {
        let mut rng = 11u64;
        for (queries, len, k) in [(5, 12, 4), (40, 30, 10), (2000, 40, 25)] {
            let labels: Vec<u64> = (0..queries * len)
                .map(|_| match lcg(&mut rng) % 10 {
                    0 => PAD,
                    _ => lcg(&mut rng) % 80,
                })
                .collect();
            let scores: Vec<f32> = (0..queries * len).map(|i| i as f32).collect();
            let mut excluded = Vec::new();
            let mut offsets = vec![0i64];
            for _ in 0..queries {
                let mut part: Vec<u64> = (0..lcg(&mut rng) % 40)
                    .map(|_| lcg(&mut rng) % 80)
                    .collect();
                part.sort_unstable();
                excluded.extend(part);
                offsets.push(excluded.len() as i64);
            }
            let (ol, os, kept) =
                exclude_hits(&labels, &scores, [queries, len], &excluded, &offsets, k).unwrap();
            for q in 0..queries {
                let part = &excluded[offsets[q] as usize..offsets[q + 1] as usize];
                let want: Vec<(u64, f32)> = (q * len..(q + 1) * len)
                    .filter(|&i| labels[i] != PAD && !part.contains(&labels[i]))
                    .map(|i| (labels[i], scores[i]))
                    .take(k)
                    .collect();
                assert_eq!(kept[q], want.len() as i64, "query {q}");
                let got: Vec<(u64, f32)> = (q * k..(q + 1) * k).map(|i| (ol[i], os[i])).collect();
                assert_eq!(&got[..want.len()], want.as_slice(), "query {q}");
                assert!(
                    got[want.len()..].iter().all(|&(l, s)| l == PAD && s == NEG),
                    "query {q}"
                );
            }
        }
    }
}
