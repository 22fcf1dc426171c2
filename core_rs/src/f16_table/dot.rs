//! Gather + dot kernels: score one f32 query against table rows stored as f16, accumulating in f32.
//!
//! The AVX2 path is chosen at run time (the extension must load on machines without it), so the
//! crate is never compiled with `-C target-cpu=native`.

use half::f16;

/// Scores `query` against `table` rows `rows[i]` into `out[i]`; a row that is negative or at/after
/// `n_rows` scores -inf. `table` holds at least `n_rows * query.len()` values.
pub(super) type ScoreRows =
    fn(query: &[f32], table: &[f16], n_rows: usize, rows: &[i64], out: &mut [f32]);

/// The fastest kernel this CPU runs.
pub(super) fn best_kernel() -> ScoreRows {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2_available() {
            return score_rows_avx2;
        }
    }
    score_rows_portable
}

#[cfg(target_arch = "x86_64")]
pub(super) fn avx2_available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// The row's first value, or None when `row` is padding or past the table.
#[inline(always)]
fn row_start(row: i64, n_rows: usize, dim: usize) -> Option<usize> {
    usize::try_from(row)
        .ok()
        .filter(|&r| r < n_rows)
        .map(|r| r * dim)
}

pub(super) fn score_rows_portable(
    query: &[f32],
    table: &[f16],
    n_rows: usize,
    rows: &[i64],
    out: &mut [f32],
) {
    let dim = query.len();
    assert!(table.len() >= n_rows * dim && out.len() == rows.len());
    for (o, &row) in out.iter_mut().zip(rows) {
        *o = match row_start(row, n_rows, dim) {
            Some(start) => dot_portable(query, &table[start..start + dim]),
            None => f32::NEG_INFINITY,
        };
    }
}

