//! The Python module `server._core`: the only place that knows about Python and NumPy.
//!
//! Arrays come in as NumPy arrays read in place (C-contiguous, exact dtype, else `ValueError`
//! naming the argument; nothing is converted silently), the work runs with the GIL released, and
//! results go out as NumPy arrays that take over the Rust buffers without copying. Every
//! `CoreError` becomes a `ValueError` here and nowhere else.

use numpy::ndarray::{Array2, Dimension};
use numpy::{
    Element, IntoPyArray, Ix1, Ix2, Ix3, PyArray, PyArray1, PyArray2, PyArrayDescrMethods,
    PyArrayMethods, PyReadonlyArray, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::candidates::{self, Items, Proposals};
use crate::error::CoreError;
use crate::f16_table::F16Table;
use crate::hashing::{self, NO_ITEM};
use crate::ring::{self, HashRing};

impl From<CoreError> for PyErr {
    fn from(err: CoreError) -> PyErr {
        PyValueError::new_err(err.to_string())
    }
}

fn invalid(msg: String) -> PyErr {
    CoreError::InvalidArgument(msg).into()
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

/// Borrows `obj` as a NumPy array of `T` with `D`'s number of dimensions, read in place.
/// `shape` only words the error message, e.g. "(B, dim)".
fn array_arg<'py, T: Element, D: Dimension>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    shape: &str,
) -> PyResult<PyReadonlyArray<'py, T, D>> {
    // Worded only on failure: str(dtype) and the formatting cost more than the checks themselves,
    // and a call with eight small arrays should cost a few microseconds.
    let want = || T::get_dtype(obj.py()).to_string();
    let fix = || format!("pass np.ascontiguousarray({name}, dtype=np.{})", want());
    let Ok(untyped) = obj.cast::<PyUntypedArray>() else {
        return Err(invalid(format!(
            "`{name}` must be a numpy.ndarray of {} with shape {shape}, got {}; {}",
            want(),
            type_name(obj),
            fix()
        )));
    };
    let dtype = untyped.dtype();
    if !dtype.is_equiv_to(&T::get_dtype(obj.py())) {
        return Err(invalid(format!(
            "`{name}` has dtype {dtype} but {} is required; {}",
            want(),
            fix()
        )));
    }
    let ndim = D::NDIM.expect("fixed-dimension arrays only");
    if untyped.ndim() != ndim {
        return Err(invalid(format!(
            "`{name}` has shape {:?} but a {ndim}-d array of shape {shape} is required",
            untyped.shape()
        )));
    }
    if !untyped.is_c_contiguous() || !untyped.is_aligned() {
        return Err(invalid(format!(
            "`{name}` is not a C-contiguous, aligned array (a transposed or strided view?); {}",
            fix()
        )));
    }
    let typed = obj.cast::<PyArray<T, D>>().map_err(|_| {
        invalid(format!(
            "`{name}` is not a {ndim}-d {} array; {}",
            want(),
            fix()
        ))
    })?;
    typed.try_readonly().map_err(|_| {
        invalid(format!(
            "`{name}` is being written by another call; pass a copy"
        ))
    })
}

/// The array's values as one slice (it was checked C-contiguous and aligned).
fn values<'a, T: Element, D: Dimension>(array: &'a PyReadonlyArray<'_, T, D>) -> &'a [T] {
    array.as_slice().expect("checked C-contiguous and aligned")
}

fn shape2<T: Element>(array: &PyReadonlyArray<'_, T, Ix2>) -> [usize; 2] {
    let s = array.shape();
    [s[0], s[1]]
}

/// The items of a sequence of str, kept alive so their UTF-8 can be read without copying.
fn str_items<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Vec<Bound<'py, PyString>>> {
    if obj.is_instance_of::<PyString>() {
        return Err(invalid(format!(
            "`{name}` must be a sequence of str, not a single str; wrap it in a list"
        )));
    }
    let iter = obj.try_iter().map_err(|_| {
        invalid(format!(
            "`{name}` must be a sequence of str, got {}",
            type_name(obj)
        ))
    })?;
    let mut items = Vec::with_capacity(obj.len().unwrap_or(0));
    for (i, item) in iter.enumerate() {
        let item = item?;
        let item = item.cast_into::<PyString>().map_err(|e| {
            invalid(format!(
                "`{name}[{i}]` is {}, not str",
                type_name(e.into_inner().as_any())
            ))
        })?;
        items.push(item);
    }
    Ok(items)
}

