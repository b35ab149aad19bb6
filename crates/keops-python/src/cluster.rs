//! The clustering helpers of `keops::cluster` on NumPy arrays (the front ends convert
//! their inputs to C-contiguous arrays of these dtypes first).

use super::{describe, to_py};
use keops::real::Real;
use numpy::ndarray::Array2;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayDyn, PyArrayMethods, PyReadonlyArray1,
    PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use std::ops::Range;

/// A float array `x` of shape `(n, d)`: its values and `d`.
fn points<'py, T: Real + numpy::Element>(
    x: &Bound<'py, PyAny>,
) -> PyResult<Option<(Vec<T>, usize)>> {
    let Ok(a) = x.downcast::<PyArrayDyn<T>>() else {
        return Ok(None);
    };
    if a.ndim() != 2 {
        return Err(PyValueError::new_err(format!(
            "x: expected an (n, d) array of points, got shape {:?}",
            a.shape()
        )));
    }
    let d = a.shape()[1];
    Ok(Some((a.readonly().as_array().iter().copied().collect(), d)))
}

fn not_float(x: &Bound<'_, PyAny>) -> PyErr {
    PyTypeError::new_err(format!(
        "x: expected a float32 or float64 array, got {}",
        describe(x)
    ))
}

fn ranges_array<'py>(py: Python<'py>, r: &[Range<usize>]) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let flat: Vec<i64> = r
        .iter()
        .flat_map(|q| [q.start as i64, q.end as i64])
        .collect();
    PyArray1::from_vec(py, flat).reshape([r.len(), 2])
}

fn read_ranges(a: &PyReadonlyArray2<'_, i64>, name: &str) -> PyResult<Vec<Range<usize>>> {
    let v = a.as_array();
    if v.shape()[1] != 2 {
        return Err(PyValueError::new_err(format!(
            "{name}: expected shape (n, 2), got {:?}",
            v.shape()
        )));
    }
    v.rows()
        .into_iter()
        .enumerate()
        .map(
            |(k, r)| match (usize::try_from(r[0]), usize::try_from(r[1])) {
                (Ok(s), Ok(e)) if s <= e => Ok(s..e),
                _ => Err(PyValueError::new_err(format!(
                    "{name}: range {k} is [{}, {}): ranges need 0 <= start <= end",
                    r[0], r[1]
                ))),
            },
        )
        .collect()
}

fn rows_of<'py, T: numpy::Element>(
    py: Python<'py>,
    v: Vec<T>,
    d: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let n = v.len() / d.max(1);
    Ok(Array2::from_shape_vec((n, d), v)
        .map_err(|e| PyValueError::new_err(e.to_string()))?
        .into_pyarray(py)
        .into_any())
}

/// `grid_cluster(x, size)`: labels of the cubic cells (sides `size`) holding the points.
#[pyfunction]
fn grid_cluster<'py>(
    py: Python<'py>,
    x: Bound<'py, PyAny>,
    size: PyReadonlyArray1<'py, f64>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let size = size.as_slice()?.to_vec();
    let labels = if let Some((v, d)) = points::<f64>(&x)? {
        py.detach(|| keops::cluster::grid_cluster(&v, d, &size))
    } else if let Some((v, d)) = points::<f32>(&x)? {
        let s: Vec<f32> = size.iter().map(|&s| s as f32).collect();
        py.detach(|| keops::cluster::grid_cluster(&v, d, &s))
    } else {
        return Err(not_float(&x));
    };
    Ok(PyArray1::from_vec(py, labels.map_err(to_py)?))
}

/// `cluster_permutation(labels)`: the stable permutation that sorts the labels.
#[pyfunction]
fn cluster_permutation<'py>(
    py: Python<'py>,
    labels: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let perm = keops::cluster::cluster_permutation(labels.as_slice()?);
    Ok(PyArray1::from_vec(
        py,
        perm.into_iter().map(|i| i as i64).collect(),
    ))
}

