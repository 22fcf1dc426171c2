//! Compressed sparse rows: one flat values array split into consecutive parts by an offsets array
//! (part `i` is `values[offsets[i]..offsets[i + 1]]`), and membership in a part that is sorted.

use std::ops::Range;

use crate::error::{CoreError, CoreResult};

/// Checks that `offsets` splits a values array of `len` entries into `parts` parts: `parts + 1`
/// offsets, non-decreasing, each within `0..=len`. O(parts). Afterwards `span` is safe to call.
/// `values` names the values array in messages.
pub(crate) fn check_offsets(
    argument: &str,
    offsets: &[i64],
    parts: usize,
    values: &str,
    len: usize,
) -> CoreResult<()> {
    if offsets.len() != parts + 1 {
        return Err(CoreError::ShapeMismatch(format!(
            "`{argument}` has {} values but {parts} parts need {}; pass offsets of shape \
             (parts + 1,), part i being `{values}`[offsets[i]:offsets[i + 1]]",
            offsets.len(),
            parts + 1
        )));
    }
    let mut previous = 0i64;
    for (i, &offset) in offsets.iter().enumerate() {
        if offset < 0 || offset as u64 > len as u64 {
            return Err(CoreError::InvalidArgument(format!(
                "`{argument}[{i}]` is {offset}, outside 0..={len} (the length of `{values}`)"
            )));
        }
        if offset < previous {
            return Err(CoreError::InvalidArgument(format!(
                "`{argument}` must be non-decreasing but `{argument}[{i}]` = {offset} follows {previous}"
            )));
        }
        previous = offset;
    }
    Ok(())
}

/// The range of part `i`; `offsets` was checked by `check_offsets`.
#[inline]
pub(crate) fn span(offsets: &[i64], i: usize) -> Range<usize> {
    offsets[i] as usize..offsets[i + 1] as usize
}

/// Whether `label` is in `sorted` (ascending). A binary search, or a scan while the part is short
/// enough for a scan to be cheaper; either way a part that is not sorted may give wrong answers but
/// never reads outside it.
#[inline]
pub(crate) fn contains_sorted(sorted: &[u64], label: u64) -> bool {
    if sorted.len() <= 8 {
        sorted.contains(&label)
    } else {
        sorted.binary_search(&label).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_offsets() {
        let cases: &[(&[i64], usize, usize)] = &[
            (&[0], 0, 0),
            (&[0, 0, 0], 2, 0),
            (&[0, 2, 5], 2, 5),
            (&[1, 2, 2], 2, 5), // need not start at 0 nor end at len
        ];
        for &(offsets, parts, len) in cases {
            assert!(
                check_offsets("offsets", offsets, parts, "values", len).is_ok(),
                "{offsets:?}"
            );
        }
        assert_eq!(span(&[0, 2, 5], 1), 2..5);
    }

    #[test]
    fn invalid_offsets_name_the_argument() {
        let cases: &[(&[i64], usize, usize, &str)] = &[
            (&[0, 1], 2, 5, "`offs` has 2 values but 2 parts need 3"),
            (&[], 0, 5, "`offs` has 0 values"),
            (&[0, -1, 2], 2, 5, "`offs[1]` is -1, outside 0..=5"),
            (
                &[0, 6],
                1,
                5,
                "`offs[1]` is 6, outside 0..=5 (the length of `vals`)",
            ),
            (&[0, 3, 2], 2, 5, "`offs[2]` = 2 follows 3"),
        ];
        for &(offsets, parts, len, needle) in cases {
            let err = check_offsets("offs", offsets, parts, "vals", len).unwrap_err();
            assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
        }
    }

    #[test]
    fn contains_sorted_short_and_long() {
        for n in [0u64, 1, 8, 9, 100] {
            let sorted: Vec<u64> = (0..n).map(|i| 3 * i + 1).collect();
            for probe in 0..3 * n + 3 {
                assert_eq!(
                    contains_sorted(&sorted, probe),
                    probe % 3 == 1 && probe < 3 * n,
                    "n {n} probe {probe}"
                );
            }
        }
    }
}
