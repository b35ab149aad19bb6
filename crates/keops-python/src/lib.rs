//! `keops._keops`: the compiled core of the Python package `keops`.
//!
//! A thin layer: it converts NumPy arrays to [`keops::Arg`]s without copying (C-contiguous
//! float32/float64 arrays only; the Python layer copies other layouts first), releases the
//! GIL while the reduction runs, and turns [`keops::KeopsError`]s into Python exceptions
//! that carry the Rust message. The pykeops-compatible API lives in Python
//! (`python/keops/numpy.py`).

use keops::cuda::{DeviceArg, DeviceOutputs};
use keops::{
    AccType, Arg, Backend, Element, KeopsError, Layout, MultiGpu, Options, Reduction, SumScheme,
};
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyUntypedArrayMethods};
use std::sync::Arc;

mod cluster;
use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

/// A Rust error as the Python exception that fits it.
fn to_py(e: KeopsError) -> PyErr {
    match e {
        KeopsError::Backend { .. } | KeopsError::Cuda(_) | KeopsError::Compile { .. } => {
            PyRuntimeError::new_err(e.to_string())
        }
        KeopsError::OutOfMemory { .. } => PyMemoryError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// What a reduction returns to Python: values and indices, either possibly absent.
type Outputs<'py> = (Option<Bound<'py, PyAny>>, Option<Bound<'py, PyAny>>);

/// Output shapes (values, indices), either possibly absent.
type OutputShapes = (Option<Vec<usize>>, Option<Vec<usize>>);

/// A reduction of a symbolic matrix, checked once and callable many times.
#[pyclass(module = "keops._keops", frozen)]
struct Genred {
    inner: keops::Genred,
}

#[pymethods]
impl Genred {
    /// Parses `formula` with `aliases` (KeOps syntax) for `reduction` over `axis`
    /// (1: over j, 0: over i); `k` for the K-min family, `formula2` for the weight of
    /// `LogSumExp` / `SumSoftMaxWeight`.
    #[new]
    #[pyo3(signature = (formula, aliases, reduction, axis, k=None, formula2=None))]
    fn new(
        formula: &str,
        aliases: Vec<String>,
        reduction: &str,
        axis: usize,
        k: Option<usize>,
        formula2: Option<&str>,
    ) -> PyResult<Self> {
        let red = Reduction::from_name(reduction, k).map_err(to_py)?;
        let inner = match formula2 {
            Some(f2) => keops::Genred::with_weight(formula, f2, &aliases, red, axis),
            None => keops::Genred::new(formula, &aliases, red, axis),
        }
        .map_err(to_py)?;
        Ok(Genred { inner })
    }

    /// The formula, as KeOps syntax (after parsing and simplification).
    #[getter]
    fn formula(&self) -> String {
        self.inner.formula().to_string()
    }

    /// The dimension of the formula `F`.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.formula().dim
    }

    /// The weight formula (`LogSumExp` / `SumSoftMaxWeight`), if any.
    #[getter]
    fn formula2(&self) -> Option<String> {
        self.inner.weight().map(|w| w.to_string())
    }

    /// The reduction's name (`"Sum"`, `"KMin"`, ...).
    #[getter]
    fn reduction(&self) -> &'static str {
        self.inner.spec().kind.name()
    }

    /// `K` of the K-min family, else `None`.
    #[getter]
    fn k(&self) -> Option<usize> {
        self.inner.spec().kind.k()
    }

    /// 1: reduction over j, 0: over i.
    #[getter]
    fn axis(&self) -> usize {
        self.inner.axis()
    }

    /// One entry per argument position: `("Vi" | "Vj" | "Pm", dim)`, or `None` for a
    /// position no variable uses.
    #[getter]
    fn args(&self) -> Vec<Option<(&'static str, usize)>> {
        self.inner
            .args()
            .iter()
            .map(|d| d.map(|d| (d.cat.name(), d.dim)))
            .collect()
    }

    /// The gradient with respect to argument `k` as `(genred, extras)`: a reduction that
    /// takes the forward arguments then the extras (`"output_grad"`, `"output"`,
    /// `"logsumexp"`); a parameter's gradient is its output summed over the rows. `None`
    /// for the min/max family (differentiate at the selected pairs) and the
    /// arg-reductions (zero).
    fn grad(&self, k: usize) -> PyResult<Option<(Genred, Vec<&'static str>)>> {
        let g = self.inner.grad(k).map_err(to_py)?;
        Ok(g.reduction().map(|(genred, extras)| {
            (
                Genred {
                    inner: genred.clone(),
                },
                extras.iter().map(|x| extra_name(*x)).collect(),
            )
        }))
    }

    /// The Jacobian-vector product for tangents of arguments `ks`, as `(genred, extras)`:
    /// it takes the forward arguments, one tangent per entry of `ks`, then the extras
    /// (`"output"`).
    fn jvp(&self, ks: Vec<usize>) -> PyResult<(Genred, Vec<&'static str>)> {
        let (inner, extras) = self.inner.jvp(&ks).map_err(to_py)?;
        Ok((
            Genred { inner },
            extras.iter().map(|x| extra_name(*x)).collect(),
        ))
    }

    /// The same formula and axis with another reduction.
    #[pyo3(signature = (reduction, k=None))]
    fn with_reduction(&self, reduction: &str, k: Option<usize>) -> PyResult<Genred> {
        let red = Reduction::from_name(reduction, k).map_err(to_py)?;
        let inner = self.inner.with_reduction(red).map_err(to_py)?;
        Ok(Genred { inner })
    }

    /// `F` row by row (see `keops::Genred::pointwise`): a `Sum` whose reduced-side
    /// variables are read on the output side.
    fn pointwise(&self) -> PyResult<Genred> {
        let inner = self.inner.pointwise().map_err(to_py)?;
        Ok(Genred { inner })
    }

    /// Runs the reduction on C-contiguous float32 or float64 arrays (all of one dtype).
    /// Returns `(values, indices)`, either possibly `None`.
    /// `ranges` makes it block-sparse (see [`Ranges`]).
    #[pyo3(signature = (args, dtype_acc="auto", sum_scheme="auto", threads=None, backend="auto", device_id=0, ranges=None, multi_gpu=None, fast_math=false))]
    #[allow(clippy::too_many_arguments)] // pykeops' keyword options, one parameter each
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        args: Vec<Bound<'py, PyAny>>,
        dtype_acc: &str,
        sum_scheme: &str,
        threads: Option<usize>,
        backend: &str,
        device_id: usize,
        ranges: Option<PyRef<'py, Ranges>>,
        multi_gpu: Option<Bound<'py, PyAny>>,
        fast_math: bool,
    ) -> PyResult<Outputs<'py>> {
        let mut opts = options(dtype_acc, sum_scheme, threads, backend, device_id, ranges)?;
        opts.multi_gpu = multi_gpu_option(multi_gpu)?;
        opts.fast_math = fast_math;
        macro_rules! go {
            ($t:ty) => {
                with_args::<$t, _>(py, &args, |a| self.inner.call_with(a, &opts))
                    .and_then(|out| Ok((to_numpy(py, out.values)?, to_numpy(py, out.indices)?)))
            };
        }
        dispatch!(args, go)
    }

    /// The output shapes `(values, indices)` for arguments of shapes `shapes`, `None`
    /// for an output the reduction does not produce.
    fn output_shapes(&self, shapes: Vec<Vec<usize>>) -> PyResult<OutputShapes> {
        let shapes: Vec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
        let (v, i) = Layout::new(&self.inner, &shapes)
            .map_err(to_py)?
            .output_shapes();
        let (dv, di) = self.inner.spec().output_dims();
        Ok(((dv > 0).then_some(v), (di > 0).then_some(i)))
    }

    /// Runs the reduction on arrays already in GPU memory (PyTorch CUDA tensors), in
    /// place on CUDA stream `stream` of device `device_id`: `ptrs`/`shapes`/`strides`
    /// (in elements) of the arguments, all of `dtype` (`"float32"` or `"float64"`), and
    /// the addresses of contiguous outputs of the shapes `output_shapes` gives (0 for
    /// one that is `None`). Returns once queued, without synchronising.
    ///
    /// Internal to `keops.torch`, which passes live tensors of the right shapes: the
    /// addresses are checked to be memory of the device, not their extents.
    #[pyo3(signature = (ptrs, shapes, strides, dtype, out_values, out_indices, stream, dtype_acc="auto", sum_scheme="auto", backend="GPU", device_id=0, ranges=None, fast_math=false))]
    #[allow(clippy::too_many_arguments)] // pykeops' keyword options, one parameter each
    fn call_device(
        &self,
        py: Python<'_>,
        ptrs: Vec<u64>,
        shapes: Vec<Vec<usize>>,
        strides: Vec<Vec<usize>>,
        dtype: &str,
        out_values: u64,
        out_indices: u64,
        stream: u64,
        dtype_acc: &str,
        sum_scheme: &str,
        backend: &str,
        device_id: usize,
        ranges: Option<PyRef<'_, Ranges>>,
        fast_math: bool,
    ) -> PyResult<()> {
        let mut opts = options(dtype_acc, sum_scheme, None, backend, device_id, ranges)?;
        opts.fast_math = fast_math;
        if opts.backend == Backend::Cpu {
            return Err(PyValueError::new_err(
                "backend 'CPU' cannot reduce GPU arrays in place",
            ));
        }
        if ptrs.len() != shapes.len() || strides.len() != shapes.len() {
            return Err(PyValueError::new_err(format!(
                "{} pointers, {} shapes and {} stride lists",
                ptrs.len(),
                shapes.len(),
                strides.len()
            )));
        }
        let args: Vec<DeviceArg> = ptrs
            .into_iter()
            .zip(shapes)
            .zip(strides)
            .map(|((ptr, shape), strides)| DeviceArg {
                ptr,
                shape,
                strides,
            })
            .collect();
        let out = DeviceOutputs {
            values: out_values,
            indices: out_indices,
        };
        // SAFETY: `keops.torch` passes the addresses, shapes and strides of live tensors
        // of `device_id` and outputs it allocated with `output_shapes`; it keeps them
        // alive (torch's allocator orders reuse on the stream we run on).
        let run = |g: &keops::Genred| match dtype {
            "float32" => unsafe { keops::cuda::run_in_place::<f32>(g, &args, out, stream, &opts) },
            "float64" => unsafe { keops::cuda::run_in_place::<f64>(g, &args, out, stream, &opts) },
            other => Err(KeopsError::Arguments(format!(
                "dtype {other:?}: expected float32 or float64"
            ))),
        };
        py.detach(|| run(&self.inner).map(|_| ())).map_err(to_py)
    }

    /// Solves `(K + alpha I) a = b` by conjugate gradients (`keops::solve`), this `Sum`
    /// being `K a` with the unknown at argument `var` (where `args` holds `b`).
    /// Returns `(a, iterations, residual, converged, precision_limited, precond_rank)`;
    /// `callback(iteration, residual, checked)` runs after each iteration (`checked`
    /// false: the recursive residual) and each check of the true residual (`checked`
    /// true); an exception it raises, or Ctrl-C, stops the solve. `precond`: `None` or
    /// `"nystrom"` (largest rank `precond_rank`; `None`: chosen as it is built).
    #[pyo3(signature = (args, var, alpha, eps, max_iter=None, callback=None, dtype_acc="auto", sum_scheme="auto", threads=None, backend="auto", device_id=0, ranges=None, multi_gpu=None, fast_math=false, precond=None, precond_rank=None))]
    #[allow(clippy::too_many_arguments)] // pykeops' keyword options, one parameter each
    fn solve<'py>(
        &self,
        py: Python<'py>,
        args: Vec<Bound<'py, PyAny>>,
        var: usize,
        alpha: f64,
        eps: f64,
        max_iter: Option<usize>,
        callback: Option<Py<PyAny>>,
        dtype_acc: &str,
        sum_scheme: &str,
        threads: Option<usize>,
        backend: &str,
        device_id: usize,
        ranges: Option<PyRef<'py, Ranges>>,
        multi_gpu: Option<Bound<'py, PyAny>>,
        fast_math: bool,
        precond: Option<&str>,
        precond_rank: Option<usize>,
    ) -> PyResult<(Bound<'py, PyAny>, usize, f64, bool, bool, usize)> {
        let mut opts = options(dtype_acc, sum_scheme, threads, backend, device_id, ranges)?;
        opts.multi_gpu = multi_gpu_option(multi_gpu)?;
        opts.fast_math = fast_math;
        let solver =
            keops::solve::KernelSolve::from_genred(self.inner.clone(), var).map_err(to_py)?;
        let precond = match precond {
            None => keops::solve::Preconditioner::None,
            Some(name) if name.eq_ignore_ascii_case("nystrom") => precond_rank
                .map_or(keops::solve::Preconditioner::NystromAuto, |rank| {
                    keops::solve::Preconditioner::Nystrom { rank }
                }),
            Some(other) => {
                return Err(to_py(KeopsError::Option {
                    name: "precond".into(),
                    msg: format!("{other:?}: expected None or \"nystrom\""),
                }))
            }
        };
        let params = keops::solve::SolveOptions {
            alpha,
            eps,
            max_iter,
            precond,
        };
        let mut raised: Option<PyErr> = None;
        // Ctrl-C is checked at every step, the preconditioner's build included; the
        // callback sees the iterations and the checks of the true residual, as
        // `callback(iteration, residual, checked)`.
        let mut progress = |p: keops::solve::Progress| -> bool {
            use keops::solve::Progress;
            Python::attach(|py| {
                let step = match p {
                    Progress::Iteration {
                        iteration,
                        residual,
                        ..
                    }
                    | Progress::Check {
                        iteration,
                        residual,
                        ..
                    } => Some((iteration, residual, matches!(p, Progress::Check { .. }))),
                    Progress::Preconditioner { .. } => None,
                };
                let r = py.check_signals().and_then(|_| match (&callback, step) {
                    (Some(f), Some(step)) => f.call1(py, step).map(|_| ()),
                    _ => Ok(()),
                });
                match r {
                    Ok(()) => true,
                    Err(e) => {
                        raised = Some(e);
                        false
                    }
                }
            })
        };
        macro_rules! go {
            ($t:ty) => {
                with_args::<$t, _>(py, &args, |a| {
                    solver.call_with(a, &params, &opts, &mut progress)
                })
                .and_then(|sol| {
                    let x = to_numpy(py, Some(sol.x))?.expect("an array");
                    Ok((
                        x,
                        sol.iterations,
                        sol.residual,
                        sol.converged,
                        sol.precision_limited,
                        sol.precond_rank,
                    ))
                })
            };
        }
        let out = dispatch!(args, go);
        match raised {
            Some(e) => Err(e),
            None => out,
        }
    }
}