fn as_strs<'a>(items: &'a [Bound<'_, PyString>]) -> PyResult<Vec<&'a str>> {
    items.iter().map(|s| s.to_str()).collect()
}

fn positive(name: &str, value: i64) -> PyResult<usize> {
    if value >= 1 {
        usize::try_from(value).map_err(|_| invalid(format!("`{name}` is too large")))
    } else {
        Err(invalid(format!("`{name}` must be >= 1, got {value}")))
    }
}

/// Which items (labels or indices) and their scores, both (rows, k).
type Ranked<'py, T> = (Bound<'py, PyArray2<T>>, Bound<'py, PyArray2<f32>>);

fn matrix<T: Element>(
    py: Python<'_>,
    values: Vec<T>,
    rows: usize,
    cols: usize,
) -> Bound<'_, PyArray2<T>> {
    Array2::from_shape_vec((rows, cols), values)
        .expect("the core returns rows x cols values")
        .into_pyarray(py)
}

/// xxh3_64 (seed 0) of each id's UTF-8 bytes: the item label used everywhere.
#[pyfunction]
fn stable_hash64<'py>(
    py: Python<'py>,
    ids: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray1<u64>>> {
    let items = str_items(ids, "ids")?;
    let ids = as_strs(&items)?;
    Ok(py
        .detach(|| hashing::stable_hash64_batch(&ids))
        .into_pyarray(py))
}

const _: () = assert!(
    ring::DEFAULT_VNODES == 1024,
    "update HashRing's signature default"
);

/// Consistent-hash ring with virtual nodes.
#[pyclass(frozen, name = "HashRing", module = "server._core")]
struct PyHashRing {
    ring: HashRing,
}

#[pymethods]
impl PyHashRing {
    // A literal default so that Python's signature shows it; pinned to the constant below.
    #[new]
    #[pyo3(signature = (members, vnodes = 1024))]
    fn new(members: &Bound<'_, PyAny>, vnodes: i64) -> PyResult<Self> {
        let members = as_strs(&str_items(members, "members")?)?
            .into_iter()
            .map(str::to_owned)
            .collect();
        let vnodes = u32::try_from(positive("vnodes", vnodes)?)
            .map_err(|_| invalid(format!("`vnodes` {vnodes} is too large")))?;
        Ok(Self {
            ring: HashRing::new(members, vnodes)?,
        })
    }

    #[getter]
    fn members(&self) -> Vec<String> {
        self.ring.members().to_vec()
    }

    #[getter]
    fn vnodes(&self) -> u32 {
        self.ring.vnodes()
    }

    fn __len__(&self) -> usize {
        self.ring.members().len()
    }

    fn __repr__(&self) -> String {
        format!(
            "HashRing(members={:?}, vnodes={})",
            self.ring.members(),
            self.ring.vnodes()
        )
    }

    fn owner<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let items = str_items(keys, "keys")?;
        let keys = as_strs(&items)?;
        Ok(py.detach(|| self.ring.owner(&keys)).into_pyarray(py))
    }

    fn owners<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        replicas: i64,
    ) -> PyResult<Bound<'py, PyArray2<u32>>> {
        let replicas = positive("replicas", replicas)?;
        let items = str_items(keys, "keys")?;
        let keys = as_strs(&items)?;
        let owners = py.detach(|| self.ring.owners(&keys, replicas))?;
        Ok(matrix(py, owners, keys.len(), replicas))
    }

    fn plan<'py>(
        &self,
        py: Python<'py>,
        other: &Bound<'py, PyAny>,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<i64>>> {
        let other = other
            .cast::<PyHashRing>()
            .map_err(|_| {
                invalid(format!(
                    "`other` must be a HashRing, got {}",
                    type_name(other)
                ))
            })?
            .get();
        let items = str_items(keys, "keys")?;
        let keys = as_strs(&items)?;
        let moves = py.detach(|| self.ring.plan(&other.ring, &keys));
        let n = moves.len();
        Ok(matrix(py, moves.into_flattened(), n, 3))
    }
}

/// Per query, the top `k` distinct labels across S lists sorted by descending score.
#[pyfunction]
fn merge_topk<'py>(
    py: Python<'py>,
    labels: &Bound<'py, PyAny>,
    scores: &Bound<'py, PyAny>,
    k: i64,
) -> PyResult<Ranked<'py, u64>> {
    let k = positive("k", k)?;
    let labels = array_arg::<u64, Ix3>(labels, "labels", "(Q, S, L)")?;
    let scores = array_arg::<f32, Ix3>(scores, "scores", "(Q, S, L)")?;
    if labels.shape() != scores.shape() {
        return Err(CoreError::ShapeMismatch(format!(
            "`labels` has shape {:?} but `scores` has shape {:?}; they must match",
            labels.shape(),
            scores.shape()
        ))
        .into());
    }
    let s = labels.shape();
    let shape = [s[0], s[1], s[2]];
    let (l, v) = (values(&labels), values(&scores));
    let (out_labels, out_scores) = py.detach(|| crate::merge::merge_topk(l, v, shape, k))?;
    Ok((
        matrix(py, out_labels, shape[0], k),
        matrix(py, out_scores, shape[0], k),
    ))
}

