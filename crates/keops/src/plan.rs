//! `Genred`: a formula, a reduction and an axis, checked once; and the per-call checks
//! of the arguments (shapes, batch dimensions) that turn it into a [`Problem`] an engine
//! executes.

use crate::error::{KeopsError, Result};
use crate::formula::parse::{parse_written, Aliases};
use crate::formula::{self, Cat, Formula};
use crate::real::Real;
use crate::reduction::{Reduction, ReductionSpec};
use std::sync::Arc;

/// The float types the engines run on (`f32` and `f64`).
/// (The CUDA bounds let the GPU engine copy them; both types have them.)
pub trait Element:
    Real + cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + private::Sealed
{
    /// Whether [`Options::fast_math`] applies to this type: float32 (subnormals flushed
    /// on both engines, the GPU's `--use_fast_math`); float64 stays IEEE.
    const FAST_MATH: bool;
}
impl Element for f32 {
    const FAST_MATH: bool = true;
}
impl Element for f64 {
    const FAST_MATH: bool = false;
}
pub(crate) mod private {
    use super::{Options, Problem, Reduced, Result};

    pub trait Sealed: Sized {
        /// Runs a checked problem on the engine the options pick.
        fn run_problem(problem: &Problem<'_, Self>, opts: &Options) -> Result<Reduced<Self>>;

        /// `c = a b` with matrixmultiply's GEMM for this type, `mkn = (m, k, n)`: `a` is
        /// `m x k` with rows `rsa` apart, `b` is `k x n` with strides `(rsb, csb)`, `c` is row-major
        /// `m x n`. Panics if a slice is too short (a bug in the caller, not user input).
        #[allow(clippy::too_many_arguments)]
        fn gemm(
            mkn: (usize, usize, usize),
            a: &[Self],
            rsa: usize,
            b: &[Self],
            rsb: usize,
            csb: usize,
            c: &mut [Self],
        );

        /// The values in `f64`: borrowed where they already are.
        fn widen(data: &[Self]) -> std::borrow::Cow<'_, [f64]>;
    }

    /// Checks that `gemm`'s slices hold every element it reads and writes.
    fn check_gemm<T>(
        (m, k, n): (usize, usize, usize),
        a: &[T],
        rsa: usize,
        b: &[T],
        (rsb, csb): (usize, usize),
        c: &[T],
    ) -> bool {
        if m == 0 || k == 0 || n == 0 {
            return false;
        }
        assert!(a.len() > (m - 1) * rsa + (k - 1), "gemm: a too short");
        assert!(b.len() > (k - 1) * rsb + (n - 1) * csb, "gemm: b too short");
        assert!(c.len() >= m * n, "gemm: c too short");
        true
    }

    // One instance of the engines per type, compiled in this crate: generic code is not
    // shared across crates in release builds, so a generic entry point would have every
    // crate that calls it (the Python module, the CLI, each test binary) compile the CPU
    // engine's SIMD variants again (about 90 s each on 2 cores).
    macro_rules! sealed {
        ($t:ty, $gemm:path, $widen:expr) => {
            impl Sealed for $t {
                #[inline(never)]
                fn run_problem(problem: &Problem<'_, $t>, opts: &Options) -> Result<Reduced<$t>> {
                    super::run_problem(problem, opts)
                }

                fn gemm(
                    mkn: (usize, usize, usize),
                    a: &[$t],
                    rsa: usize,
                    b: &[$t],
                    rsb: usize,
                    csb: usize,
                    c: &mut [$t],
                ) {
                    if !check_gemm(mkn, a, rsa, b, (rsb, csb), c) {
                        c.iter_mut().for_each(|v| *v = 0.0);
                        return;
                    }
                    let (m, k, n) = mkn;
                    // SAFETY: `check_gemm` checked that every element read from `a` and
                    // `b` and written to `c` lies in its slice; beta = 0 never reads `c`.
                    unsafe {
                        $gemm(
                            m,
                            k,
                            n,
                            1.0,
                            a.as_ptr(),
                            rsa as isize,
                            1,
                            b.as_ptr(),
                            rsb as isize,
                            csb as isize,
                            0.0,
                            c.as_mut_ptr(),
                            n as isize,
                            1,
                        )
                    }
                }

                fn widen(data: &[$t]) -> std::borrow::Cow<'_, [f64]> {
                    $widen(data)
                }
            }
        };
    }
    sealed!(f32, matrixmultiply::sgemm, |d: &[f32]| d
        .iter()
        .map(|&v| f64::from(v))
        .collect());
    sealed!(f64, matrixmultiply::dgemm, std::borrow::Cow::Borrowed);
}

/// Runs a checked problem on the GPU or the CPU, as `opts.backend` says.
fn run_problem<T: Element>(problem: &Problem<'_, T>, opts: &Options) -> Result<Reduced<T>> {
    let gpu = match opts.backend {
        Backend::Gpu => true,
        Backend::Cpu => false,
        Backend::Auto => auto_uses_gpu(),
    };
    if gpu {
        crate::cuda::runtime::run(problem, opts).map(|r| r.0)
    } else {
        crate::cpu::run(problem, opts)
    }
}

