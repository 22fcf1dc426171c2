//! recd's compute core: pure functions over flat row-major slices, no I/O, no Python.
//! `bindings` (feature `python`) is the only place that knows about Python and NumPy.

pub mod candidates;
mod csr;
pub mod error;
pub mod exclude;
pub mod f16_table;
pub mod hashing;
pub mod merge;
pub mod mmr;
pub mod ring;
pub mod topk;

#[cfg(feature = "python")]
mod bindings;

pub use error::{CoreError, CoreResult};