/// `cluster_ranges(labels, counts=None)`: `[start, end)` of each cluster, `(C, 2)`.
#[pyfunction]
#[pyo3(signature = (labels, counts=None))]
fn cluster_ranges<'py>(
    py: Python<'py>,
    labels: PyReadonlyArray1<'py, i64>,
    counts: Option<PyReadonlyArray1<'py, i64>>,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let counts: Option<Vec<usize>> = counts
        .map(|c| {
            c.as_slice()?
                .iter()
                .map(|&n| {
                    usize::try_from(n).map_err(|_| {
                        PyValueError::new_err(format!("Nlab: counts must be >= 0, got {n}"))
                    })
                })
                .collect::<PyResult<Vec<usize>>>()
        })
        .transpose()?;
    let r = keops::cluster::cluster_ranges(labels.as_slice()?, counts.as_deref()).map_err(to_py)?;
    ranges_array(py, &r)
}

/// Ranges `(C, 2)`, centroids `(C, D)` and total weights `(C,)`.
type RangesCentroids<'py> = (
    Bound<'py, PyArray2<i64>>,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
);

/// `cluster_ranges_centroids(x, labels, weights=None, min_weight=1e-9)`: ranges,
/// centroids (x's dtype) and total weight per cluster (x's dtype).
#[pyfunction]
#[pyo3(signature = (x, labels, weights=None, min_weight=1e-9))]
fn cluster_ranges_centroids<'py>(
    py: Python<'py>,
    x: Bound<'py, PyAny>,
    labels: PyReadonlyArray1<'py, i64>,
    weights: Option<PyReadonlyArray1<'py, f64>>,
    min_weight: f64,
) -> PyResult<RangesCentroids<'py>> {
    let labels = labels.as_slice()?;
    let w: Option<Vec<f64>> = weights
        .map(|w| w.as_slice().map(|s| s.to_vec()))
        .transpose()?;
    macro_rules! go {
        ($t:ty, $v:expr, $d:expr) => {{
            let w: Option<Vec<$t>> = w.map(|w| w.iter().map(|&v| <$t>::from_f64(v)).collect());
            let (r, c, t) =
                keops::cluster::cluster_ranges_centroids(&$v, $d, labels, w.as_deref(), min_weight)
                    .map_err(to_py)?;
            Ok((
                ranges_array(py, &r)?,
                rows_of(py, c, $d)?,
                PyArray1::from_vec(py, t).into_any(),
            ))
        }};
    }
    if let Some((v, d)) = points::<f64>(&x)? {
        go!(f64, v, d)
    } else if let Some((v, d)) = points::<f32>(&x)? {
        go!(f32, v, d)
    } else {
        Err(not_float(&x))
    }
}

/// `from_matrix(ranges_i, ranges_j, keep)`: the six arrays of KeOps' `ranges`.
#[pyfunction]
fn from_matrix<'py>(
    py: Python<'py>,
    ranges_i: PyReadonlyArray2<'py, i64>,
    ranges_j: PyReadonlyArray2<'py, i64>,
    keep: PyReadonlyArray2<'py, bool>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let (ri, rj) = (
        read_ranges(&ranges_i, "ranges_i")?,
        read_ranges(&ranges_j, "ranges_j")?,
    );
    let k = keep.as_array();
    if k.shape() != [ri.len(), rj.len()] {
        return Err(PyValueError::new_err(format!(
            "keep: expected shape ({}, {}) (clusters of i, clusters of j), got {:?}",
            ri.len(),
            rj.len(),
            k.shape()
        )));
    }
    let keep: Vec<bool> = k.iter().copied().collect();
    let r = keops::cluster::from_matrix(&ri, &rj, &keep).map_err(to_py)?;
    let [a, b, c, d, e, f] = r.to_keops();
    let pairs = |v: Vec<i64>| -> PyResult<Bound<'py, PyAny>> {
        let n = v.len() / 2;
        Ok(PyArray1::from_vec(py, v).reshape([n, 2])?.into_any())
    };
    let flat = |v: Vec<i64>| PyArray1::from_vec(py, v).into_any();
    Ok(vec![
        pairs(a)?,
        flat(b),
        pairs(c)?,
        pairs(d)?,
        flat(e),
        pairs(f)?,
    ])
}

/// Adds the helpers to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(grid_cluster, m)?)?;
    m.add_function(wrap_pyfunction!(cluster_permutation, m)?)?;
    m.add_function(wrap_pyfunction!(cluster_ranges, m)?)?;
    m.add_function(wrap_pyfunction!(cluster_ranges_centroids, m)?)?;
    m.add_function(wrap_pyfunction!(from_matrix, m)?)?;
    Ok(())
}
