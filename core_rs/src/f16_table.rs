//! An embedding table stored as f16, and batched scoring of queries against rows of it.
//!
//! Rows live in one row-major `Vec<f16>` behind a read/write lock: scoring takes the read lock, so
//! any number of scorers run together, and writers (set/clear, growth by doubling) take the write
//! lock only to copy already-converted values in.

mod dot;

use half::f16;
use half::slice::HalfFloatSliceExt;
use parking_lot::RwLock;
use rayon::prelude::*;

use crate::error::{CoreError, CoreResult, expect_len};

/// Largest finite f16.
const F16_MAX: f32 = 65504.0;

/// Row indices must stay below this (2^40 rows would be terabytes at any dimension).
const MAX_ROW: i64 = 1 << 40;

/// Scoring calls with fewer multiply-adds than this run on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 16;

/// Candidates per task when one query's candidates are split across threads.
const CANDIDATE_BLOCK: usize = 256;

#[derive(Debug)]
struct Storage {
    /// `capacity * dim` values; rows at or after `rows` are zero.
    values: Vec<f16>,
    rows: usize,
    capacity: usize,
}

#[derive(Debug)]
pub struct F16Table {
    dim: usize,
    storage: RwLock<Storage>,
}

/// The row index, or why it is not one.
fn row_index(argument: &'static str, position: usize, row: i64) -> CoreResult<usize> {
    if (0..MAX_ROW).contains(&row) {
        Ok(row as usize)
    } else {
        Err(CoreError::InvalidArgument(format!(
            "`{argument}[{position}]` is {row}; rows must be in 0..2^40"
        )))
    }
}

/// Every row index in `rows` must be below `n_rows` (a row that was set).
fn check_rows_exist(argument: &'static str, rows: &[i64], n_rows: usize) -> CoreResult<()> {
    match rows
        .iter()
        .find(|&&r| usize::try_from(r).map_or(true, |r| r >= n_rows))
    {
        Some(&row) => Err(CoreError::RowOutOfRange {
            argument,
            row,
            rows: n_rows,
        }),
        None => Ok(()),
    }
}