/// Precision of the sums within a tile (KeOps' `dtype_acc`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccType {
    /// The data type (KeOps' default `"auto"`).
    #[default]
    Auto,
    /// `float64` accumulation, also for `float32` data.
    Float64,
}

/// How sums are accumulated within a tile (KeOps' `sum_scheme`). Across tiles, partial
/// sums always go into `f64` states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SumScheme {
    /// One running accumulator, value after value (`"direct_sum"`).
    Direct,
    /// Independent per-lane partial sums, added once per tile (`"block_sum"`, default).
    #[default]
    BlockSum,
    /// Per-lane sums with Kahan compensation (`"kahan_scheme"`).
    Kahan,
}

impl SumScheme {
    /// From KeOps' option string.
    pub fn from_name(s: &str) -> Result<SumScheme> {
        match s {
            "direct_sum" => Ok(SumScheme::Direct),
            "block_sum" | "auto" => Ok(SumScheme::BlockSum),
            "kahan_scheme" => Ok(SumScheme::Kahan),
            _ => Err(KeopsError::Option {
                name: "sum_scheme".into(),
                msg: format!("{s:?} is not one of \"direct_sum\", \"block_sum\", \"kahan_scheme\""),
            }),
        }
    }
}

/// Which CPU code path runs a plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuKernel {
    /// A fused kernel when one matches the plan, else the tile program.
    #[default]
    Auto,
    /// Always the general tile program.
    TileProgram,
    /// A fused kernel; an error if none matches.
    Fused,
}

/// Where a reduction runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// The GPU when one is usable, else the CPU.
    #[default]
    Auto,
    /// The CPU engine.
    Cpu,
    /// The CUDA engine.
    Gpu,
}

/// The GPU scheme (KeOps' `GPU_1D` / `GPU_2D`), see `cuda::scheme`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuScheme {
    /// Chosen per call from the sizes.
    #[default]
    Auto,
    /// One thread per output row over the whole reduced axis.
    OneD,
    /// The reduced axis split across blocks too, partial states combined.
    TwoD,
}

/// One reduction over several GPUs: the reduced axis is split among them in parts
/// proportional to their multiprocessor counts, each computes the partial states of
/// every output row over its part, and the first combines them in index order (so
/// results, ties of `ArgMin` included, are those of one GPU).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MultiGpu {
    /// One GPU: `Options::device_id`.
    #[default]
    Off,
    /// Every visible GPU.
    All,
    /// These GPUs (CUDA ordinals, in order; one listed twice gets two parts).
    Devices(Vec<usize>),
}

impl Backend {
    /// From pykeops' option string (`"auto"`, `"CPU"`, `"GPU"`, `"GPU_1D"`, `"GPU_2D"`).
    pub fn from_name(s: &str) -> Result<Backend> {
        Self::with_scheme(s).map(|b| b.0)
    }

    /// As [`Backend::from_name`], with the scheme that `"GPU_1D"` and `"GPU_2D"` force.
    pub fn with_scheme(s: &str) -> Result<(Backend, GpuScheme)> {
        match s {
            "auto" | "" => Ok((Backend::Auto, GpuScheme::Auto)),
            "CPU" | "cpu" => Ok((Backend::Cpu, GpuScheme::Auto)),
            "GPU" | "gpu" => Ok((Backend::Gpu, GpuScheme::Auto)),
            "GPU_1D" => Ok((Backend::Gpu, GpuScheme::OneD)),
            "GPU_2D" => Ok((Backend::Gpu, GpuScheme::TwoD)),
            _ => Err(KeopsError::Option {
                name: "backend".into(),
                msg: format!(
                    "{s:?} is not one of \"auto\", \"CPU\", \"GPU\", \"GPU_1D\", \"GPU_2D\""
                ),
            }),
        }
    }
}