/// Runs `go!(f32)` or `go!(f64)` by the dtype of the first argument.
macro_rules! dispatch {
    ($args:expr, $go:ident) => {
        match $args.first() {
            Some(a) if a.downcast::<PyArrayDyn<f32>>().is_ok() => $go!(f32),
            Some(a) if a.downcast::<PyArrayDyn<f64>>().is_ok() => $go!(f64),
            Some(a) => Err(PyTypeError::new_err(format!(
                "argument 0: expected a float32 or float64 NumPy array, got {}",
                describe(a)
            ))),
            None => $go!(f64),
        }
    };
}
use dispatch;

/// The engine options from pykeops' keyword options.
fn options(
    dtype_acc: &str,
    sum_scheme: &str,
    threads: Option<usize>,
    backend: &str,
    device_id: usize,
    ranges: Option<PyRef<'_, Ranges>>,
) -> PyResult<Options> {
    let (backend, gpu_scheme) = Backend::with_scheme(backend).map_err(to_py)?;
    Ok(Options {
        dtype_acc: match dtype_acc {
            "auto" => AccType::Auto,
            "float32" | "float16" => AccType::Auto,
            "float64" => AccType::Float64,
            other => {
                return Err(PyValueError::new_err(format!(
                    "invalid option dtype_acc: {other:?} is not one of \"auto\", \"float32\", \"float64\""
                )))
            }
        },
        sum_scheme: SumScheme::from_name(sum_scheme).map_err(to_py)?,
        threads,
        backend,
        gpu_scheme,
        device_id,
        ranges: ranges.map(|r| r.inner.clone()),
        ..Options::default()
    })
}

