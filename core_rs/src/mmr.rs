//! Maximal Marginal Relevance: pick items that are relevant and unlike the ones already picked.

use rayon::prelude::*;

use crate::error::{CoreError, CoreResult, expect_len};

/// Below this many vector values (n x d) similarity updates stay on the calling thread.
const PARALLEL_MIN_VALUES: usize = 1 << 17;

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent sums let the compiler vectorise and keep the adds from serialising.
    let mut acc = [0.0f32; 8];
    let (a8, a_tail) = a.split_at(a.len() - a.len() % 8);
    let (b8, b_tail) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Index of the largest `score(i)` among unpicked items; ties go to the lower index.
fn argmax_unpicked(picked: &[bool], score: impl Fn(usize) -> f32) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, _) in picked.iter().enumerate().filter(|(_, p)| !**p) {
        let s = score(i);
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

/// Picks `min(k, n)` of `n` items in MMR order and returns their indices, in pick order.
///
/// `relevance` has n values and `vectors` is row-major (n, dim), rows assumed unit-normalised.
/// The first pick is the most relevant item; each next pick maximises
/// `(1 - diversity) * relevance[i] - diversity * max_{j picked} dot(v_i, v_j)` (ties: lower index).
/// `diversity` 0 is plain top-k by relevance. Costs O(k n dim): each pick updates every item's
/// largest similarity to the picked set with one dot product.
pub fn mmr(
    relevance: &[f32],
    vectors: &[f32],
    dim: usize,
    k: usize,
    diversity: f64,
) -> CoreResult<Vec<i64>> {
    let n = relevance.len();
    if k == 0 {
        return Err(CoreError::InvalidArgument("`k` must be >= 1".into()));
    }
    if !(0.0..=1.0).contains(&diversity) {
        return Err(CoreError::InvalidArgument(format!(
            "`diversity` is {diversity} but must be in [0, 1] (0: relevance only, 1: diversity only)"
        )));
    }
    expect_len("vectors", vectors.len(), &[n, dim])?;
    if let Some(index) = relevance.iter().position(|v| !v.is_finite()) {
        return Err(CoreError::NonFinite {
            argument: "relevance",
            index,
        });
    }
    if let Some(index) = vectors.iter().position(|v| !v.is_finite()) {
        return Err(CoreError::NonFinite {
            argument: "vectors",
            index,
        });
    }

    let lambda = diversity as f32;
    let keep = 1.0 - lambda;
    let mut picked = vec![false; n];
    let mut max_sim = vec![f32::NEG_INFINITY; n];
    let mut order = Vec::with_capacity(k.min(n));
    while order.len() < k.min(n) {
        let next = if order.is_empty() || lambda == 0.0 {
            argmax_unpicked(&picked, |i| relevance[i])
        } else {
            argmax_unpicked(&picked, |i| keep * relevance[i] - lambda * max_sim[i])
        }
        .expect("fewer picks than items, so one is left");
        picked[next] = true;
        order.push(next as i64);
        if lambda == 0.0 || order.len() == k.min(n) || dim == 0 {
            continue;
        }
        let last = &vectors[next * dim..(next + 1) * dim];
        let update = |(m, v): (&mut f32, &[f32])| *m = m.max(dot(v, last));
        if vectors.len() < PARALLEL_MIN_VALUES {
            max_sim
                .iter_mut()
                .zip(vectors.chunks_exact(dim))
                .for_each(update);
        } else {
            max_sim
                .par_iter_mut()
                .zip(vectors.par_chunks_exact(dim))
                .with_min_len(256)
                .for_each(update);
        }
    }
    // With dim == 0 every similarity is 0, which ranks exactly like relevance alone.
    Ok(order)
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // the case tables are tuples of slices
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let norm = dot(v, v).sqrt();
        v.iter().map(|x| x / norm).collect()
    }

    /// Straightforward O(k n^2 d) MMR for comparison.
    fn reference(rel: &[f32], vectors: &[f32], dim: usize, k: usize, lambda: f32) -> Vec<i64> {
        let n = rel.len();
        let mut picked: Vec<usize> = Vec::new();
        while picked.len() < k.min(n) {
            let mut best: Option<(usize, f32)> = None;
            for i in (0..n).filter(|i| !picked.contains(i)) {
                let s = if picked.is_empty() {
                    rel[i]
                } else {
                    let sim = picked
                        .iter()
                        .map(|&j| {
                            dot(
                                &vectors[i * dim..(i + 1) * dim],
                                &vectors[j * dim..(j + 1) * dim],
                            )
                        })
                        .fold(f32::NEG_INFINITY, f32::max);
                    (1.0 - lambda) * rel[i] - lambda * sim
                };
                if best.is_none_or(|(_, b)| s > b) {
                    best = Some((i, s));
                }
            }
            picked.push(best.unwrap().0);
        }
        picked.into_iter().map(|i| i as i64).collect()
    }

    #[test]
    fn table() {
        // Items 0 and 1 are near-duplicates; 2 points elsewhere.
        let vectors: Vec<f32> = [unit(&[1.0, 0.0]), unit(&[0.99, 0.1]), unit(&[0.0, 1.0])].concat();
        let rel = [0.9, 0.85, 0.5];
        let cases: &[(&str, f64, usize, &[i64])] = &[
            ("relevance only", 0.0, 3, &[0, 1, 2]),
            ("balanced skips the near-duplicate", 0.5, 2, &[0, 2]),
            ("k beyond n returns n", 0.5, 10, &[0, 2, 1]),
            (
                "diversity only still starts with the most relevant",
                1.0,
                2,
                &[0, 2],
            ),
            ("k of one", 0.7, 1, &[0]),
        ];
        for (name, diversity, k, want) in cases {
            assert_eq!(
                mmr(&rel, &vectors, 2, *k, *diversity).unwrap(),
                *want,
                "{name}"
            );
        }
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        let vectors = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        assert_eq!(
            mmr(&[0.5, 0.5, 0.5], &vectors, 2, 3, 0.0).unwrap(),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn empty_and_zero_dim() {
        assert!(mmr(&[], &[], 4, 3, 0.5).unwrap().is_empty());
        assert_eq!(mmr(&[0.1, 0.3], &[], 0, 2, 0.5).unwrap(), vec![1, 0]);
    }

    #[test]
    fn errors() {
        let cases: &[(&[f32], &[f32], usize, usize, f64, &str)] = &[
            (&[1.0], &[1.0], 1, 0, 0.5, "`k`"),
            (&[1.0], &[1.0], 1, 1, 1.5, "`diversity`"),
            (&[1.0], &[1.0], 1, 1, -0.1, "`diversity`"),
            (&[1.0], &[1.0], 1, 1, f64::NAN, "`diversity`"),
            (&[1.0], &[1.0, 2.0], 1, 1, 0.5, "`vectors`"),
            (&[f32::NAN], &[1.0], 1, 1, 0.5, "`relevance`"),
            (&[1.0], &[f32::INFINITY], 1, 1, 0.5, "`vectors`"),
        ];
        for (rel, vectors, dim, k, diversity, needle) in cases {
            let err = mmr(rel, vectors, *dim, *k, *diversity).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn random_inputs_match_the_reference() {
        let mut state = 11u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for (n, dim, k, lambda) in [(50, 8, 10, 0.3), (200, 16, 20, 0.7), (1200, 128, 5, 0.5)] {
            let rel: Vec<f32> = (0..n).map(|_| next()).collect();
            let vectors: Vec<f32> = (0..n)
                .flat_map(|_| unit(&(0..dim).map(|_| next()).collect::<Vec<_>>()))
                .collect();
            assert_eq!(
                mmr(&rel, &vectors, dim, k, lambda).unwrap(),
                reference(&rel, &vectors, dim, k, lambda as f32),
                "n={n} dim={dim}"
            );
        }
    }
}
