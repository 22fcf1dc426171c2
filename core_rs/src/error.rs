//! The closed set of errors the core reports. Every one is a caller error (bad input), never a
//! transient condition, so none is worth retrying; the Python binding turns each into `ValueError`.

use std::fmt;

/// What went wrong, with enough detail to name the argument and say how to fix it.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreError {
    /// A vector's length is not the table's (or the call's) dimension.
    DimensionMismatch {
        argument: &'static str,
        expected: usize,
        got: usize,
    },
    /// Array shapes disagree with each other; the message names the arrays and both shapes.
    ShapeMismatch(String),
    /// A NaN or infinity where only finite values make sense.
    NonFinite {
        argument: &'static str,
        index: usize,
    },
    /// A finite value that f16 cannot hold (|v| > 65504).
    OutOfF16Range {
        argument: &'static str,
        index: usize,
        value: f32,
    },
    /// A row index outside the table (negative, or at/after `rows`).
    RowOutOfRange {
        argument: &'static str,
        row: i64,
        rows: usize,
    },
    /// Anything else the caller got wrong; the message is complete on its own.
    InvalidArgument(String),
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::DimensionMismatch {
                argument,
                expected,
                got,
            } => write!(
                f,
                "`{argument}` has dimension {got} but {expected} is expected; \
                 pass vectors of length {expected}"
            ),
            CoreError::ShapeMismatch(msg) | CoreError::InvalidArgument(msg) => f.write_str(msg),
            CoreError::NonFinite { argument, index } => write!(
                f,
                "`{argument}` holds a NaN or infinity at flat index {index}; \
                 only finite values are accepted, clean the input first"
            ),
            CoreError::OutOfF16Range {
                argument,
                index,
                value,
            } => write!(
                f,
                "`{argument}` holds {value} at flat index {index}, outside the float16 range \
                 [-65504, 65504]; rescale (e.g. L2-normalise) the vectors before storing them"
            ),
            CoreError::RowOutOfRange {
                argument,
                row,
                rows,
            } => write!(
                f,
                "`{argument}` holds row {row}, outside the table's rows 0..{rows}; \
                 only rows that were set (0 <= row < rows) can be read or cleared"
            ),
        }
    }
}

impl std::error::Error for CoreError {}

pub type CoreResult<T> = Result<T, CoreError>;

/// Checks that a flat slice holds exactly `shape` elements (row-major), naming the argument.
pub(crate) fn expect_len(argument: &str, len: usize, shape: &[usize]) -> CoreResult<()> {
    let expected: usize = shape.iter().product();
    if len == expected {
        Ok(())
    } else {
        Err(CoreError::ShapeMismatch(format!(
            "`{argument}` holds {len} values but shape {shape:?} needs {expected}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_argument_and_the_fix() {
        let cases: &[(CoreError, &[&str])] = &[
            (
                CoreError::DimensionMismatch {
                    argument: "vectors",
                    expected: 64,
                    got: 32,
                },
                &["`vectors`", "64", "32"],
            ),
            (
                CoreError::NonFinite {
                    argument: "vectors",
                    index: 7,
                },
                &["`vectors`", "NaN", "7"],
            ),
            (
                CoreError::OutOfF16Range {
                    argument: "vectors",
                    index: 3,
                    value: 1e6,
                },
                &["`vectors`", "65504", "normalise"],
            ),
            (
                CoreError::RowOutOfRange {
                    argument: "rows",
                    row: -2,
                    rows: 10,
                },
                &["`rows`", "-2", "0..10"],
            ),
            (
                CoreError::InvalidArgument("`k` must be >= 1".into()),
                &["`k`"],
            ),
        ];
        for (err, needles) in cases {
            let msg = err.to_string();
            for needle in *needles {
                assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
            }
        }
    }

    #[test]
    fn expect_len_checks_the_product_of_the_shape() {
        assert!(expect_len("x", 6, &[2, 3]).is_ok());
        assert!(expect_len("x", 0, &[0, 3]).is_ok());
        let err = expect_len("scores", 5, &[2, 3]).unwrap_err();
        assert!(err.to_string().contains("`scores`"));
    }
}
