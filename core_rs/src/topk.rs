//! Row-wise top-k of a score matrix.

use std::cmp::Ordering;

use rayon::prelude::*;

use crate::error::{CoreError, CoreResult, expect_len};

/// Below this many scores the rows are ranked on the calling thread.
const PARALLEL_MIN_SCORES: usize = 16_384;

/// Higher score first; equal scores by lower column.
#[inline]
fn ranking(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

fn topk_row(row: &[f32], out_idx: &mut [i64], out_val: &mut [f32], picks: &mut Vec<(f32, u32)>) {
    let k = out_idx.len();
    picks.clear();
    picks.extend(
        row.iter()
            .enumerate()
            .filter(|(_, v)| !v.is_nan() && **v != f32::NEG_INFINITY)
            .map(|(i, &v)| (v, i as u32)),
    );
    if picks.len() > k {
        picks.select_nth_unstable_by(k - 1, ranking);
        picks.truncate(k);
    }
    picks.sort_unstable_by(ranking);
    for (slot, &(v, i)) in picks.iter().enumerate() {
        out_idx[slot] = i64::from(i);
        out_val[slot] = v;
    }
    out_idx[picks.len()..].fill(-1);
    out_val[picks.len()..].fill(f32::NEG_INFINITY);
}

/// Indices and values of the `k` largest entries of each row of a row-major (rows, cols) matrix,
/// sorted descending (ties: lower index first). NaN and -inf are never selected; rows with fewer
/// than `k` others are padded with index -1 and value -inf. Returns row-major (rows, k) arrays.
pub fn topk_rows(scores: &[f32], shape: [usize; 2], k: usize) -> CoreResult<(Vec<i64>, Vec<f32>)> {
    let [rows, cols] = shape;
    if k == 0 {
        return Err(CoreError::InvalidArgument("`k` must be >= 1".into()));
    }
    if u32::try_from(cols).is_err() {
        return Err(CoreError::ShapeMismatch(format!(
            "`scores` has {cols} columns; at most 2^32 - 1 are supported"
        )));
    }
    expect_len("scores", scores.len(), &shape)?;
    let mut idx = vec![-1i64; rows * k];
    let mut val = vec![f32::NEG_INFINITY; rows * k];
    if cols == 0 {
        return Ok((idx, val));
    }
    let scratch = || Vec::with_capacity(cols);
    if rows < 2 || scores.len() < PARALLEL_MIN_SCORES {
        let mut picks = scratch();
        for ((row, oi), ov) in scores
            .chunks_exact(cols)
            .zip(idx.chunks_exact_mut(k))
            .zip(val.chunks_exact_mut(k))
        {
            topk_row(row, oi, ov, &mut picks);
        }
    } else {
        scores
            .par_chunks_exact(cols)
            .zip(idx.par_chunks_exact_mut(k))
            .zip(val.par_chunks_exact_mut(k))
            .for_each_init(scratch, |picks, ((row, oi), ov)| {
                topk_row(row, oi, ov, picks)
            });
    }
    Ok((idx, val))
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // the case tables are tuples of slices
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn table() {
        let nan = f32::NAN;
        let inf = f32::INFINITY;
        let cases: &[(&str, &[f32], usize, &[i64], &[f32])] = &[
            ("basic", &[0.1, 0.9, 0.5, 0.7], 2, &[1, 3], &[0.9, 0.7]),
            (
                "k equals cols",
                &[3.0, 1.0, 2.0],
                3,
                &[0, 2, 1],
                &[3.0, 2.0, 1.0],
            ),
            (
                "k beyond cols pads",
                &[1.0, 2.0],
                4,
                &[1, 0, -1, -1],
                &[2.0, 1.0, NEG, NEG],
            ),
            (
                "ties lower index first",
                &[0.5, 0.7, 0.5, 0.5],
                3,
                &[1, 0, 2],
                &[0.7, 0.5, 0.5],
            ),
            (
                "nan and -inf skipped",
                &[nan, NEG, 0.2, nan],
                3,
                &[2, -1, -1],
                &[0.2, NEG, NEG],
            ),
            (
                "+inf is a score",
                &[1.0, inf, -5.0],
                2,
                &[1, 0],
                &[inf, 1.0],
            ),
            ("negative scores", &[-3.0, -1.0, -2.0], 1, &[1], &[-1.0]),
        ];
        for (name, row, k, want_idx, want_val) in cases {
            let (idx, val) = topk_rows(row, [1, row.len()], *k).unwrap();
            assert_eq!(idx, *want_idx, "{name}");
            assert_eq!(val, *want_val, "{name}");
        }
    }

    #[test]
    fn empty_shapes() {
        assert_eq!(topk_rows(&[], [0, 5], 3).unwrap(), (vec![], vec![]));
        assert_eq!(
            topk_rows(&[], [2, 0], 1).unwrap(),
            (vec![-1, -1], vec![NEG, NEG])
        );
    }

    #[test]
    fn errors() {
        let cases: &[(&[f32], [usize; 2], usize, &str)] = &[
            (&[1.0], [1, 1], 0, "`k`"),
            (&[1.0, 2.0, 3.0], [2, 2], 1, "`scores`"),
        ];
        for (scores, shape, k, needle) in cases {
            let err = topk_rows(scores, *shape, *k).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn random_rows_match_a_full_sort_serial_and_parallel() {
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Few distinct values, so ties are common.
            ((state >> 33) % 50) as f32 / 10.0
        };
        for (rows, cols, k) in [(3, 17, 5), (64, 1000, 100), (40, 500, 600)] {
            let scores: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
            let (idx, val) = topk_rows(&scores, [rows, cols], k).unwrap();
            for r in 0..rows {
                let row = &scores[r * cols..(r + 1) * cols];
                let mut order: Vec<usize> = (0..cols).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                order.truncate(k);
                let want_idx: Vec<i64> = order
                    .iter()
                    .map(|&i| i as i64)
                    .chain(std::iter::repeat(-1))
                    .take(k)
                    .collect();
                let want_val: Vec<f32> = order
                    .iter()
                    .map(|&i| row[i])
                    .chain(std::iter::repeat(NEG))
                    .take(k)
                    .collect();
                assert_eq!(&idx[r * k..(r + 1) * k], want_idx.as_slice(), "row {r}");
                assert_eq!(&val[r * k..(r + 1) * k], want_val.as_slice(), "row {r}");
            }
        }
    }
}