/// Options of a call, with KeOps' defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Precision of in-tile sums.
    pub dtype_acc: AccType,
    /// Summation scheme within tiles.
    pub sum_scheme: SumScheme,
    /// Number of CPU threads (`None`: the rayon pool the caller belongs to, such as the
    /// engine's pool for the thread that joined it
    /// ([`cpu::adopt_current_thread`](crate::cpu::adopt_current_thread)), else rayon's
    /// global pool; one thread per core unless `RAYON_NUM_THREADS` says).
    pub threads: Option<usize>,
    /// CPU code path.
    pub kernel: CpuKernel,
    /// Where to run.
    pub backend: Backend,
    /// GPU scheme.
    pub gpu_scheme: GpuScheme,
    /// GPU only: output rows each thread reduces (`None`: the planner's choice, or the
    /// environment variable `KEOPS_GPU_ROWS`). A tuning knob: at most what the kernel
    /// allows (1 to 4 where rows and states fit in registers), else an error.
    pub gpu_rows: Option<usize>,
    /// Which GPU (CUDA ordinal).
    pub device_id: usize,
    /// Several GPUs for one reduction (host data only; `device_id` is then unused).
    pub multi_gpu: MultiGpu,
    /// pykeops' `use_fast_math`. Float32 subnormals are flushed to zero on both engines
    /// (results and operands below `1.2e-38` count as 0): on the CPU, jobs run with the
    /// processor's flush-to-zero mode, which removes the microcode assists that
    /// subnormals cost (float32 Gaussian sums of far-apart points ran 8x slower without
    /// it); on the GPU, NVRTC's `--use_fast_math` also computes float32 `exp`, `log`,
    /// `sin`, `cos`, `pow`, division and square root by the hardware's approximations,
    /// and computes Gaussian and Laplacian exponentials as `exp2` of distances between
    /// points scaled as they are loaded ([`crate::cuda::prescale`]; the rounding of a
    /// division by the bandwidth). Float64 is unchanged (IEEE). Off here; the Python front ends turn it on by
    /// default, as pykeops does.
    pub fast_math: bool,
    /// Caps the CPU instruction set (`None`: the best this CPU has; the environment
    /// variable `KEOPS_CPU_ISA` caps it too). For testing and comparing code paths.
    pub isa: Option<crate::cpu::Isa>,
    /// Block-sparse mode: the blocks of the symbolic matrix to visit (KeOps' `ranges`),
    /// shared by every reduction of a call (gradients use the other half).
    pub ranges: Option<Arc<crate::ranges::Ranges>>,
}

/// What a formula expects of one argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgDecl {
    /// Category.
    pub cat: Cat,
    /// Dimension (last axis of the array).
    pub dim: usize,
}

/// A reduction of a symbolic matrix, checked once and callable many times: KeOps'
/// `Genred`.
///
/// ```
/// use keops::{Genred, Reduction, Arg};
/// let g = Genred::new("Exp(-SqDist(x,y)) * b", &["x = Vi(0,1)", "y = Vj(1,1)", "b = Vj(2,1)"],
///                     Reduction::Sum, 1)?;
/// let (x, y, b) = ([0.0f64, 1.0], [0.0f64, 2.0, 3.0], [1.0f64, 1.0, 1.0]);
/// let out = g.call(&[Arg::new(&x, &[2, 1]), Arg::new(&y, &[3, 1]), Arg::new(&b, &[3, 1])])?;
/// let a = out.values.unwrap();
/// assert_eq!(a.shape, vec![2, 1]);
/// assert!((a.data[0] - (1.0 + (-4.0f64).exp() + (-9.0f64).exp())).abs() < 1e-12);
/// # Ok::<(), keops::KeopsError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Genred {
    formula: Formula,
    weight: Option<Formula>,
    spec: ReductionSpec,
    axis: usize,
    args: Vec<Option<ArgDecl>>,
    /// The CPU engine's analysis of this reduction, made once (shared by clones).
    cpu: Arc<crate::cpu::Compiled>,
}

/// Argument positions of a [`Genred`] are below this (each position is a slot of every
/// call's argument list).
pub const MAX_ARGS: usize = 1 << 16;

impl Genred {
    /// Parses `formula` with `aliases` and checks it with the reduction and axis
    /// (`axis = 1`: one output row per `i`, reducing over `j`; `axis = 0`: the converse).
    pub fn new<S: AsRef<str>>(
        formula: &str,
        aliases: &[S],
        reduction: Reduction,
        axis: usize,
    ) -> Result<Genred> {
        let al = Aliases::parse(aliases)?;
        let (f, mut declared) = parse_written(formula, &al)?;
        declared.extend(al.variables());
        Self::build(f, None, reduction, axis, &declared)
    }

    /// As [`Genred::new`], with a second formula: the weight of `LogSumExp` or
    /// `SumSoftMaxWeight` (pykeops' `formula2`).
    pub fn with_weight<S: AsRef<str>>(
        formula: &str,
        formula2: &str,
        aliases: &[S],
        reduction: Reduction,
        axis: usize,
    ) -> Result<Genred> {
        let al = Aliases::parse(aliases)?;
        let (f, mut declared) = parse_written(formula, &al)?;
        let (g, written) = parse_written(formula2, &al)?;
        declared.extend(written);
        declared.extend(al.variables());
        Self::build(f, Some(g), reduction, axis, &declared)
    }

    /// From formulas already built.
    pub fn from_formula(
        formula: Formula,
        weight: Option<Formula>,
        reduction: Reduction,
        axis: usize,
    ) -> Result<Genred> {
        Self::build(formula, weight, reduction, axis, &[])
    }

    /// As [`Genred::from_formula`], with variables declared beyond those the formulas
    /// use (so that argument positions are kept, as for gradients).
    pub(crate) fn from_parts(
        formula: Formula,
        weight: Option<Formula>,
        reduction: Reduction,
        axis: usize,
        declared: &[Formula],
    ) -> Result<Genred> {
        Self::build(formula, weight, reduction, axis, declared)
    }

