//! The candidate set of each request of a batch: the rows several candidate sources proposed,
//! deduplicated, with dead, unknown and excluded (seen) items dropped.

use rayon::prelude::*;

use crate::csr::{check_offsets, contains_sorted, span};
use crate::error::{CoreError, CoreResult};

/// At or below this many proposals in the whole batch the members are merged on the calling
/// thread: a small batch should cost microseconds, not a trip through the thread pool.
const PARALLEL_MIN_PROPOSALS: usize = 50_000;

/// What the sources proposed for a batch of B members, as CSR: member b's proposals are
/// `rows[offsets[b]..offsets[b + 1]]` (item rows), with for each the bit of the source that
/// proposed it and its graph score (0 for sources that are not the graph).
#[derive(Clone, Copy, Debug)]
pub struct Proposals<'a> {
    pub rows: &'a [i64],
    pub bits: &'a [u8],
    pub graph: &'a [f32],
    pub offsets: &'a [i64],
}

/// What is known of every item row of the catalogue: its label and whether it is alive.
#[derive(Clone, Copy, Debug)]
pub struct Items<'a> {
    pub labels: &'a [u64],
    pub alive: &'a [bool],
}

/// Each member's unique surviving rows, ascending, as CSR (`offsets` has B + 1 entries, from 0);
/// `bits` is the OR of the bits of every source that proposed the row, `graph` the largest of its
/// graph scores.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Candidates {
    pub rows: Vec<i64>,
    pub bits: Vec<u8>,
    pub graph: Vec<f32>,
    pub offsets: Vec<i64>,
}

/// One member's unique surviving (row, bits, graph), ascending by row, left in `out`.
fn merge_member(
    proposals: &Proposals<'_>,
    member: usize,
    items: &Items<'_>,
    excluded: &[u64],
    out: &mut Vec<(i64, u8, f32)>,
) {
    let range = span(proposals.offsets, member);
    let known = items.labels.len() as u64;
    out.clear();
    out.extend(
        proposals.rows[range.clone()]
            .iter()
            .zip(&proposals.bits[range.clone()])
            .zip(&proposals.graph[range])
            // Negative rows are huge as u64, so one comparison drops them too.
            .filter(|((row, _), _)| (**row as u64) < known)
            .map(|((&row, &bits), &graph)| (row, bits, graph)),
    );
    out.sort_unstable_by_key(|e| e.0);
    // Fold duplicates into their first copy: OR the bits, keep the best graph score (f32::max
    // ignores a NaN, so the result does not depend on the order the copies came in).
    let mut unique = 0;
    for i in 0..out.len() {
        let entry = out[i];
        if unique > 0 && out[unique - 1].0 == entry.0 {
            let first = &mut out[unique - 1];
            first.1 |= entry.1;
            first.2 = first.2.max(entry.2);
        } else {
            out[unique] = entry;
            unique += 1;
        }
    }
    out.truncate(unique);
    // Once per unique row: the alive test and the label lookup + binary search are the expensive
    // part (random reads into catalogue-sized arrays), so the label is read only when needed.
    out.retain(|&(row, _, _)| {
        let row = row as usize;
        items.alive[row] && (excluded.is_empty() || !contains_sorted(excluded, items.labels[row]))
    });
}

fn append(out: &mut Candidates, member: &[(i64, u8, f32)]) {
    out.rows.extend(member.iter().map(|e| e.0));
    out.bits.extend(member.iter().map(|e| e.1));
    out.graph.extend(member.iter().map(|e| e.2));
    out.offsets.push(out.rows.len() as i64);
}