#[inline]
fn dot_portable(query: &[f32], row: &[f16]) -> f32 {
    let mut acc = [0.0f32; 8];
    let split = query.len() - query.len() % 8;
    for (q, r) in query[..split]
        .chunks_exact(8)
        .zip(row[..split].chunks_exact(8))
    {
        for i in 0..8 {
            acc[i] += q[i] * r[i].to_f32();
        }
    }
    let tail: f32 = query[split..]
        .iter()
        .zip(&row[split..])
        .map(|(q, r)| q * r.to_f32())
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
fn score_rows_avx2(query: &[f32], table: &[f16], n_rows: usize, rows: &[i64], out: &mut [f32]) {
    assert!(
        avx2_available(),
        "score_rows_avx2 called on a CPU without AVX2/FMA/F16C"
    );
    assert!(table.len() >= n_rows * query.len() && out.len() == rows.len());
    // SAFETY: the CPU features were checked above; bounds were checked above and per row inside.
    unsafe { avx2::score_rows(query, table, n_rows, rows, out) }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::row_start;

    /// Candidates ahead whose rows are prefetched: enough to cover a memory round trip
    /// (~100 ns) at the ~10-20 ns one dot product takes.
    const PREFETCH_AHEAD: usize = 8;

    /// # Safety
    /// The CPU supports AVX2, FMA and F16C, and `table.len() >= n_rows * query.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn score_rows(
        query: &[f32],
        table: &[f16],
        n_rows: usize,
        rows: &[i64],
        out: &mut [f32],
    ) {
        let dim = query.len();
        let row_bytes = dim * size_of::<f16>();
        let base = table.as_ptr();
        let prefetch = |row: i64| {
            if let Some(start) = row_start(row, n_rows, dim) {
                // SAFETY: start + dim <= table.len(); prefetching reads nothing architecturally.
                let p = unsafe { base.add(start) } as *const i8;
                let mut offset = 0;
                while offset < row_bytes {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(offset));
                    offset += 64;
                }
            }
        };
        for &row in rows.iter().take(PREFETCH_AHEAD) {
            prefetch(row);
        }
        for (i, (o, &row)) in out.iter_mut().zip(rows).enumerate() {
            if let Some(&ahead) = rows.get(i + PREFETCH_AHEAD) {
                prefetch(ahead);
            }
            *o = match row_start(row, n_rows, dim) {
                // SAFETY: the row lies within the table (row_start checked it).
                Some(start) => unsafe { dot(query, base.add(start)) },
                None => f32::NEG_INFINITY,
            };
        }
    }

    /// # Safety
    /// AVX2/FMA/F16C available; `row` points at `query.len()` readable f16 values.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot(query: &[f32], row: *const f16) -> f32 {
        let dim = query.len();
        let q = query.as_ptr();
        let h = row as *const u16;
        unsafe {
            // Four independent accumulators hide the FMA latency (4 cycles, 2 per cycle).
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= dim {
                for (lane, a) in acc.iter_mut().enumerate() {
                    let j = i + 8 * lane;
                    let r = _mm256_cvtph_ps(_mm_loadu_si128(h.add(j) as *const __m128i));
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(j)), r, *a);
                }
                i += 32;
            }
            while i + 8 <= dim {
                let r = _mm256_cvtph_ps(_mm_loadu_si128(h.add(i) as *const __m128i));
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i)), r, acc[0]);
                i += 8;
            }
            let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps::<1>(sum));
            let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
            let mut total = _mm_cvtss_f32(_mm_add_ss(quad, _mm_movehdup_ps(quad)));
            while i < dim {
                total += *q.add(i) * (*row.add(i)).to_f32();
                i += 1;
            }
            total
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(query: &[f32], table: &[f16], n_rows: usize, rows: &[i64]) -> Vec<f64> {
        let dim = query.len();
        rows.iter()
            .map(|&r| match row_start(r, n_rows, dim) {
                Some(s) => query
                    .iter()
                    .zip(&table[s..s + dim])
                    .map(|(q, h)| *q as f64 * h.to_f64())
                    .sum(),
                None => f64::NEG_INFINITY,
            })
            .collect()
    }

    fn kernels() -> Vec<(&'static str, ScoreRows)> {
        let mut k: Vec<(&'static str, ScoreRows)> = vec![("portable", score_rows_portable)];
        #[cfg(target_arch = "x86_64")]
        if avx2_available() {
            k.push(("avx2", score_rows_avx2));
        }
        k
    }

    #[test]
    fn every_kernel_matches_the_reference_at_awkward_dims() {
        let mut state = 3u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for dim in [1usize, 7, 8, 9, 16, 31, 32, 33, 40, 64, 100, 128, 257] {
            let n_rows = 50;
            let table: Vec<f16> = (0..n_rows * dim).map(|_| f16::from_f32(next())).collect();
            let query: Vec<f32> = (0..dim).map(|_| next()).collect();
            // Padding, past-the-end and in-range rows, including repeats.
            let rows: Vec<i64> = vec![
                0,
                49,
                -1,
                50,
                7,
                7,
                i64::MIN,
                i64::MAX,
                12,
                3,
                3,
                44,
                1,
                2,
                30,
            ];
            let want = reference(&query, &table, n_rows, &rows);
            for (name, kernel) in kernels() {
                let mut out = vec![0.0f32; rows.len()];
                kernel(&query, &table, n_rows, &rows, &mut out);
                for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                    if w.is_infinite() {
                        assert_eq!(*g, f32::NEG_INFINITY, "{name} dim {dim} cand {i}");
                    } else {
                        assert!(
                            (*g as f64 - w).abs() <= 1e-5 * (1.0 + dim as f64),
                            "{name} dim {dim} cand {i}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rows_beyond_n_rows_are_padding_even_inside_the_buffer() {
        // Capacity rows past `n_rows` exist in memory but were never set.
        let table = vec![f16::ONE; 4 * 10];
        for (name, kernel) in kernels() {
            let mut out = [0.0f32; 3];
            kernel(&[1.0; 4], &table, 2, &[1, 2, 9], &mut out);
            assert_eq!(out, [4.0, f32::NEG_INFINITY, f32::NEG_INFINITY], "{name}");
        }
    }
}