    fn build(
        formula: Formula,
        weight: Option<Formula>,
        reduction: Reduction,
        axis: usize,
        declared: &[Formula],
    ) -> Result<Genred> {
        if axis > 1 {
            return Err(KeopsError::Option {
                name: "axis".into(),
                msg: format!("must be 0 (reduce over i) or 1 (reduce over j), got {axis}"),
            });
        }
        let spec = ReductionSpec::new(reduction, formula.dim, weight.as_ref().map(|w| w.dim))?;
        let mut roots = vec![formula.clone()];
        roots.extend(weight.clone());
        let mut vars = formula::variables(&roots);
        vars.extend(declared.iter().cloned());
        let mut args: Vec<Option<ArgDecl>> = Vec::new();
        for v in &vars {
            let (cat, index) = v
                .as_var()
                .ok_or_else(|| KeopsError::Arguments("alias is not a variable".into()))?;
            if index >= MAX_ARGS {
                return Err(KeopsError::Argument {
                    index,
                    msg: format!("argument positions must be below {MAX_ARGS}"),
                });
            }
            let decl = ArgDecl { cat, dim: v.dim };
            if args.len() <= index {
                args.resize(index + 1, None);
            }
            match args[index] {
                Some(prev) if prev != decl => {
                    return Err(KeopsError::Conflict {
                        index,
                        first: format!("{}({index},{})", prev.cat.name(), prev.dim),
                        second: format!("{}({index},{})", cat.name(), v.dim),
                    })
                }
                _ => args[index] = Some(decl),
            }
        }
        Ok(Genred {
            formula,
            weight,
            spec,
            axis,
            args,
            cpu: Arc::default(),
        })
    }

    /// The reduced formula.
    pub fn formula(&self) -> &Formula {
        &self.formula
    }
    /// The weight formula, if any.
    pub fn weight(&self) -> Option<&Formula> {
        self.weight.as_ref()
    }
    /// The formulas evaluated at each pair: the formula, then the weight if any.
    pub(crate) fn roots(&self) -> Vec<Formula> {
        std::iter::once(self.formula.clone())
            .chain(self.weight.clone())
            .collect()
    }
    /// The reduction with its dimensions.
    pub fn spec(&self) -> &ReductionSpec {
        &self.spec
    }
    /// The axis: 1 reduces over `j`, 0 over `i`.
    pub fn axis(&self) -> usize {
        self.axis
    }
    /// The category of the output rows: `Vi` when reducing over `j`, else `Vj`.
    pub fn out_cat(&self) -> Cat {
        if self.axis == 1 {
            Cat::Vi
        } else {
            Cat::Vj
        }
    }
    /// The category of the reduced side's variables: `Vj` when reducing over `j`, else
    /// `Vi`.
    pub fn red_cat(&self) -> Cat {
        if self.axis == 1 {
            Cat::Vj
        } else {
            Cat::Vi
        }
    }
    /// The CPU engine's analysis of this reduction (made on first use).
    pub(crate) fn cpu(&self) -> &crate::cpu::Compiled {
        &self.cpu
    }
    /// What each argument position expects (`None`: a position no variable uses).
    pub fn args(&self) -> &[Option<ArgDecl>] {
        &self.args
    }

    /// What argument `k` expects, or an error naming the position when no variable
    /// of the formula is there (for derivatives with respect to an argument).
    pub(crate) fn arg_decl(&self, k: usize) -> Result<ArgDecl> {
        self.args
            .get(k)
            .copied()
            .flatten()
            .ok_or_else(|| KeopsError::Argument {
                index: k,
                msg: format!(
                    "no variable of the formula is at this position (it uses {} argument(s))",
                    self.args.len()
                ),
            })
    }

    /// The declared variables, one per argument position in use.
    pub(crate) fn declared(&self) -> Result<Vec<Formula>> {
        self.args
            .iter()
            .enumerate()
            .filter_map(|(k, d)| d.map(|d| Formula::var(d.cat, k, d.dim)))
            .collect()
    }

    /// Runs the reduction with default options.
    pub fn call<T: Element>(&self, args: &[Arg<'_, T>]) -> Result<Reduced<T>> {
        self.call_with(args, &Options::default())
    }

    /// Runs the reduction.
    pub fn call_with<T: Element>(&self, args: &[Arg<'_, T>], opts: &Options) -> Result<Reduced<T>> {
        let problem = Problem::new(self, args)?.with_ranges(opts.ranges.as_deref())?;
        T::run_problem(&problem, opts)
    }
}

/// Whether `Backend::Auto` runs on a usable GPU. Off until the CUDA engine's GPU test
/// suite has run on a device (issue 5): until then only an explicit `Backend::Gpu`
/// reaches the unvalidated GPU code, and `Auto` always runs on the CPU.
const AUTO_PICKS_GPU: bool = false;

/// Whether `Backend::Auto` runs reductions on the GPU here (never on the CUDA
/// simulator, which is for tests: only `Backend::Gpu` reaches it).
pub fn auto_uses_gpu() -> bool {
    AUTO_PICKS_GPU && !crate::cuda::sim::on() && crate::cuda::available()
}

/// One input array: row-major data and its shape (`[..batch, n, dim]` for `Vi`/`Vj`,
/// `[..batch, dim]` for `Pm`).
#[derive(Clone, Debug)]
pub struct Arg<'a, T> {
    /// Row-major (C-contiguous) values.
    pub data: &'a [T],
    /// The shape.
    pub shape: Vec<usize>,
}

impl<'a, T> Arg<'a, T> {
    /// Wraps a slice and its shape.
    pub fn new(data: &'a [T], shape: impl AsRef<[usize]>) -> Self {
        Arg {
            data,
            shape: shape.as_ref().to_vec(),
        }
    }
}

/// An owned n-dimensional array, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Array<T> {
    /// Values.
    pub data: Vec<T>,
    /// Shape.
    pub shape: Vec<usize>,
}