/// The candidate set of each of the B members of a batch (see `Proposals`).
///
/// For each member: rows that are negative or not below `items.labels.len()` (R) are dropped,
/// then rows whose `items.alive[row]` is false and rows whose label `items.labels[row]` is in the
/// member's sorted exclusion part `excluded[excluded_offsets[b]..excluded_offsets[b + 1]]` (sorted
/// ascending is required and not checked, like `exclude_hits`; an empty part excludes nothing);
/// the rest is deduplicated by row and returned in ascending row order. B is
/// `proposals.offsets.len() - 1`; both offsets arrays have B + 1 entries, non-decreasing, within
/// the length of the array they split.
pub fn merge_candidates(
    proposals: Proposals<'_>,
    items: Items<'_>,
    excluded: &[u64],
    excluded_offsets: &[i64],
) -> CoreResult<Candidates> {
    let n = proposals.rows.len();
    for (name, len) in [
        ("bits", proposals.bits.len()),
        ("graph", proposals.graph.len()),
    ] {
        if len != n {
            return Err(CoreError::ShapeMismatch(format!(
                "`{name}` has {len} values but `rows` has {n}; pass one per proposal"
            )));
        }
    }
    if items.alive.len() != items.labels.len() {
        return Err(CoreError::ShapeMismatch(format!(
            "`alive` has {} values but `item_labels` has {}; pass one per item row",
            items.alive.len(),
            items.labels.len()
        )));
    }
    let Some(members) = proposals.offsets.len().checked_sub(1) else {
        return Err(CoreError::ShapeMismatch(
            "`offsets` is empty but needs B + 1 values for B members (0 for an empty batch)".into(),
        ));
    };
    check_offsets("offsets", proposals.offsets, members, "rows", n)?;
    check_offsets(
        "excluded_offsets",
        excluded_offsets,
        members,
        "excluded",
        excluded.len(),
    )?;

    let member_excluded = |b: usize| &excluded[span(excluded_offsets, b)];
    let mut out = Candidates {
        offsets: Vec::with_capacity(members + 1),
        ..Candidates::default()
    };
    out.offsets.push(0);
    let proposed = (proposals.offsets[members] - proposals.offsets[0]) as usize;
    if members < 2 || proposed <= PARALLEL_MIN_PROPOSALS {
        // Room for every proposal: duplicates and drops only make it shorter.
        out.rows.reserve(proposed);
        out.bits.reserve(proposed);
        out.graph.reserve(proposed);
        let mut scratch = Vec::new();
        for b in 0..members {
            merge_member(&proposals, b, &items, member_excluded(b), &mut scratch);
            append(&mut out, &scratch);
        }
    } else {
        let merged: Vec<Vec<(i64, u8, f32)>> = (0..members)
            .into_par_iter()
            .map(|b| {
                let mut member = Vec::new();
                merge_member(&proposals, b, &items, member_excluded(b), &mut member);
                member
            })
            .collect();
        let total = merged.iter().map(Vec::len).sum();
        out.rows.reserve_exact(total);
        out.bits.reserve_exact(total);
        out.graph.reserve_exact(total);
        for member in &merged {
            append(&mut out, member);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;

    /// The catalogue of the table tests: rows 0..8, label of row r is 100 + r, row 6 is dead.
    const LABELS: [u64; 8] = [100, 101, 102, 103, 104, 105, 106, 107];
    const ALIVE: [bool; 8] = [true, true, true, true, true, true, false, true];

    /// One member: proposals (row, bits, graph) and its exclusions, on the table's catalogue.
    fn run_one(proposed: &[(i64, u8, f32)], excluded: &[u64]) -> Vec<(i64, u8, f32)> {
        let rows: Vec<i64> = proposed.iter().map(|e| e.0).collect();
        let bits: Vec<u8> = proposed.iter().map(|e| e.1).collect();
        let graph: Vec<f32> = proposed.iter().map(|e| e.2).collect();
        let offsets = [0, rows.len() as i64];
        let got = merge_candidates(
            Proposals {
                rows: &rows,
                bits: &bits,
                graph: &graph,
                offsets: &offsets,
            },
            Items {
                labels: &LABELS,
                alive: &ALIVE,
            },
            excluded,
            &[0, excluded.len() as i64],
        )
        .unwrap();
        assert_eq!(got.offsets, [0, got.rows.len() as i64]);
        (0..got.rows.len())
            .map(|i| (got.rows[i], got.bits[i], got.graph[i]))
            .collect()
    }

    #[test]
    #[allow(clippy::type_complexity)] // a table of tuples of slices
    fn table() {
        let cases: &[(&str, &[(i64, u8, f32)], &[u64], &[(i64, u8, f32)])] = &[
            ("empty", &[], &[], &[]),
            (
                "ascending row order",
                &[(5, 1, 0.0), (2, 1, 0.0), (3, 2, 0.0)],
                &[],
                &[(2, 1, 0.0), (3, 2, 0.0), (5, 1, 0.0)],
            ),
            (
                "duplicates OR their bits and keep the best graph score",
                &[
                    (4, 1, 0.0),
                    (4, 4, 0.7),
                    (1, 2, 0.2),
                    (4, 2, 0.5),
                    (1, 2, 0.1),
                ],
                &[],
                &[(1, 2, 0.2), (4, 7, 0.7)],
            ),
            (
                "rows outside the catalogue are dropped",
                &[(-1, 1, 0.0), (8, 1, 0.0), (i64::MIN, 1, 0.0), (7, 1, 0.0)],
                &[],
                &[(7, 1, 0.0)],
            ),
            (
                "dead rows are dropped",
                &[(6, 1, 0.9), (0, 1, 0.0)],
                &[],
                &[(0, 1, 0.0)],
            ),
            (
                "excluded labels are dropped, with all their copies",
                &[(3, 1, 0.0), (2, 1, 0.0), (3, 2, 0.4), (0, 1, 0.0)],
                &[100, 103, 999],
                &[(2, 1, 0.0)],
            ),
            (
                "a long exclusion list",
                &[(0, 1, 0.0), (1, 1, 0.0), (2, 1, 0.0), (5, 1, 0.0)],
                &[1, 2, 3, 4, 5, 6, 7, 8, 9, 101, 105, 200],
                &[(0, 1, 0.0), (2, 1, 0.0)],
            ),
            (
                "NaN graph scores lose to numbers",
                &[(1, 4, f32::NAN), (1, 4, 0.3)],
                &[],
                &[(1, 4, 0.3)],
            ),
        ];
        for (name, proposed, excluded, want) in cases {
            let got = run_one(proposed, excluded);
            assert_eq!(&got, want, "{name}");
        }
    }

    #[test]
    fn members_are_independent() {
        // Member 0 proposes 1, 2, 2; member 1 nothing; member 2 proposes 2, 1 and excludes 102.
        let got = merge_candidates(
            Proposals {
                rows: &[1, 2, 2, 2, 1],
                bits: &[1, 1, 2, 4, 4],
                graph: &[0.0, 0.0, 0.5, 0.0, 0.0],
                offsets: &[0, 3, 3, 5],
            },
            Items {
                labels: &LABELS,
                alive: &ALIVE,
            },
            &[102],
            &[0, 0, 0, 1],
        )
        .unwrap();
        assert_eq!(
            got,
            Candidates {
                rows: vec![1, 2, 1],
                bits: vec![1, 3, 4],
                graph: vec![0.0, 0.5, 0.0],
                offsets: vec![0, 2, 2, 3],
            }
        );
    }

    #[test]
    fn an_empty_batch() {
        let empty = Proposals {
            rows: &[],
            bits: &[],
            graph: &[],
            offsets: &[0],
        };
        let items = Items {
            labels: &[],
            alive: &[],
        };
        let got = merge_candidates(empty, items, &[], &[0]).unwrap();
        assert_eq!(got.offsets, [0]);
        assert!(got.rows.is_empty());
    }

    #[test]
    fn errors() {
        let rows = [0i64, 1];
        let good = Proposals {
            rows: &rows,
            bits: &[1, 1],
            graph: &[0.0, 0.0],
            offsets: &[0, 1, 2],
        };
        let items = Items {
            labels: &LABELS,
            alive: &ALIVE,
        };
        let cases: Vec<(Proposals<'_>, Items<'_>, &[i64], &str)> = vec![
            (
                Proposals { bits: &[1], ..good },
                items,
                &[0, 0, 0],
                "`bits` has 1 values but `rows` has 2",
            ),
            (
                Proposals {
                    graph: &[0.0; 3],
                    ..good
                },
                items,
                &[0, 0, 0],
                "`graph` has 3 values",
            ),
            (
                good,
                Items {
                    alive: &[true],
                    ..items
                },
                &[0, 0, 0],
                "`alive` has 1 values but `item_labels` has 8",
            ),
            (
                Proposals {
                    offsets: &[],
                    ..good
                },
                items,
                &[0],
                "`offsets` is empty",
            ),
            (
                Proposals {
                    offsets: &[0, 3, 2],
                    ..good
                },
                items,
                &[0, 0, 0],
                "`offsets[1]` is 3",
            ),
            (good, items, &[0, 0], "`excluded_offsets` has 2 values"),
            (
                good,
                items,
                &[0, 1, 0],
                "`excluded_offsets` must be non-decreasing",
            ),
            (
                good,
                items,
                &[0, 0, 2],
                "`excluded_offsets[2]` is 2, outside 0..=1",
            ),
        ];
        for (proposals, items, excluded_offsets, needle) in cases {
            let err = merge_candidates(proposals, items, &[5], excluded_offsets).unwrap_err();
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
    fn random_batches_match_a_brute_force_merge_serial_and_parallel() {
        let mut rng = 5u64;
        for (members, per_member, catalogue) in [(3, 20, 30), (50, 200, 500), (40, 3_000, 20_000)] {
            let labels: Vec<u64> = (0..catalogue).map(|_| lcg(&mut rng) % 100_000).collect();
            let alive: Vec<bool> = (0..catalogue).map(|_| lcg(&mut rng) % 10 != 0).collect();
            let (mut rows, mut bits, mut graph, mut offsets) = (vec![], vec![], vec![], vec![0i64]);
            let (mut excluded, mut excluded_offsets) = (vec![], vec![0i64]);
            for _ in 0..members {
                for _ in 0..lcg(&mut rng) as usize % (2 * per_member + 1) {
                    // A few rows outside the catalogue; many duplicates.
                    rows.push((lcg(&mut rng) % (catalogue as u64 + 20)) as i64 - 10);
                    bits.push(1u8 << (lcg(&mut rng) % 4));
                    graph.push((lcg(&mut rng) % 100) as f32 / 100.0);
                }
                offsets.push(rows.len() as i64);
                let mut part: Vec<u64> = (0..lcg(&mut rng) % 60)
                    .map(|_| labels[lcg(&mut rng) as usize % catalogue])
                    .collect();
                part.sort_unstable();
                part.dedup();
                excluded.extend(part);
                excluded_offsets.push(excluded.len() as i64);
            }
            let got = merge_candidates(
                Proposals {
                    rows: &rows,
                    bits: &bits,
                    graph: &graph,
                    offsets: &offsets,
                },
                Items {
                    labels: &labels,
                    alive: &alive,
                },
                &excluded,
                &excluded_offsets,
            )
            .unwrap();
            assert_eq!(got.offsets.len(), members + 1);
            for b in 0..members {
                let seen: HashSet<u64> = excluded[span(&excluded_offsets, b)]
                    .iter()
                    .copied()
                    .collect();
                let mut want: BTreeMap<i64, (u8, f32)> = BTreeMap::new();
                for i in span(&offsets, b) {
                    let row = rows[i];
                    if row < 0 || row >= catalogue as i64 {
                        continue;
                    }
                    if !alive[row as usize] || seen.contains(&labels[row as usize]) {
                        continue;
                    }
                    let e = want.entry(row).or_insert((0, f32::NEG_INFINITY));
                    e.0 |= bits[i];
                    e.1 = e.1.max(graph[i]);
                }
                let got_member: Vec<(i64, (u8, f32))> = span(&got.offsets, b)
                    .map(|i| (got.rows[i], (got.bits[i], got.graph[i])))
                    .collect();
                let want: Vec<(i64, (u8, f32))> = want.into_iter().collect();
                assert_eq!(got_member, want, "member {b}");
            }
        }
    }
}