/// Row-wise top-k of a score matrix.
#[pyfunction]
fn topk_rows<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    k: i64,
) -> PyResult<Ranked<'py, i64>> {
    let k = positive("k", k)?;
    let scores = array_arg::<f32, Ix2>(scores, "scores", "(B, C)")?;
    let shape = shape2(&scores);
    let s = values(&scores);
    let (idx, val) = py.detach(|| crate::topk::topk_rows(s, shape, k))?;
    Ok((matrix(py, idx, shape[0], k), matrix(py, val, shape[0], k)))
}

/// Surviving labels and scores, each (Q, k), and how many survived per query (Q,).
type KeptHits<'py> = (
    Bound<'py, PyArray2<u64>>,
    Bound<'py, PyArray2<f32>>,
    Bound<'py, PyArray1<i64>>,
);

/// Per query, the first `k` hits whose label is neither padding nor in the query's exclusions.
#[pyfunction]
fn exclude_hits<'py>(
    py: Python<'py>,
    labels: &Bound<'py, PyAny>,
    scores: &Bound<'py, PyAny>,
    excluded: &Bound<'py, PyAny>,
    offsets: &Bound<'py, PyAny>,
    k: i64,
) -> PyResult<KeptHits<'py>> {
    let k = positive("k", k)?;
    let labels = array_arg::<u64, Ix2>(labels, "labels", "(Q, L)")?;
    let scores = array_arg::<f32, Ix2>(scores, "scores", "(Q, L)")?;
    let excluded = array_arg::<u64, Ix1>(excluded, "excluded", "(M,)")?;
    let offsets = array_arg::<i64, Ix1>(offsets, "offsets", "(Q + 1,)")?;
    let shape = shape2(&labels);
    if scores.shape() != labels.shape() {
        return Err(CoreError::ShapeMismatch(format!(
            "`labels` has shape {:?} but `scores` has shape {:?}; they must match",
            labels.shape(),
            scores.shape()
        ))
        .into());
    }
    let (l, s, e, o) = (
        values(&labels),
        values(&scores),
        values(&excluded),
        values(&offsets),
    );
    let (out_labels, out_scores, kept) =
        py.detach(|| crate::exclude::exclude_hits(l, s, shape, e, o, k))?;
    Ok((
        matrix(py, out_labels, shape[0], k),
        matrix(py, out_scores, shape[0], k),
        kept.into_pyarray(py),
    ))
}

/// Each member's candidates as CSR: rows, bits, graph scores, offsets.
type CandidateArrays<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<u8>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<i64>>,
);

/// The deduplicated, filtered candidate set of each request of a batch.
#[pyfunction]
#[allow(clippy::too_many_arguments)] // the Python signature: one argument per array
fn merge_candidates<'py>(
    py: Python<'py>,
    rows: &Bound<'py, PyAny>,
    bits: &Bound<'py, PyAny>,
    graph: &Bound<'py, PyAny>,
    offsets: &Bound<'py, PyAny>,
    item_labels: &Bound<'py, PyAny>,
    alive: &Bound<'py, PyAny>,
    excluded: &Bound<'py, PyAny>,
    excluded_offsets: &Bound<'py, PyAny>,
) -> PyResult<CandidateArrays<'py>> {
    let rows = array_arg::<i64, Ix1>(rows, "rows", "(N,)")?;
    let bits = array_arg::<u8, Ix1>(bits, "bits", "(N,)")?;
    let graph = array_arg::<f32, Ix1>(graph, "graph", "(N,)")?;
    let offsets = array_arg::<i64, Ix1>(offsets, "offsets", "(B + 1,)")?;
    let item_labels = array_arg::<u64, Ix1>(item_labels, "item_labels", "(R,)")?;
    let alive = array_arg::<bool, Ix1>(alive, "alive", "(R,)")?;
    let excluded = array_arg::<u64, Ix1>(excluded, "excluded", "(M,)")?;
    let excluded_offsets = array_arg::<i64, Ix1>(excluded_offsets, "excluded_offsets", "(B + 1,)")?;
    let proposals = Proposals {
        rows: values(&rows),
        bits: values(&bits),
        graph: values(&graph),
        offsets: values(&offsets),
    };
    let items = Items {
        labels: values(&item_labels),
        alive: values(&alive),
    };
    let (e, eo) = (values(&excluded), values(&excluded_offsets));
    let out = py.detach(|| candidates::merge_candidates(proposals, items, e, eo))?;
    Ok((
        out.rows.into_pyarray(py),
        out.bits.into_pyarray(py),
        out.graph.into_pyarray(py),
        out.offsets.into_pyarray(py),
    ))
}