/// `multi_gpu`: `None` (one GPU), `"all"`, or a list of CUDA ordinals.
fn multi_gpu_option(m: Option<Bound<'_, PyAny>>) -> PyResult<MultiGpu> {
    match m {
        None => Ok(MultiGpu::Off),
        Some(m) if m.extract::<String>().is_ok_and(|s| s == "all") => Ok(MultiGpu::All),
        Some(m) => m
            .extract::<Vec<usize>>()
            .map(MultiGpu::Devices)
            .map_err(|_| {
                PyValueError::new_err(format!(
                    "invalid multi_gpu {m}: expected \"all\" or a list of GPU numbers"
                ))
            }),
    }
}

/// An owned result array as a NumPy array (no copy: NumPy takes the buffer).
fn to_numpy<'py, E: numpy::Element>(
    py: Python<'py>,
    a: Option<keops::Array<E>>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    a.map(|v| {
        PyArray1::from_vec(py, v.data)
            .reshape(v.shape)
            .map(|a| a.into_any())
    })
    .transpose()
}

fn extra_name(x: keops::Extra) -> &'static str {
    match x {
        keops::Extra::OutputGrad => "output_grad",
        keops::Extra::Output => "output",
        keops::Extra::LogSumExp => "logsumexp",
    }
}

fn describe(a: &Bound<'_, PyAny>) -> String {
    match a.getattr("dtype") {
        Ok(d) => format!("an array of dtype {d}"),
        Err(_) => a
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "an object".into()),
    }
}