/// The result of a reduction: values, indices, or both (e.g. `Min_ArgMin`).
///
/// Shapes are `[..batch, n, D]` (`[..batch, n, K]` for the K-min family with `D = 1`,
/// `[..batch, n, K, D]` otherwise).
#[derive(Clone, Debug, PartialEq)]
pub struct Reduced<T> {
    /// Values (absent for `ArgMin`, `ArgMax`, `ArgKMin`).
    pub values: Option<Array<T>>,
    /// Indices along the reduced axis (-1 where the reduction is empty).
    pub indices: Option<Array<i64>>,
}

impl<T> Reduced<T> {
    /// Wraps finalized outputs: `dims` (values, indices per row) says which exist.
    pub(crate) fn assemble(
        values: Vec<T>,
        indices: Vec<i64>,
        (shape_v, shape_i): (Vec<usize>, Vec<usize>),
        (dv, di): (usize, usize),
    ) -> Self {
        Reduced {
            values: (dv > 0).then_some(Array {
                data: values,
                shape: shape_v,
            }),
            indices: (di > 0).then_some(Array {
                data: indices,
                shape: shape_i,
            }),
        }
    }
}

/// The checked shapes of a call: batch dimensions broadcast, sizes known, and where
/// each argument's batch entries start. Host and device data share it (device arrays
/// bring their own strides).
#[derive(Clone, Debug)]
pub struct Layout {
    /// Broadcast batch shape.
    pub batch: Vec<usize>,
    /// For each argument, the stride (in elements) of each batch dimension (0 where
    /// broadcast).
    pub batch_strides: Vec<Vec<usize>>,
    /// Number of `i` rows.
    pub n_i: usize,
    /// Number of `j` rows.
    pub n_j: usize,
    axis: usize,
    spec: ReductionSpec,
}

impl Layout {
    /// Checks the shapes of C-contiguous arguments against `genred`'s declarations.
    pub fn new(genred: &Genred, shapes: &[&[usize]]) -> Result<Layout> {
        Self::build(genred, shapes, None)
    }

    /// As [`Layout::new`] for arrays with `strides` (in elements, one per dimension):
    /// each argument's rows must be contiguous (stride 1 along its last dimension, and
    /// a row stride equal to its dimension); batch dimensions may have any stride (0 to
    /// broadcast).
    pub fn with_strides(
        genred: &Genred,
        shapes: &[&[usize]],
        strides: &[&[usize]],
    ) -> Result<Layout> {
        if strides.len() != shapes.len() {
            return Err(KeopsError::Arguments(format!(
                "{} shapes but {} stride lists",
                shapes.len(),
                strides.len()
            )));
        }
        Self::build(genred, shapes, Some(strides))
    }