/// Maximal Marginal Relevance selection.
#[pyfunction]
fn mmr<'py>(
    py: Python<'py>,
    relevance: &Bound<'py, PyAny>,
    vectors: &Bound<'py, PyAny>,
    k: i64,
    diversity: f64,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let k = positive("k", k)?;
    let relevance = array_arg::<f32, Ix1>(relevance, "relevance", "(n,)")?;
    let vectors = array_arg::<f32, Ix2>(vectors, "vectors", "(n, d)")?;
    let [n, dim] = shape2(&vectors);
    if relevance.len() != n {
        return Err(CoreError::ShapeMismatch(format!(
            "`relevance` has {} values but `vectors` has {n} rows; pass one relevance per vector",
            relevance.len()
        ))
        .into());
    }
    let (r, v) = (values(&relevance), values(&vectors));
    Ok(py
        .detach(|| crate::mmr::mmr(r, v, dim, k, diversity))?
        .into_pyarray(py))
}

/// Embedding rows stored as float16, scored against float32 queries.
#[pyclass(frozen, name = "F16Table", module = "server._core")]
struct PyF16Table {
    table: F16Table,
}

#[pymethods]
impl PyF16Table {
    #[new]
    #[pyo3(signature = (dim, capacity = 1024))]
    fn new(dim: i64, capacity: i64) -> PyResult<Self> {
        let dim = positive("dim", dim)?;
        let capacity = usize::try_from(capacity)
            .map_err(|_| invalid(format!("`capacity` must be >= 0, got {capacity}")))?;
        Ok(Self {
            table: F16Table::new(dim, capacity)?,
        })
    }

    #[getter]
    fn dim(&self) -> usize {
        self.table.dim()
    }

    // Named apart from the `get_rows` method: PyO3 names a getter's wrapper get_<rust name>.
    #[getter(rows)]
    fn row_count(&self) -> usize {
        self.table.rows()
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.table.capacity()
    }

    #[getter]
    fn nbytes(&self) -> usize {
        self.table.nbytes()
    }

    fn __repr__(&self) -> String {
        format!(
            "F16Table(dim={}, rows={}, capacity={})",
            self.table.dim(),
            self.table.rows(),
            self.table.capacity()
        )
    }

    fn set_rows(
        &self,
        py: Python<'_>,
        rows: &Bound<'_, PyAny>,
        vectors: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let rows = array_arg::<i64, Ix1>(rows, "rows", "(n,)")?;
        let vectors = array_arg::<f32, Ix2>(vectors, "vectors", "(n, dim)")?;
        let shape = shape2(&vectors);
        let (r, v) = (values(&rows), values(&vectors));
        Ok(py.detach(|| self.table.set_rows(r, v, shape))?)
    }

    fn get_rows<'py>(
        &self,
        py: Python<'py>,
        rows: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let rows = array_arg::<i64, Ix1>(rows, "rows", "(n,)")?;
        let r = values(&rows);
        let out = py.detach(|| self.table.get_rows(r))?;
        Ok(matrix(py, out, r.len(), self.table.dim()))
    }

    fn clear_rows(&self, py: Python<'_>, rows: &Bound<'_, PyAny>) -> PyResult<()> {
        let rows = array_arg::<i64, Ix1>(rows, "rows", "(n,)")?;
        let r = values(&rows);
        Ok(py.detach(|| self.table.clear_rows(r))?)
    }

    fn score<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        rows: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let queries = array_arg::<f32, Ix2>(queries, "queries", "(B, dim)")?;
        let rows = array_arg::<i64, Ix2>(rows, "rows", "(B, C)")?;
        let (qs, rs) = (shape2(&queries), shape2(&rows));
        let (q, r) = (values(&queries), values(&rows));
        let out = py.detach(|| self.table.score(q, qs, r, rs))?;
        Ok(matrix(py, out, rs[0], rs[1]))
    }
}

#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("NO_ITEM", NO_ITEM)?;
    m.add("DEFAULT_VNODES", ring::DEFAULT_VNODES)?;
    m.add_function(wrap_pyfunction!(stable_hash64, m)?)?;
    m.add_function(wrap_pyfunction!(merge_topk, m)?)?;
    m.add_function(wrap_pyfunction!(topk_rows, m)?)?;
    m.add_function(wrap_pyfunction!(mmr, m)?)?;
    m.add_function(wrap_pyfunction!(exclude_hits, m)?)?;
    m.add_function(wrap_pyfunction!(merge_candidates, m)?)?;
    m.add_class::<PyHashRing>()?;
    m.add_class::<PyF16Table>()?;
    Ok(())
}