/// Borrows the arrays as [`Arg`]s of type `T` (read-only, C-contiguous, no copies)
/// and runs `f` on them with the GIL released.
fn with_args<'py, T: Element + numpy::Element, R: Send>(
    py: Python<'py>,
    args: &[Bound<'py, PyAny>],
    f: impl FnOnce(&[Arg<'_, T>]) -> Result<R, KeopsError> + Send,
) -> PyResult<R> {
    let want = std::any::type_name::<T>();
    let arrays = args
        .iter()
        .enumerate()
        .map(|(k, a)| {
            let arr = a.downcast::<PyArrayDyn<T>>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "argument {k}: expected {} like argument 0, got {}",
                    if want == "f32" { "float32" } else { "float64" },
                    describe(a)
                ))
            })?;
            arr.try_readonly().map_err(|e| {
                PyValueError::new_err(format!("argument {k}: cannot be borrowed: {e}"))
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let mut slices = Vec::with_capacity(arrays.len());
    for (k, a) in arrays.iter().enumerate() {
        let data = a.as_slice().map_err(|_| {
            PyValueError::new_err(format!(
                "argument {k}: the array is not C-contiguous (pass numpy.ascontiguousarray(...))"
            ))
        })?;
        slices.push(Arg::new(data, a.shape()));
    }
    // Arrays stay borrowed (read-only) while the GIL is released.
    py.detach(|| f(&slices)).map_err(to_py)
}

/// KeOps' block-sparse `ranges`, checked once: built from the six int64 arrays
/// `(ranges_i, slices_i, redranges_j, ranges_j, slices_j, redranges_i)`.
#[pyclass(module = "keops._keops", frozen)]
struct Ranges {
    inner: Arc<keops::Ranges>,
}

#[pymethods]
impl Ranges {
    /// Checks the six arrays (`(n, 2)` ranges flattened or not; see `keops::Ranges`).
    #[new]
    fn new(arrays: Vec<PyReadonlyArray1<'_, i64>>) -> PyResult<Self> {
        let a: Vec<&[i64]> = arrays
            .iter()
            .map(|a| {
                a.as_slice()
                    .map_err(|_| PyValueError::new_err("ranges: arrays must be contiguous"))
            })
            .collect::<PyResult<_>>()?;
        let [ri, si, rj, rj2, sj, ri2] = a[..] else {
            return Err(PyValueError::new_err(format!(
                "ranges: expected 6 arrays (ranges_i, slices_i, redranges_j, ranges_j, slices_j, redranges_i), got {}",
                a.len()
            )));
        };
        let inner = keops::Ranges::from_keops(ri, si, rj, rj2, sj, ri2).map_err(to_py)?;
        Ok(Ranges {
            inner: Arc::new(inner),
        })
    }

    /// The six arrays, `(n, 2)` ones flattened (reduced ranges sorted per cluster).
    fn to_keops<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyArray1<i64>>> {
        self.inner
            .to_keops()
            .into_iter()
            .map(|v| PyArray1::from_vec(py, v))
            .collect()
    }

    /// For a reduction along `axis` with `n_out` output rows in each of `nbatch` batch
    /// entries: which rows visit no pair (their gradients are 0).
    fn empty_rows<'py>(
        &self,
        py: Python<'py>,
        axis: usize,
        n_out: usize,
        nbatch: usize,
    ) -> Bound<'py, PyArray1<bool>> {
        PyArray1::from_vec(py, self.inner.for_axis(axis).empty_rows(nbatch * n_out))
    }
}