    fn build(genred: &Genred, shapes: &[&[usize]], strides: Option<&[&[usize]]>) -> Result<Layout> {
        let decls = &genred.args;
        if shapes.len() < decls.len() {
            return Err(KeopsError::Arguments(format!(
                "the formula uses {} argument(s) but {} were given",
                decls.len(),
                shapes.len()
            )));
        }
        if shapes.len() > decls.len() {
            return Err(KeopsError::Arguments(format!(
                "{} argument(s) given but the formula uses only {} (argument {} is extra)",
                shapes.len(),
                decls.len(),
                decls.len()
            )));
        }
        // Each argument's batch dims = its shape minus the trailing [n, d] or [d].
        let mut nbatch = 0;
        let mut bases = Vec::with_capacity(shapes.len());
        for (k, (&shape, d)) in shapes.iter().zip(decls).enumerate() {
            let d = d.ok_or_else(|| KeopsError::Argument {
                index: k,
                msg: "no variable of the formula uses this argument".into(),
            })?;
            let base = if d.cat == Cat::Pm { 1 } else { 2 };
            let scalar_pm = d.cat == Cat::Pm && d.dim == 1 && shape.is_empty();
            if shape.len() < base && !scalar_pm {
                return Err(KeopsError::Argument {
                    index: k,
                    msg: format!(
                        "{}({k},{}) expects a shape {}, got {:?}",
                        d.cat.name(),
                        d.dim,
                        if base == 2 {
                            format!("(..., n, {})", d.dim)
                        } else {
                            format!("(..., {})", d.dim)
                        },
                        shape
                    ),
                });
            }
            let last = shape.last().copied().unwrap_or(1);
            if last != d.dim {
                return Err(KeopsError::Argument {
                    index: k,
                    msg: format!(
                        "{}({k},{}) expects last dimension {}, got shape {:?}",
                        d.cat.name(),
                        d.dim,
                        d.dim,
                        shape
                    ),
                });
            }
            if let Some(strides) = strides {
                check_rows_contiguous(k, shape, strides[k], base)?;
            }
            nbatch = nbatch.max(shape.len().saturating_sub(base));
            bases.push((d, base));
        }
        let mut batch = vec![1usize; nbatch];
        let mut n = [None::<usize>; 2];
        for (k, (&shape, &(d, base))) in shapes.iter().zip(&bases).enumerate() {
            let lead = shape.len().saturating_sub(base);
            for (t, &b) in shape[..lead].iter().enumerate() {
                let slot = &mut batch[nbatch - lead + t];
                if b != 1 && *slot != 1 && b != *slot {
                    return Err(KeopsError::Argument {
                        index: k,
                        msg: format!(
                            "batch dimensions {:?} do not broadcast with the others ({:?})",
                            &shape[..lead],
                            batch
                        ),
                    });
                }
                if b != 1 {
                    *slot = b;
                }
            }
            if d.cat != Cat::Pm {
                let rows = shape[shape.len() - 2];
                let slot = &mut n[d.cat as usize];
                match *slot {
                    Some(r) if r != rows => {
                        return Err(KeopsError::Argument {
                            index: k,
                            msg: format!(
                                "{} has {rows} rows but another {} argument has {r}",
                                d.cat.name(),
                                d.cat.name()
                            ),
                        })
                    }
                    _ => *slot = Some(rows),
                }
            }
        }
        let batch_strides = shapes
            .iter()
            .zip(&bases)
            .enumerate()
            .map(|(k, (&shape, &(_, base)))| {
                let lead = shape.len().saturating_sub(base);
                let mut out = vec![0usize; nbatch];
                let mut s: usize = shape[lead..].iter().product();
                for t in (0..lead).rev() {
                    if shape[t] != 1 {
                        out[nbatch - lead + t] = match strides {
                            Some(st) => st[k][t],
                            None => s,
                        };
                    }
                    s *= shape[t];
                }
                out
            })
            .collect();
        let layout = Layout {
            batch,
            batch_strides,
            // A side with no variable has one row, as in KeOps.
            n_i: n[0].unwrap_or(1),
            n_j: n[1].unwrap_or(1),
            axis: genred.axis,
            spec: genred.spec,
        };
        if let Some(k) = genred.spec.kind.k() {
            let (_, n_red) = layout.sizes();
            if k > n_red {
                return Err(KeopsError::Reduction {
                    reduction: genred.spec.kind.name().into(),
                    msg: format!("K = {k} is larger than the number of reduced rows ({n_red})"),
                });
            }
        }
        Ok(layout)
    }

    /// Number of batch entries.
    pub fn batch_len(&self) -> usize {
        self.batch.iter().product()
    }

    /// Offset of argument `k`'s data for the flat batch index `b`.
    pub fn batch_offset(&self, k: usize, b: usize) -> usize {
        let mut rem = b;
        let mut off = 0;
        for t in (0..self.batch.len()).rev() {
            let i = rem % self.batch[t];
            rem /= self.batch[t];
            off += i * self.batch_strides[k][t];
        }
        off
    }

    /// Number of output rows and of reduced rows.
    pub fn sizes(&self) -> (usize, usize) {
        if self.axis == 1 {
            (self.n_i, self.n_j)
        } else {
            (self.n_j, self.n_i)
        }
    }

    /// Shapes of the outputs (values, indices), row-major.
    pub fn output_shapes(&self) -> (Vec<usize>, Vec<usize>) {
        let spec = self.spec;
        let (n_out, _) = self.sizes();
        let mut base = self.batch.clone();
        base.push(n_out);
        let shape = |dim: usize| {
            let mut s = base.clone();
            match spec.kind.k() {
                Some(k) if spec.dim == 1 => s.push(k),
                Some(k) => s.extend([k, spec.dim]),
                None => s.push(dim),
            }
            s
        };
        let (dv, di) = spec.output_dims();
        (shape(dv), shape(di))
    }
}

/// Rows of argument `k` must be contiguous: the engines read a row as `dim` values in
/// a row and rows `dim` apart (batch dimensions are free: they become offsets).
fn check_rows_contiguous(k: usize, shape: &[usize], strides: &[usize], base: usize) -> Result<()> {
    if strides.len() != shape.len() {
        return Err(KeopsError::Argument {
            index: k,
            msg: format!("shape {shape:?} but strides {strides:?}: one stride per dimension"),
        });
    }
    let nd = shape.len();
    let dim = shape.last().copied().unwrap_or(1);
    let coord_ok = nd == 0 || dim <= 1 || strides[nd - 1] == 1;
    let rows_ok = base == 1 || nd < 2 || shape[nd - 2] <= 1 || strides[nd - 2] == dim;
    if coord_ok && rows_ok {
        return Ok(());
    }
    Err(KeopsError::Argument {
        index: k,
        msg: format!(
            "shape {shape:?} with strides {strides:?}: rows must be contiguous (strides \
             (..., {dim}, 1)); make a contiguous copy (e.g. tensor.contiguous())"
        ),
    })
}