impl F16Table {
    /// An empty table of `dim`-value rows with room for `capacity` rows before it first grows.
    pub fn new(dim: usize, capacity: usize) -> CoreResult<Self> {
        if dim == 0 {
            return Err(CoreError::InvalidArgument("`dim` must be >= 1".into()));
        }
        let len = capacity.checked_mul(dim).ok_or_else(|| {
            CoreError::InvalidArgument(format!("`capacity` {capacity} x `dim` {dim} overflows"))
        })?;
        let mut values = Vec::new();
        values.try_reserve_exact(len).map_err(|_| {
            CoreError::InvalidArgument(format!(
                "cannot allocate `capacity` {capacity} rows of `dim` {dim}; ask for fewer"
            ))
        })?;
        values.resize(len, f16::ZERO);
        Ok(Self {
            dim,
            storage: RwLock::new(Storage {
                values,
                rows: 0,
                capacity,
            }),
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// 1 + the highest row ever set (0 when none was).
    pub fn rows(&self) -> usize {
        self.storage.read().rows
    }

    pub fn capacity(&self) -> usize {
        self.storage.read().capacity
    }

    /// Bytes of f16 storage allocated (capacity x dim x 2).
    pub fn nbytes(&self) -> usize {
        self.capacity() * self.dim * size_of::<f16>()
    }

    fn check_dim(&self, argument: &'static str, got: usize) -> CoreResult<()> {
        if got == self.dim {
            Ok(())
        } else {
            Err(CoreError::DimensionMismatch {
                argument,
                expected: self.dim,
                got,
            })
        }
    }

    /// Stores `vectors` (row-major `shape` = (n, dim)) at `rows` (n of them), rounding to the
    /// nearest f16 (ties to even). All-or-nothing: a bad row or value rejects the whole call.
    /// A row given twice ends up with its last vector.
    pub fn set_rows(&self, rows: &[i64], vectors: &[f32], shape: [usize; 2]) -> CoreResult<()> {
        let [n, dim] = shape;
        self.check_dim("vectors", dim)?;
        expect_len("vectors", vectors.len(), &shape)?;
        if n != rows.len() {
            return Err(CoreError::ShapeMismatch(format!(
                "`rows` has {} entries but `vectors` has {n} rows; pass one row index per vector",
                rows.len()
            )));
        }
        let mut needed = 0usize;
        for (position, &row) in rows.iter().enumerate() {
            needed = needed.max(row_index("rows", position, row)? + 1);
        }
        if let Some(index) = vectors.iter().position(|v| !v.is_finite()) {
            return Err(CoreError::NonFinite {
                argument: "vectors",
                index,
            });
        }
        if let Some(index) = vectors.iter().position(|v| v.abs() > F16_MAX) {
            return Err(CoreError::OutOfF16Range {
                argument: "vectors",
                index,
                value: vectors[index],
            });
        }
        // Convert before taking the lock so that scorers wait only for the copy.
        let mut halves = vec![f16::ZERO; vectors.len()];
        halves.convert_from_f32_slice(vectors);

        let mut storage = self.storage.write();
        if needed > storage.capacity {
            self.grow(&mut storage, needed)?;
        }
        for (&row, values) in rows.iter().zip(halves.chunks_exact(self.dim)) {
            let start = row as usize * self.dim;
            storage.values[start..start + self.dim].copy_from_slice(values);
        }
        storage.rows = storage.rows.max(needed);
        Ok(())
    }

    /// Doubles the capacity until `needed` rows fit; existing rows keep their values.
    fn grow(&self, storage: &mut Storage, needed: usize) -> CoreResult<()> {
        let mut capacity = storage.capacity.max(1);
        while capacity < needed {
            capacity = capacity.saturating_mul(2);
        }
        let too_big = || {
            CoreError::InvalidArgument(format!(
                "cannot grow the table to {capacity} rows of `dim` {} for row {}; use smaller row indices",
                self.dim,
                needed - 1
            ))
        };
        let len = capacity.checked_mul(self.dim).ok_or_else(too_big)?;
        storage
            .values
            .try_reserve_exact(len - storage.values.len())
            .map_err(|_| too_big())?;
        storage.values.resize(len, f16::ZERO);
        storage.capacity = capacity;
        Ok(())
    }

    /// The stored vectors of `rows`, as f32, row-major (n, dim).
    pub fn get_rows(&self, rows: &[i64]) -> CoreResult<Vec<f32>> {
        let storage = self.storage.read();
        check_rows_exist("rows", rows, storage.rows)?;
        let mut out = vec![0.0f32; rows.len() * self.dim];
        for (&row, dst) in rows.iter().zip(out.chunks_exact_mut(self.dim)) {
            let start = row as usize * self.dim;
            storage.values[start..start + self.dim].convert_to_f32_slice(dst);
        }
        Ok(out)
    }

    /// Sets `rows` to zero vectors; every row must have been set before (row < rows).
    pub fn clear_rows(&self, rows: &[i64]) -> CoreResult<()> {
        let mut storage = self.storage.write();
        check_rows_exist("rows", rows, storage.rows)?;
        for &row in rows {
            let start = row as usize * self.dim;
            storage.values[start..start + self.dim].fill(f16::ZERO);
        }
        Ok(())
    }

    /// out[b, c] = dot(queries[b], table[rows[b, c]]) for `queries` (B, dim) and `rows` (B, C),
    /// both row-major; f16 storage, f32 accumulation. A row that is negative (padding) or at/after
    /// `rows()` scores -inf. NaN in a query gives NaN scores.
    pub fn score(
        &self,
        queries: &[f32],
        queries_shape: [usize; 2],
        rows: &[i64],
        rows_shape: [usize; 2],
    ) -> CoreResult<Vec<f32>> {
        let [batch, dim] = queries_shape;
        let [row_batch, candidates] = rows_shape;
        self.check_dim("queries", dim)?;
        expect_len("queries", queries.len(), &queries_shape)?;
        expect_len("rows", rows.len(), &rows_shape)?;
        if row_batch != batch {
            return Err(CoreError::ShapeMismatch(format!(
                "`rows` has {row_batch} rows of candidates but `queries` has {batch} queries; \
                 pass one row of candidates per query"
            )));
        }
        let mut out = vec![0.0f32; batch * candidates];
        if candidates == 0 {
            return Ok(out);
        }
        let kernel = dot::best_kernel();
        let storage = self.storage.read();
        let (table, n_rows) = (&storage.values[..], storage.rows);
        if out.len() * dim < PARALLEL_MIN_WORK {
            let work = out
                .chunks_exact_mut(candidates)
                .zip(rows.chunks_exact(candidates))
                .zip(queries.chunks_exact(dim));
            for ((o, r), q) in work {
                kernel(q, table, n_rows, r, o);
            }
        } else if batch >= 4 * rayon::current_num_threads() {
            out.par_chunks_exact_mut(candidates)
                .zip(rows.par_chunks_exact(candidates))
                .zip(queries.par_chunks_exact(dim))
                .for_each(|((o, r), q)| kernel(q, table, n_rows, r, o));
        } else {
            // Few queries: split each one's candidates too, so every thread has work.
            out.par_chunks_exact_mut(candidates)
                .zip(rows.par_chunks_exact(candidates))
                .zip(queries.par_chunks_exact(dim))
                .for_each(|((o, r), q)| {
                    o.par_chunks_mut(CANDIDATE_BLOCK)
                        .zip(r.par_chunks(CANDIDATE_BLOCK))
                        .for_each(|(o, r)| kernel(q, table, n_rows, r, o))
                });
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // the case tables are tuples of slices
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    fn table(dim: usize, capacity: usize) -> F16Table {
        F16Table::new(dim, capacity).unwrap()
    }

    #[test]
    fn new_rejects_a_zero_dim() {
        assert!(
            F16Table::new(0, 4)
                .unwrap_err()
                .to_string()
                .contains("`dim`")
        );
        let t = table(3, 0);
        assert_eq!((t.dim(), t.rows(), t.capacity(), t.nbytes()), (3, 0, 0, 0));
    }

    #[test]
    fn set_get_round_trips_through_f16() {
        let t = table(4, 2);
        // 1/3 is not an f16; 65504 is the largest f16; 2049 is a tie that rounds to even (2048).
        let vectors = [1.0, -2.5, 1.0 / 3.0, 0.0, 65504.0, -65504.0, 2049.0, 1e-8];
        t.set_rows(&[0, 1], &vectors, [2, 4]).unwrap();
        let got = t.get_rows(&[1, 0]).unwrap();
        let want: Vec<f32> = [&vectors[4..], &vectors[..4]]
            .concat()
            .iter()
            .map(|&v| f16::from_f32(v).to_f32())
            .collect();
        assert_eq!(got, want);
        assert_eq!(got[2], 2048.0);
        assert_eq!(t.rows(), 2);
    }

    #[test]
    fn growth_doubles_and_keeps_data() {
        let t = table(2, 2);
        t.set_rows(&[0, 1], &[1.0, 2.0, 3.0, 4.0], [2, 2]).unwrap();
        let cases: &[(i64, usize, usize)] =
            &[(2, 3, 4), (3, 4, 4), (4, 5, 8), (20, 21, 32), (5, 21, 32)];
        for &(row, rows, capacity) in cases {
            t.set_rows(&[row], &[row as f32, -1.0], [1, 2]).unwrap();
            assert_eq!(
                (t.rows(), t.capacity(), t.nbytes()),
                (rows, capacity, capacity * 2 * 2),
                "row {row}"
            );
            assert_eq!(t.get_rows(&[0, 1]).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        }
        // Rows between set ones read as zeros.
        assert_eq!(t.get_rows(&[10]).unwrap(), vec![0.0, 0.0]);
        let from_empty = table(3, 0);
        from_empty.set_rows(&[0], &[1.0, 2.0, 3.0], [1, 3]).unwrap();
        assert_eq!(from_empty.capacity(), 1);
    }

    #[test]
    fn set_rows_rejects_bad_input_and_writes_nothing() {
        let nan = f32::NAN;
        let cases: &[(&[i64], &[f32], [usize; 2], &str)] = &[
            (&[0], &[1.0, 2.0], [1, 2], "`vectors` has dimension 2"),
            (&[0, 1], &[1.0, 2.0, 3.0], [1, 3], "`rows` has 2 entries"),
            (&[0, -1], &[0.0; 6], [2, 3], "`rows[1]` is -1"),
            (&[0, 1], &[0.0, 0.0, 0.0, 1.0, nan, 0.0], [2, 3], "NaN"),
            (&[0], &[f32::INFINITY, 0.0, 0.0], [1, 3], "`vectors`"),
            (&[0], &[0.0, 65505.0, 0.0], [1, 3], "float16 range"),
            (&[1 << 41], &[0.0; 3], [1, 3], "`rows[0]`"),
            (&[0], &[0.0; 4], [1, 3], "`vectors` holds 4 values"),
        ];
        for (rows, vectors, shape, needle) in cases {
            let t = table(3, 1);
            let err = t.set_rows(rows, vectors, *shape).unwrap_err();
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
            assert_eq!(
                (t.rows(), t.capacity()),
                (0, 1),
                "{needle}: nothing may be written"
            );
        }
    }

    #[test]
    fn get_and_clear_need_rows_that_exist() {
        let t = table(2, 8);
        t.set_rows(&[0, 2], &[1.0, 1.0, 2.0, 2.0], [2, 2]).unwrap();
        for bad in [3i64, -1, 7] {
            let err = t.get_rows(&[0, bad]).unwrap_err();
            assert!(err.to_string().contains(&format!("row {bad}")), "{err}");
            assert!(t.clear_rows(&[bad]).is_err());
        }
        t.clear_rows(&[2]).unwrap();
        assert_eq!(t.get_rows(&[0, 2]).unwrap(), vec![1.0, 1.0, 0.0, 0.0]);
        assert_eq!(t.rows(), 3, "clearing does not shrink");
        assert!(t.get_rows(&[]).unwrap().is_empty());
    }

    #[test]
    fn score_table() {
        let t = table(2, 4);
        t.set_rows(&[0, 1, 2], &[1.0, 0.0, 0.0, 1.0, 0.5, 0.5], [3, 2])
            .unwrap();
        let cases: &[(&str, &[f32], &[i64], [usize; 2], &[f32])] = &[
            ("basic", &[2.0, 3.0], &[0, 1, 2], [1, 3], &[2.0, 3.0, 2.5]),
            (
                "padding and unset rows",
                &[1.0, 1.0],
                &[-1, 3, 100, 2],
                [1, 4],
                &[NEG, NEG, NEG, 1.0],
            ),
            (
                "two queries",
                &[1.0, 0.0, 0.0, 1.0],
                &[1, 0, 1, 0],
                [2, 2],
                &[0.0, 1.0, 1.0, 0.0],
            ),
            ("no candidates", &[1.0, 1.0], &[], [1, 0], &[]),
            ("no queries", &[], &[], [0, 5], &[]),
        ];
        for (name, queries, rows, rows_shape, want) in cases {
            let got = t
                .score(queries, [rows_shape[0], 2], rows, *rows_shape)
                .unwrap();
            assert_eq!(got, *want, "{name}");
        }
    }

    #[test]
    fn score_rejects_mismatched_shapes() {
        let t = table(4, 4);
        let cases: &[([usize; 2], usize, [usize; 2], usize, &str)] = &[
            ([1, 3], 3, [1, 2], 2, "`queries` has dimension 3"),
            ([2, 4], 8, [1, 2], 2, "`rows` has 1 rows of candidates"),
            ([1, 4], 5, [1, 2], 2, "`queries` holds 5"),
            ([1, 4], 4, [1, 2], 3, "`rows` holds 3"),
        ];
        for (qs, qn, rs, rn, needle) in cases {
            let err = t
                .score(&vec![0.0; *qn], *qs, &vec![0; *rn], *rs)
                .unwrap_err();
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }

    /// Tiny deterministic generator so the test needs no extra crate.
    fn uniform(state: &mut u64) -> f32 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn every_parallel_layout_matches_a_plain_loop() {
        let mut state = 5u64;
        let (n_rows, dim) = (3000, 64);
        let t = table(dim, 16);
        let vectors: Vec<f32> = (0..n_rows * dim).map(|_| uniform(&mut state)).collect();
        let ids: Vec<i64> = (0..n_rows as i64).collect();
        t.set_rows(&ids, &vectors, [n_rows, dim]).unwrap();
        let stored = t.get_rows(&ids).unwrap();
        // Serial (small), one task per query (many queries), and candidates split (few queries).
        for (batch, candidates) in [(2, 10), (64, 300), (1, 5000), (3, 2000)] {
            let queries: Vec<f32> = (0..batch * dim).map(|_| uniform(&mut state)).collect();
            let rows: Vec<i64> = (0..batch * candidates)
                .map(|i| {
                    if i % 17 == 0 {
                        -1
                    } else {
                        (uniform(&mut state).abs() * n_rows as f32) as i64
                    }
                })
                .collect();
            let got = t
                .score(&queries, [batch, dim], &rows, [batch, candidates])
                .unwrap();
            for (i, (&g, &r)) in got.iter().zip(&rows).enumerate() {
                let q = &queries[(i / candidates) * dim..][..dim];
                if r < 0 {
                    assert_eq!(g, NEG);
                } else {
                    let v = &stored[r as usize * dim..][..dim];
                    let want: f32 = q.iter().zip(v).map(|(a, b)| a * b).sum();
                    assert!(
                        (g - want).abs() < 1e-4,
                        "({batch},{candidates}) cand {i}: {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn scoring_runs_alongside_writes() {
        let dim = 16;
        let t = table(dim, 1);
        t.set_rows(&[0], &[1.0; 16], [1, dim]).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 1..2000i64 {
                    // Every row holds i-independent ones, so scores never depend on timing.
                    t.set_rows(&[i], &[1.0; 16], [1, dim]).unwrap();
                }
            });
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let rows: Vec<i64> = (0..1000).collect();
                        // Rows only grow, so every row set before the call must score.
                        let set_before = t.rows();
                        let out = t.score(&[0.5; 16], [1, dim], &rows, [1, 1000]).unwrap();
                        for (r, v) in out.iter().enumerate() {
                            if r < set_before {
                                assert_eq!(*v, 8.0, "row {r}");
                            } else {
                                assert!(*v == 8.0 || *v == NEG, "row {r}: {v}");
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(t.rows(), 2000);
        assert!(t.capacity() >= 2000);
    }
}