/// The compiled core of `keops`.
/// Whether reductions can run on a GPU here: a CUDA driver, a device and NVRTC.
#[pyfunction]
fn gpu_available() -> bool {
    keops::cuda::available()
}

/// The CPU engine's default instruction set (`KEOPS_CPU_ISA`'s names) and threads;
/// `ValueError` when `KEOPS_CPU_ISA` names no instruction set.
#[pyfunction]
fn cpu_status() -> PyResult<(&'static str, usize)> {
    let (isa, threads) = keops::cpu::status().map_err(to_py)?;
    Ok((isa.name(), threads))
}

/// What the CUDA engine finds here, one `(part, found, text)` per line: the driver, the
/// kernel compiler, then each device; `text` says why where `found` is false.
#[pyfunction]
fn gpu_status() -> Vec<(&'static str, bool, String)> {
    let st = keops::cuda::status();
    let line = |part, r: Result<String, String>| match r {
        Ok(t) => (part, true, t),
        Err(t) => (part, false, t),
    };
    let driver = st.driver.map(|d| match d.version {
        0 => format!("simulated, {} device(s)", d.devices),
        v => format!(
            "CUDA {}.{}, {} device(s)",
            v / 1000,
            v % 1000 / 10,
            d.devices
        ),
    });
    let mut lines = vec![line("driver", driver), line("compiler", st.compiler)];
    lines.extend(st.devices.into_iter().map(|d| line("device", d)));
    lines
}