/// A checked call: a [`Genred`] with arguments whose shapes fit, batch dimensions
/// broadcast, and sizes known. This is what engines execute.
#[derive(Debug)]
pub struct Problem<'a, T> {
    /// The reduction.
    pub genred: &'a Genred,
    /// The arguments, by position.
    pub args: Vec<Arg<'a, T>>,
    /// Their checked shapes.
    pub layout: Layout,
    /// Block-sparse mode: the blocks to visit (checked against the sizes).
    pub ranges: Option<&'a crate::ranges::Blocks>,
}

impl<'a, T: Element> Problem<'a, T> {
    /// Checks `args` against `genred`'s declarations.
    pub fn new(genred: &'a Genred, args: &[Arg<'a, T>]) -> Result<Self> {
        // Each array against its own shape first: the cross-argument checks of the
        // layout come after.
        for (k, a) in args.iter().enumerate() {
            let expected = a
                .shape
                .iter()
                .try_fold(1usize, |acc, &s| acc.checked_mul(s))
                .ok_or_else(|| KeopsError::Argument {
                    index: k,
                    msg: format!("shape {:?} has more elements than memory can hold", a.shape),
                })?;
            if a.data.len() != expected {
                return Err(KeopsError::Argument {
                    index: k,
                    msg: format!(
                        "shape {:?} needs {expected} values, got {}",
                        a.shape,
                        a.data.len()
                    ),
                });
            }
        }
        let shapes: Vec<&[usize]> = args.iter().map(|a| a.shape.as_slice()).collect();
        let layout = Layout::new(genred, &shapes)?;
        Ok(Problem {
            genred,
            args: args.to_vec(),
            layout,
            ranges: None,
        })
    }

    /// Restricts the problem to the blocks of `ranges` (its half for this axis),
    /// checked against the sizes.
    pub fn with_ranges(mut self, ranges: Option<&'a crate::ranges::Ranges>) -> Result<Self> {
        if let Some(r) = ranges {
            r.check(self.layout.n_i, self.layout.n_j, self.batch_len())?;
            self.ranges = Some(r.for_axis(self.genred.axis));
        }
        Ok(self)
    }

    /// For each output row (over the flattened batch), whether its reduction visits no
    /// pair: every row when the reduced axis is empty, and in block-sparse mode the rows
    /// in no cluster or in a cluster without reduced ranges.
    pub fn empty_rows(&self) -> Vec<bool> {
        let (n_out, n_red) = self.sizes();
        let total = self.batch_len() * n_out;
        match self.ranges {
            _ if n_red == 0 => vec![true; total],
            None => vec![false; total],
            Some(blocks) => blocks.empty_rows(total),
        }
    }

    /// Number of batch entries.
    pub fn batch_len(&self) -> usize {
        self.layout.batch_len()
    }

    /// Offset of argument `k`'s data for the flat batch index `b`.
    pub fn batch_offset(&self, k: usize, b: usize) -> usize {
        self.layout.batch_offset(k, b)
    }

    /// Number of output rows and of reduced rows.
    pub fn sizes(&self) -> (usize, usize) {
        self.layout.sizes()
    }

    /// Shapes of the outputs (values, indices).
    pub fn output_shapes(&self) -> (Vec<usize>, Vec<usize>) {
        self.layout.output_shapes()
    }
}

#[cfg(feature = "ndarray")]
mod ndarray_io {
    use super::{Arg, Array};
    use crate::error::KeopsError;
    use ndarray::{ArrayD, ArrayView, Dimension, IxDyn};

    impl<'a, T, D: Dimension> TryFrom<ArrayView<'a, T, D>> for Arg<'a, T> {
        type Error = KeopsError;
        /// Borrows a C-contiguous (standard layout) view; other layouts are an error
        /// (make a copy with `.as_standard_layout()`).
        fn try_from(v: ArrayView<'a, T, D>) -> Result<Self, KeopsError> {
            let shape = v.shape().to_vec();
            let data = v.to_slice().ok_or_else(|| {
                KeopsError::Arguments(format!(
                    "array of shape {shape:?} is not C-contiguous; pass `.as_standard_layout()`"
                ))
            })?;
            Ok(Arg { data, shape })
        }
    }

    impl<T> Array<T> {
        /// Converts into an `ndarray` array of the same shape.
        pub fn into_ndarray(self) -> ArrayD<T> {
            let n = self.data.len();
            ArrayD::from_shape_vec(IxDyn(&self.shape), self.data)
                .unwrap_or_else(|e| unreachable!("shape matches {n} values: {e}"))
        }
    }

    #[cfg(test)]
    mod tests {
        use crate::{Arg, Genred, Reduction};
        use ndarray::Array2;

        #[test]
        fn ndarray_round_trip() {
            let x = Array2::from_shape_fn((4, 2), |(i, k)| (i + k) as f64);
            let y = Array2::from_shape_fn((3, 2), |(j, k)| (j * k) as f64);
            let g = Genred::new(
                "SqDist(x,y)",
                &["x = Vi(0,2)", "y = Vj(1,2)"],
                Reduction::Min,
                1,
            )
            .unwrap();
            let out = g
                .call(&[
                    Arg::try_from(x.view()).unwrap(),
                    Arg::try_from(y.view()).unwrap(),
                ])
                .unwrap();
            let a = out.values.unwrap().into_ndarray();
            assert_eq!(a.shape(), &[4, 1]);
            let t = x.t();
            assert!(
                Arg::try_from(t).is_err(),
                "a transposed view is not C-contiguous"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauss() -> Genred {
        Genred::new(
            "Exp(-SqDist(x,y)) * b",
            &["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)"],
            Reduction::Sum,
            1,
        )
        .unwrap()
    }

    #[test]
    fn strided_layouts_take_their_batch_strides() {
        // x: a (2, 5, 3) view of a (2, 8, 3) buffer; y broadcast over the batch
        // (expand: stride 0); b a (1, 4, 1) array.
        let l = Layout::with_strides(
            &gauss(),
            &[&[2, 5, 3], &[2, 4, 3], &[1, 4, 1]],
            &[&[24, 3, 1], &[0, 3, 1], &[4, 1, 1]],
        )
        .unwrap();
        assert_eq!((l.batch.clone(), l.n_i, l.n_j), (vec![2], 5, 4));
        assert_eq!(l.batch_strides, vec![vec![24], vec![0], vec![0]]);
        assert_eq!((l.batch_offset(0, 1), l.batch_offset(1, 1)), (24, 0));
        // Contiguous strides give the same layout as `Layout::new`.
        let shapes: [&[usize]; 3] = [&[2, 5, 3], &[4, 3], &[4, 1]];
        let a = Layout::new(&gauss(), &shapes).unwrap();
        let b = Layout::with_strides(&gauss(), &shapes, &[&[15, 3, 1], &[3, 1], &[1, 1]]).unwrap();
        assert_eq!(
            (a.output_shapes(), a.batch_strides),
            (b.output_shapes(), b.batch_strides)
        );
    }

    #[test]
    fn rows_must_be_contiguous() {
        let shapes: [&[usize]; 3] = [&[5, 3], &[4, 3], &[4, 1]];
        // x[:, ::2]-like (coordinates 2 apart), then x.T-like (rows 1 apart).
        for bad in [[6, 2], [1, 5]] {
            let e = Layout::with_strides(&gauss(), &shapes, &[&bad, &[3, 1], &[1, 1]])
                .unwrap_err()
                .to_string();
            assert!(e.contains("argument 0") && e.contains("contiguous"), "{e}");
        }
        // Rows of one value, or a single row, have free strides.
        Layout::with_strides(
            &gauss(),
            &[&[1, 3], &[4, 3], &[4, 1]],
            &[&[7, 1], &[3, 1], &[1, 9]],
        )
        .unwrap();
        let e = Layout::with_strides(&gauss(), &shapes, &[&[3, 1], &[3, 1]]).unwrap_err();
        assert!(e.to_string().contains("3 shapes but 2 stride lists"), "{e}");
        let e = Layout::with_strides(&gauss(), &shapes, &[&[3, 1], &[3, 1], &[1]]).unwrap_err();
        assert!(e.to_string().contains("one stride per dimension"), "{e}");
    }

    #[test]
    fn variables_written_in_the_formula_keep_their_positions() {
        // d/dx twice of x + y is zero: y and both gradient inputs are simplified away,
        // but, as in pykeops, they still are arguments 1 to 3 (pykeops' own test).
        let g = Genred::new(
            "Grad(Grad(x + Var(1,3,1), x, Var(2,3,0)),x, Var(3,3,0))",
            &["x = Vi(0,3)"],
            Reduction::Sum,
            1,
        )
        .unwrap();
        let (vi, vj) = (
            ArgDecl {
                cat: Cat::Vi,
                dim: 3,
            },
            ArgDecl {
                cat: Cat::Vj,
                dim: 3,
            },
        );
        assert_eq!(g.args(), &[Some(vi), Some(vj), Some(vi), Some(vi)]);
        let x = [0.5; 6];
        let y = [0.25; 3];
        let args = [
            Arg::new(&x[..], [2, 3]),
            Arg::new(&y[..], [1, 3]),
            Arg::new(&x[..], [2, 3]),
            Arg::new(&x[..], [2, 3]),
        ];
        let v = g.call(&args).unwrap().values.unwrap();
        assert_eq!((v.data, v.shape), (vec![0.0; 6], vec![2, 3]));
        // The weight's written variables count too; a conflict is still one.
        let w = Genred::with_weight("x", "Vj(2,1)", &["x = Vi(0,1)"], Reduction::LogSumExp, 1);
        assert_eq!(w.unwrap().args().len(), 3);
        let e = Genred::new("x - x + Vj(0,1)", &["x = Vi(0,1)"], Reduction::Sum, 1);
        assert!(
            matches!(e, Err(KeopsError::Conflict { index: 0, .. })),
            "{e:?}"
        );
    }
}