/// The folder of the GPU kernel cache (`None` without a home folder).
#[pyfunction]
fn kernel_cache_dir() -> Option<std::path::PathBuf> {
    keops::cuda::runtime::cache_dir()
}

/// Empties the GPU kernel cache, in memory and on disk; returns how many files were
/// removed.
#[pyfunction]
fn clear_kernel_cache() -> PyResult<usize> {
    keops::cuda::runtime::clear_cache().map_err(to_py)
}

/// Whether `backend="auto"` runs reductions on a GPU here (see `keops::plan::auto_uses_gpu`).
#[pyfunction]
fn auto_uses_gpu() -> bool {
    keops::plan::auto_uses_gpu()
}

/// Every name of the formula language (the op table), for coverage tests and tools.
#[pyfunction]
fn op_names() -> Vec<&'static str> {
    keops::formula::ops::all_specs().map(|s| s.name).collect()
}

/// The argument position of the variable named `name` in `aliases`.
#[pyfunction]
fn alias_position(aliases: Vec<String>, name: &str) -> PyResult<usize> {
    let al = keops::formula::parse::Aliases::parse(&aliases).map_err(to_py)?;
    keops::formula::parse::parse_with(name, &al)
        .ok()
        .and_then(|f| f.as_var().map(|(_, k)| k))
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "varinvalias {name:?} is not a variable of the aliases {aliases:?}"
            ))
        })
}

/// The category (`"Vi"`, `"Vj"`, `"Pm"`) and the dimension that one alias declaration
/// (`"a = Vi(3)"`, as the output of pykeops' `generic_*`) declares.
#[pyfunction]
fn alias_declaration(alias: &str) -> PyResult<(&'static str, usize)> {
    let al = keops::formula::parse::Aliases::parse(&[alias]).map_err(to_py)?;
    let f = al.variables().pop();
    let var = f
        .as_ref()
        .and_then(|f| f.as_var().map(|(cat, _)| (cat, f.dim)));
    let (cat, dim) =
        var.ok_or_else(|| PyValueError::new_err(format!("{alias:?} does not declare a variable")))?;
    Ok((cat.name(), dim))
}

/// Checks that `genred` (a `Sum`) can be solved for argument `var` (see
/// `keops::solve::KernelSolve::from_genred`).
#[pyfunction]
fn check_solve(genred: PyRef<'_, Genred>, var: usize) -> PyResult<()> {
    keops::solve::KernelSolve::from_genred(genred.inner.clone(), var)
        .map(|_| ())
        .map_err(to_py)
}

#[pymodule]
fn _keops(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The importing thread (the main one, nearly always) joins the CPU engine's pool, so
    // that its reductions start at once instead of waiting for pool threads to wake.
    // Without it (an error: the thread belongs to a pool already) they run as before, on
    // rayon's global pool.
    let _ = keops::cpu::adopt_current_thread();
    m.add_class::<Genred>()?;
    m.add_class::<Ranges>()?;
    cluster::register(m)?;
    m.add_function(wrap_pyfunction!(alias_position, m)?)?;
    m.add_function(wrap_pyfunction!(alias_declaration, m)?)?;
    m.add_function(wrap_pyfunction!(check_solve, m)?)?;
    m.add_function(wrap_pyfunction!(gpu_available, m)?)?;
    m.add_function(wrap_pyfunction!(gpu_status, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_status, m)?)?;
    m.add_function(wrap_pyfunction!(auto_uses_gpu, m)?)?;
    m.add_function(wrap_pyfunction!(op_names, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_cache_dir, m)?)?;
    m.add_function(wrap_pyfunction!(clear_kernel_cache, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
