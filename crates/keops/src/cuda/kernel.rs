//! A reduction printed as a CUDA kernel: the per-pair function, the reduction's state
//! functions (init, accumulate, combine, finalize) and the kernel that folds tiles of
//! the reduced axis, staged through shared memory.
//!
//! Everything but the `__global__` kernel also compiles as host C, so that tests run
//! the state functions and the tile loop ([`KernelSource`]'s `fold`) on the CPU against
//! the oracle. The state layout is [`ReductionSpec::state_len`]'s, in the accumulation
//! type, so partial states from devices can be combined on the host.
//!
//! One kernel serves both schemes: block `(x, y, z)` = (block of output rows, chunk of
//! the reduced axis, batch). Each thread reduces `rows` consecutive output rows (a
//! constant of the source): every reduced-side value read from shared memory then
//! serves `rows` pairs, which cuts the instructions per pair where the formula is
//! cheap (a Gaussian sum). With one chunk (1D scheme) it finalizes into the outputs;
//! with several (2D scheme) it writes partial states that `{name}_combine` folds in
//! index order and finalizes. Reduced ranges are passed as `[j_lo, j_hi)` bounds per
//! chunk so that block-sparse ranges fit the same loop.

use super::chunks::{Chunked, Site, CHUNK};
use super::codegen::{pair_function_with, pointer_params, CType};
use super::columns::{self, Columns};
use super::prescale::Prescaled;
use crate::formula::{Cat, Formula};
use crate::plan::{AccType, Element, Genred, Options, SumScheme};
use crate::reduction::{Reduction, ReductionSpec};
use std::fmt::Write;

/// Output-side rows are copied into registers while their dimensions add up to at most
/// this (KeOps keeps them in registers up to its chunked mode's 64). The others are
/// summed chunk by chunk where the formula allows ([`super::chunks`]), else read in
/// place (a load per value and pair: at D = 64, more instructions than the arithmetic),
/// so that high dimensions do not spill registers.
pub const REG_DIM_MAX: usize = 64;

/// Most values (output-side rows and states, all rows together) a thread keeps in
/// registers when it reduces several rows ([`KernelSpec::max_rows`]).
pub const ROWS_REG_BUDGET: usize = 32;

/// Output rows a thread may reduce: [`KernelSpec::max_rows`] picks among these.
pub const ROWS_CHOICES: [usize; 3] = [1, 2, 4];

/// Where each argument lives for a thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A row of the output side (`Vi` when reducing over `j`): one per thread.
    Out,
    /// A row of the reduced side: staged through shared memory, tile by tile.
    Red,
    /// A parameter, the same for all threads.
    Param,
    /// A position no variable uses.
    Unused,
}

/// Everything that determines a kernel's source.
#[derive(Clone, Debug)]
pub struct KernelSpec {
    /// The reduced formula.
    pub formula: Formula,
    /// The weight formula, if any.
    pub weight: Option<Formula>,
    /// The reduction.
    pub spec: ReductionSpec,
    /// Role and dimension of each argument position.
    pub args: Vec<(Role, usize)>,
    /// Data type.
    pub ty: CType,
    /// Accumulation type of the states.
    pub acc: CType,
    /// Summation scheme within a tile (sums only).
    pub sum_scheme: SumScheme,
    /// Compiled with `--use_fast_math` ([`Options::fast_math`], float32 kernels only:
    /// it leaves float64 math as it is, and float64 kernels keep one cache entry).
    pub fast_math: bool,
    /// Set by [`KernelSpec::by_columns`]: the kernel computes one group of columns of a
    /// wide output per launch, `formula`, `weight`, `spec` and the wide arguments'
    /// dimensions being the group's.
    pub columns: Option<Columns>,
}

impl KernelSpec {
    /// The kernel of `genred` for data type `T` and the call's options.
    pub fn new<T: Element>(genred: &Genred, opts: &Options) -> KernelSpec {
        let ty = CType::of::<T>();
        let red_cat = genred.red_cat();
        let args = genred
            .args()
            .iter()
            .map(|d| match d {
                None => (Role::Unused, 0),
                Some(d) if d.cat == Cat::Pm => (Role::Param, d.dim),
                Some(d) if d.cat == red_cat => (Role::Red, d.dim),
                Some(d) => (Role::Out, d.dim),
            })
            .collect();
        let acc = match (ty, opts.dtype_acc) {
            (CType::F64, _) | (_, AccType::Float64) => CType::F64,
            _ => CType::F32,
        };
        KernelSpec {
            formula: genred.formula().clone(),
            weight: genred.weight().cloned(),
            spec: *genred.spec(),
            args,
            ty,
            acc,
            sum_scheme: opts.sum_scheme,
            fast_math: opts.fast_math && T::FAST_MATH,
            columns: None,
        }
    }

    /// The kernel of one group of columns where the output is too wide for registers
    /// and the formula allows it ([`super::columns`]); else `self`.
    pub fn by_columns(self) -> KernelSpec {
        let Some(n) = columns::plan(
            &self.formula,
            self.weight.as_ref(),
            &self.spec,
            self.acc.size(),
        ) else {
            return self;
        };
        let mut args = self.args;
        for &i in &n.columns.wide {
            args[i].1 = n.columns.width;
        }
        KernelSpec {
            formula: n.formula,
            weight: n.weight,
            spec: n.spec,
            args,
            columns: Some(n.columns),
            ..self
        }
    }

    /// The row stride (in values) of argument `i` in memory: its dimension, or the whole
    /// row's for an argument read by columns.
    fn row_stride(&self, i: usize) -> usize {
        match &self.columns {
            Some(c) if c.wide.contains(&i) => c.full,
            _ => self.args[i].1,
        }
    }

    /// Bytes of shared memory per row of a tile (all reduced-side arguments).
    /// Chunked, the rows staged chunk by chunk count for the chunk area: [`CHUNK`] values
    /// per row that one sum stages at once.
    pub fn tile_row_bytes(&self) -> usize {
        let (staged, slots) = match self.chunked() {
            Some(c) => (c.staged.clone(), c.chunk_slots()),
            None => (Vec::new(), 0),
        };
        let whole: usize = (0..self.args.len())
            .filter(|i| self.args[*i].0 == Role::Red && !staged.contains(i))
            .map(|i| self.args[i].1)
            .sum();
        (whole + slots * CHUNK) * self.ty.size()
    }

    /// Which arguments a thread copies into registers: output-side ones, in order, while
    /// their dimensions add up to at most [`REG_DIM_MAX`].
    pub fn in_registers(&self) -> Vec<bool> {
        let mut used = 0;
        self.args
            .iter()
            .map(|&(role, dim)| {
                let fits = role == Role::Out && used + dim <= REG_DIM_MAX;
                used += if fits { dim } else { 0 };
                fits
            })
            .collect()
    }

    /// The most output rows one thread may reduce: 1 when an output-side argument is read
    /// in place ([`KernelSpec::in_registers`]), else the largest of [`ROWS_CHOICES`]
    /// whose output-side values and states fit [`ROWS_REG_BUDGET`] registers.
    pub fn max_rows(&self) -> usize {
        let mut out_dims = 0;
        for (&(role, dim), in_reg) in self.args.iter().zip(self.in_registers()) {
            match (role, in_reg) {
                (Role::Out, false) => return 1,
                (Role::Out, true) => out_dims += dim,
                _ => {}
            }
        }
        let (sv, si) = self.spec.state_len();
        let word = |bytes: usize| bytes.div_ceil(4);
        // A state's values and 8-byte indices, and the in-tile copy of block sums.
        let mut per_row = out_dims + word(self.acc.size()) * sv + 2 * si;
        if self.spec.kind == Reduction::Sum && self.sum_scheme != SumScheme::Direct {
            per_row += word(self.acc.size()) * sv;
        }
        ROWS_CHOICES
            .iter()
            .copied()
            .filter(|&r| r == 1 || r * per_row <= ROWS_REG_BUDGET)
            .max()
            .unwrap_or(1)
    }

    /// The chunked form of the formula ([`super::chunks`]) when output-side rows are too
    /// wide for registers and enter it only through sums over their coordinates.
    pub fn chunked(&self) -> Option<Chunked> {
        super::chunks::plan(
            &self.formula,
            self.weight.as_ref(),
            &self.args,
            &self.in_registers(),
        )
    }

    /// The exponentials computed as `exp2` of distances between points scaled as they
    /// are loaded ([`super::prescale`]): float32 kernels with fast math, where the points are
    /// an output-side row in registers and a reduced-side row staged whole (not chunked).
    pub fn prescaled(&self) -> Option<Prescaled> {
        if !self.fast_math || self.ty != CType::F32 || self.chunked().is_some() {
            return None;
        }
        let regs = self.in_registers();
        let scalable: Vec<Option<Role>> = (self.args.iter().zip(regs))
            .map(|(&(role, _), reg)| {
                (role == Role::Red || (role == Role::Out && reg)).then_some(role)
            })
            .collect();
        let roots: Vec<&Formula> = std::iter::once(&self.formula).chain(&self.weight).collect();
        Prescaled::plan(&roots, &scalable)
    }

    /// Bytes of one state as the kernel stores it (for partial states of the 2D scheme).
    pub fn state_bytes(&self) -> usize {
        let (sv, si) = self.spec.state_len();
        // Values first, then 8-byte indices: the struct's size with C's padding.
        let v = sv.max(1) * self.acc.size();
        v.next_multiple_of(8) + si.max(1) * 8
    }
}

/// The printed kernel, with what the runtime needs to launch it.
#[derive(Clone, Debug)]
pub struct KernelSource {
    /// Full source (prelude included).
    pub code: String,
    /// Name of the reduction kernel.
    pub reduce: String,
    /// Name of the kernel combining partial states (2D scheme).
    pub combine: String,
    /// Name of the block-sparse reduction kernel.
    pub reduce_ranges: String,
}

/// Prints `spec` as functions and kernels prefixed by `name`, tiles of `tile` rows, each
/// thread reducing `rows` consecutive output rows (at most [`KernelSpec::max_rows`]).
/// Kernel parameters (see the module docs for the grid):
///
/// `{name}_reduce(int n_out, long long n_red, int nbatch, long long chunk,
///  long long j_base, const T* const* args, const long long* boff, T* out_v,
///  long long* out_i, STATE* part)`: `args[k]` is argument `k`'s data, `boff[b*NARGS+k]`
/// its offset for batch entry `b`, reduced indices are reported plus `j_base`; with
/// `part` non-null, chunk `c` of row `i` of batch `b` goes to
/// `part[(b*gridDim.y + c)*n_out + i]`.
///
/// `{name}_combine(int n_out, int nchunks, int nbatch, const STATE* part, T* out_v,
///  long long* out_i)`: one thread per output row.
///
/// `{name}_reduce_ranges(int n_out, const long long* task, const long long* red,
///  const T* const* args, const long long* boff, T* out_v, long long* out_i)`: block
/// `x` runs `task[5x..5x+5] = (b, row_start, row_end, q_start, q_end)`: rows
/// `row_start..row_end` of batch entry `b` (at most one block of `rows`-row threads)
/// reduced over the ranges `red[2q], red[2q+1]` (rows of entry `b`) for `q` in
/// `q_start..q_end`. Rows in no task are not written (the caller fills them with the
/// empty reduction).
pub fn kernel_source(k: &KernelSpec, name: &str, tile: usize, rows: usize) -> KernelSource {
    assert!(
        (1..=k.max_rows()).contains(&rows),
        "{rows} rows per thread for a kernel that allows {}",
        k.max_rows()
    );
    // The compile options are part of the source, so of the cache key.
    let mut s = String::from(if k.fast_math {
        "// compiled with --use_fast_math\n"
    } else {
        ""
    });
    s.push_str(&super::codegen::prelude(k.ty));
    s.push_str(&device_functions(k, name, tile, rows));
    // The kernels are device code (NVRTC) or the simulator's host C++ (`sim`).
    s.push_str("#if defined(__CUDACC__) || defined(KEOPS_SIM)\n");
    s.push_str(&kernels(k, name, tile, rows));
    s.push_str("#endif\n");
    KernelSource {
        code: s,
        reduce: format!("{name}_reduce"),
        combine: format!("{name}_combine"),
        reduce_ranges: format!("{name}_reduce_ranges"),
    }
}

/// `{name}_pair`, the state functions and `{name}_fold` (of `rows` rows, tiles of at most
/// `tile` reduced rows): host-compilable C. With wide output-side rows used only in sums
/// ([`KernelSpec::chunked`]), the pair function takes the sums as extra arguments, which
/// the fold computes chunk by chunk for its tile.
pub fn device_functions(k: &KernelSpec, name: &str, tile: usize, rows: usize) -> String {
    let chunked = k.chunked();
    let nargs = k.args.len();
    let (f, w, npair) = match &chunked {
        Some(c) => (&c.formula, c.weight.as_ref(), nargs + c.sums.len()),
        None => (&k.formula, k.weight.as_ref(), nargs),
    };
    let (df, dw) = (k.spec.dim, k.spec.weight_dim.unwrap_or(0));
    let pre = k.prescaled();
    let mut s = String::new();
    s.push_str(&pair_function_with(
        f,
        &format!("{name}_F"),
        npair,
        pre.as_ref(),
    ));
    if let Some(w) = w {
        s.push_str(&pair_function_with(
            w,
            &format!("{name}_G"),
            npair,
            pre.as_ref(),
        ));
    }
    if let Some(c) = &chunked {
        s.push_str(&c.functions(name, &k.args));
    }
    let params = pointer_params(npair);
    let pass: String = (0..npair).map(|i| format!("a{i}, ")).collect();
    let _ = writeln!(
        s,
        "KEOPS_FN void {name}_pair({params}T* fg) {{ {name}_F({pass}fg);{} }}",
        if w.is_some() {
            format!(" {name}_G({pass}fg + {df});")
        } else {
            String::new()
        }
    );
    s.push_str(&state_functions(k, name, dw));
    s.push_str(&fold_function(k, name, df + dw, rows, chunked.as_ref()));
    s.push_str(&tile_function(
        k,
        name,
        tile,
        rows,
        chunked.as_ref(),
        pre.as_ref(),
    ));
    s
}

/// Host C only (tests): `{name}_tile(states, comp, a0.., j0, len)`, a tile as the
/// kernel folds it from whole rows: scaled copies of the points of `fold`'s exponentials
/// and the chunked sums first, if any, then `{name}_fold`.
fn tile_function(
    k: &KernelSpec,
    name: &str,
    tile: usize,
    rows: usize,
    chunked: Option<&Chunked>,
    pre: Option<&Prescaled>,
) -> String {
    let nargs = k.args.len();
    let params = pointer_params(nargs);
    let pass: String = (0..nargs).map(|i| format!("a{i}, ")).collect();
    let (sums, parts) = match chunked {
        Some(c) => (
            c.pass(name, &k.args, tile, Site::Host, &|i| format!("a{i}")),
            c.part_args(),
        ),
        None => (String::new(), String::new()),
    };
    let mut body = format!("  {sums}\n  {name}_fold(s, comp, {pass}{parts}j0, len);\n");
    if let Some(f) = pre {
        let dims: Vec<usize> = k.args.iter().map(|a| a.1).collect();
        let out: Vec<bool> = k.args.iter().map(|a| a.0 == Role::Out).collect();
        body = f.host_copies(&dims, &rows.to_string(), "len", &out, &body);
    }
    format!(
        "#ifndef __CUDACC__\n#include <stdlib.h>\nstatic void {name}_tile(struct {name}_state* s, {a}* comp, {params}long long j0, int len) {{\n  \
         const int live = 1; (void)live;\n{body}}}\n#endif\n",
        a = k.acc.name()
    )
}

/// The state struct and its init / acc / combine / final functions (C, host and
/// device), mirroring [`ReductionSpec`]'s reference implementation.
fn state_functions(k: &KernelSpec, name: &str, dw: usize) -> String {
    let spec = &k.spec;
    let (sv, si) = spec.state_len();
    let (a, f) = match k.acc {
        CType::F32 => ("float", "f"),
        CType::F64 => ("double", ""),
    };
    let st = format!("struct {name}_state");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{st} {{ {a} v[{}]; long long i[{}]; }};",
        sv.max(1),
        si.max(1)
    );
    // exp(m - m_new), exactly 1 when equal (infinities included), as `reduction::shift`.
    let _ = writeln!(
        s,
        "KEOPS_FN {a} {name}_shift({a} m, {a} n) {{ return m == n ? ({a})1 : exp{f}(m - n); }}"
    );
    let d = spec.dim;
    let lse_n = if spec.weight_dim.is_some() { 1 } else { d };
    let (init, acc, comb) = match spec.kind {
        Reduction::Sum => (
            format!("for (int c = 0; c < {d}; c++) s->v[c] = 0;"),
            format!("for (int c = 0; c < {d}; c++) s->v[c] += ({a})fg[c];"),
            format!("for (int c = 0; c < {d}; c++) s->v[c] += o->v[c];"),
        ),
        Reduction::LogSumExp | Reduction::SumSoftMaxWeight => {
            let init = format!(
                "for (int c = 0; c < {}; c++) s->v[c] = c < {lse_n} ? -({a})INFINITY : ({a})0;",
                sv
            );
            // (m, s, ws) represents exp(m) * (s, ws); -inf values add nothing. Without a
            // weight, branch-free (selects, one exp): a -inf value counted while m is
            // still -inf leaves exp(m) * s = 0, as skipping it would.
            let acc = if spec.weight_dim.is_none() {
                format!(
                    "for (int c = 0; c < {d}; c++) {{ {a} x = fg[c], m = s->v[c], t = s->v[{d} + c];\n\
                     \x20   {a} e = x == m ? ({a})1 : exp{f}(-fabs{f}(x - m));\n\
                     \x20   s->v[{d} + c] = x > m ? t * e + 1 : t + e;\n\
                     \x20   s->v[c] = x > m ? x : m; }}"
                )
            } else {
                format!(
                    "{a} x = fg[0], m = s->v[0];\n  if (x == -({a})INFINITY) return;\n  \
                     if (x > m) {{ {a} e = {name}_shift(m, x); s->v[1] = s->v[1] * e + 1;\n    \
                     for (int c = 0; c < {dw}; c++) s->v[2 + c] = s->v[2 + c] * e + fg[1 + c];\n    \
                     s->v[0] = x; }}\n  \
                     else {{ {a} e = {name}_shift(x, m); s->v[1] += e;\n    \
                     for (int c = 0; c < {dw}; c++) s->v[2 + c] += e * fg[1 + c]; }}"
                )
            };
            let comb = if spec.weight_dim.is_none() {
                format!(
                    "for (int c = 0; c < {d}; c++) {{ {a} m = s->v[c] > o->v[c] ? s->v[c] : o->v[c];\n\
                     \x20   {a} fa = {name}_shift(s->v[c], m), fb = {name}_shift(o->v[c], m);\n\
                     \x20   s->v[c] = m; s->v[{d} + c] = s->v[{d} + c] * fa + o->v[{d} + c] * fb; }}"
                )
            } else {
                format!(
                    "{a} m = s->v[0] > o->v[0] ? s->v[0] : o->v[0];\n  \
                     {a} fa = {name}_shift(s->v[0], m), fb = {name}_shift(o->v[0], m);\n  \
                     s->v[0] = m;\n  for (int c = 1; c < {sv}; c++) s->v[c] = s->v[c] * fa + o->v[c] * fb;"
                )
            };
            (init, acc, comb)
        }
        Reduction::Min
        | Reduction::Max
        | Reduction::ArgMin
        | Reduction::ArgMax
        | Reduction::MinArgMin
        | Reduction::MaxArgMax => {
            let max = matches!(
                spec.kind,
                Reduction::Max | Reduction::ArgMax | Reduction::MaxArgMax
            );
            let (cmp, inf) = if max { (">", "-") } else { ("<", "") };
            (
                format!(
                    "for (int c = 0; c < {d}; c++) {{ s->v[c] = {inf}({a})INFINITY; s->i[c] = -1; }}"
                ),
                // NaN is never selected: comparisons with NaN are false.
                format!(
                    "for (int c = 0; c < {d}; c++) if (({a})fg[c] {cmp} s->v[c]) {{ s->v[c] = fg[c]; s->i[c] = j; }}"
                ),
                format!(
                    "for (int c = 0; c < {d}; c++) if (o->v[c] {cmp} s->v[c]) {{ s->v[c] = o->v[c]; s->i[c] = o->i[c]; }}"
                ),
            )
        }
        Reduction::KMin(kk) | Reduction::ArgKMin(kk) | Reduction::KMinArgKMin(kk) => {
            // Sorted insertion, layout [k][d]; equal values keep the earlier index first.
            // Compare-and-swap down the unrolled list: constant indices keep the state
            // in registers (a shifting loop would put it in local memory).
            let _ = writeln!(
                s,
                "KEOPS_FN void {name}_insert({st}* s, int c, {a} x, long long j) {{\n  \
                 if (!(x < s->v[{last} + c])) return;\n  \
                 KEOPS_UNROLL for (int r = 0; r < {kk}; r++) {{\n    \
                 {a} v = s->v[r * {d} + c]; long long i = s->i[r * {d} + c];\n    \
                 if (x < v) {{ s->v[r * {d} + c] = x; s->i[r * {d} + c] = j; x = v; j = i; }} }} }}",
                last = (kk - 1) * d,
            );
            (
                format!(
                    "for (int c = 0; c < {}; c++) {{ s->v[c] = ({a})INFINITY; s->i[c] = -1; }}",
                    kk * d
                ),
                format!("for (int c = 0; c < {d}; c++) {name}_insert(s, c, ({a})fg[c], j);"),
                format!(
                    "for (int c = 0; c < {d}; c++) for (int r = 0; r < {kk}; r++) {{\n    \
                     {a} x = o->v[r * {d} + c]; long long j = o->i[r * {d} + c];\n    \
                     if (j < 0 && x == ({a})INFINITY) break;\n    {name}_insert(s, c, x, j); }}"
                ),
            )
        }
    };
    let _ = writeln!(s, "KEOPS_FN void {name}_init({st}* s) {{\n  {init}\n}}");
    let _ = writeln!(
        s,
        "KEOPS_FN void {name}_acc({st}* s, const T* fg, long long j) {{\n  (void)j;\n  {acc}\n}}"
    );
    let _ = writeln!(
        s,
        "KEOPS_FN void {name}_combine_states({st}* s, const {st}* o) {{\n  {comb}\n}}"
    );
    // Kahan-compensated sums: `comp` holds the running error, removed at the end.
    if spec.kind == Reduction::Sum {
        let _ = writeln!(
            s,
            "KEOPS_FN void {name}_acc_kahan({st}* s, {a}* comp, const T* fg) {{\n  \
             for (int c = 0; c < {d}; c++) {{ {a} y = ({a})fg[c] - comp[c]; {a} t = s->v[c] + y;\n    \
             comp[c] = (t - s->v[c]) - y; s->v[c] = t; }}\n}}"
        );
    }
    let fin = match spec.kind {
        Reduction::Sum | Reduction::Min | Reduction::Max | Reduction::KMin(_) => {
            format!("for (int c = 0; c < {sv}; c++) ov[c] = (T)s->v[c];")
        }
        Reduction::ArgMin | Reduction::ArgMax | Reduction::ArgKMin(_) => {
            format!("for (int c = 0; c < {si}; c++) oi[c] = s->i[c];")
        }
        Reduction::MinArgMin | Reduction::MaxArgMax | Reduction::KMinArgKMin(_) => {
            format!("for (int c = 0; c < {sv}; c++) {{ ov[c] = (T)s->v[c]; oi[c] = s->i[c]; }}")
        }
        Reduction::LogSumExp => match spec.weight_dim {
            None => format!(
                "for (int c = 0; c < {d}; c++) ov[c] = (T)(s->v[c] + log{f}(s->v[{d} + c]));"
            ),
            Some(w) => {
                format!("for (int c = 0; c < {w}; c++) ov[c] = (T)(s->v[0] + log{f}(s->v[2 + c]));")
            }
        },
        Reduction::SumSoftMaxWeight => format!(
            "for (int c = 0; c < {}; c++) ov[c] = (T)(s->v[2 + c] / s->v[1]);",
            dw
        ),
    };
    let _ = writeln!(
        s,
        "KEOPS_FN void {name}_final(const {st}* s, T* ov, long long* oi) {{\n  (void)ov; (void)oi;\n  {fin}\n}}"
    );
    s
}

/// `{name}_fold(states, comp, a0.., j0, len)`: folds `len` rows of the reduced side
/// into the states of `rows` output rows. Reduced-side `ak` point to the first row (row
/// `jj` at `ak + jj*dim`), output-side ones to the first of `rows` consecutive rows,
/// parameters to their values. Block summation sums a tile into its own states first;
/// Kahan carries `comp` (`rows` runs of `max(state values, 1)`) across calls. The row
/// loop is innermost, so that each reduced-side value is read once for all rows. Chunked
/// (one row per thread), it also takes the tile's sums, `part{q}` (pair `jj` at
/// `part{q} + jj`), computed before it by [`Chunked::pass`].
fn fold_function(
    k: &KernelSpec,
    name: &str,
    dfg: usize,
    rows: usize,
    chunked: Option<&Chunked>,
) -> String {
    let (a, nargs) = (k.acc.name(), k.args.len());
    let st = format!("struct {name}_state");
    let sv1 = k.spec.state_len().0.max(1);
    let mut pair_args: String = k
        .args
        .iter()
        .enumerate()
        .map(|(i, (role, dim))| match role {
            Role::Red => format!("a{i} + jj * {dim}, "),
            Role::Out => format!("a{i} + r * {dim}, "),
            _ => format!("a{i}, "),
        })
        .collect();
    // Chunked: the tile's sums, computed before the fold (`Chunked::pass`).
    let mut params = pointer_params(nargs);
    if let Some(c) = chunked {
        assert_eq!(rows, 1, "chunked kernels reduce one row per thread");
        for q in 0..c.sums.len() {
            let _ = write!(params, "const T* part{q}, ");
            let _ = write!(pair_args, "part{q} + jj, ");
        }
    }
    let scheme = if k.spec.kind == Reduction::Sum {
        k.sum_scheme
    } else {
        SumScheme::Direct
    };
    let each = format!("KEOPS_UNROLL for (int r = 0; r < {rows}; r++)");
    // Unrolled by 4 over the tile, so that one row's worth of loop overhead and vector
    // loads serves 4 * `rows` pairs; NVRTC does so by itself for one row per thread
    // (asking costs compile time).
    let unroll_j = if rows > 1 { "KEOPS_UNROLL_J " } else { "" };
    let (pre, step, post) = match scheme {
        SumScheme::Direct => (
            String::new(),
            format!("{name}_acc(&s[r], fg, j0 + jj);"),
            String::new(),
        ),
        SumScheme::BlockSum => (
            format!("{st} t[{rows}]; {each} {name}_init(&t[r]);"),
            format!("{name}_acc(&t[r], fg, j0 + jj);"),
            format!("{each} {name}_combine_states(&s[r], &t[r]);"),
        ),
        SumScheme::Kahan => (
            String::new(),
            format!("{name}_acc_kahan(&s[r], comp + r * {sv1}, fg);"),
            String::new(),
        ),
    };
    format!(
        "KEOPS_FN void {name}_fold({st}* s, {a}* comp, {params}long long j0, int len) {{\n  \
         (void)comp; {pre}\n  \
         {unroll_j}for (int jj = 0; jj < len; jj++) {{\n    {each} {{\n      T fg[{dfg}];\n      \
         {name}_pair({pair_args}fg);\n      {step}\n    }}\n  }}\n  {post}\n}}\n"
    )
}

/// The `__global__` kernels (CUDA only). Thread `t` of a block reduces the `rows`
/// consecutive output rows from `i0`; rows past the block's last (`row_end`) are
/// computed from a copy of the last row and not written.
fn kernels(k: &KernelSpec, name: &str, tile: usize, rows: usize) -> String {
    let t = k.ty.name();
    let a = k.acc.name();
    let st = format!("struct {name}_state");
    let nargs = k.args.len().max(1);
    let (dv, di) = k.spec.output_dims();
    let (sv, _) = k.spec.state_len();
    let sv1 = sv.max(1);
    let mut setup = String::new();
    let mut load = String::new();
    let mut smem_off = 0usize;
    let regs = k.in_registers();
    let chunked = k.chunked();
    let staged = chunked.as_ref().map_or(&[][..], |c| &c.staged[..]);
    // Points of exponentials computed as `exp2` are scaled as they are loaded, centered
    // on the block's first output row (`center_row`, set by each kernel).
    let pre = k.prescaled();
    let scaled = |i: usize, value: &str, coord: &str| {
        Prescaled::load(pre.as_ref(), i, value, &format!("c{i}"), coord)
    };
    for i in 0..k.args.len() {
        if let Some(s) = pre.as_ref().and_then(|p| p.scale(i)) {
            let _ = writeln!(
                setup,
                "    const T* c{i} = args[{c}] + off[{c}] + center_row * {d};",
                c = s.center,
                d = k.row_stride(s.center)
            );
        }
    }
    // Each argument's pointer for the fold and the chunk pass.
    let mut ptrs: Vec<String> = Vec::new();
    for (i, &(role, dim)) in k.args.iter().enumerate() {
        let stride = k.row_stride(i);
        let ptr = match role {
            Role::Out if regs[i] => {
                let _ = writeln!(
                    setup,
                    "    T r{i}[{n}]; const T* a{i} = r{i};\n    \
                     if (live) KEOPS_UNROLL for (int r = 0; r < {rows}; r++) {{\n      \
                     const long long row = i0 + r < row_end ? i0 + r : row_end - 1;\n      \
                     KEOPS_UNROLL for (int c = 0; c < {dim}; c++) r{i}[r * {dim} + c] = {v}; }}",
                    n = rows * dim,
                    v = scaled(i, &format!("args[{i}][off[{i}] + row * {stride} + c]"), "c"),
                );
                format!("a{i}")
            }
            // Read in place: one row per thread (`KernelSpec::max_rows`).
            Role::Out => {
                let _ = writeln!(
                    setup,
                    "    const T* a{i} = args[{i}] + off[{i}] + (live ? i0 : 0) * {stride};"
                );
                format!("a{i}")
            }
            Role::Param => {
                let _ = writeln!(setup, "    const T* a{i} = args[{i}] + off[{i}];");
                format!("a{i}")
            }
            // Staged chunk by chunk by the chunk pass; the fold does not read it.
            Role::Red if staged.contains(&i) => "tile".to_string(),
            Role::Red => {
                // Rows read by columns: `dim` values of each `stride`.
                let at = if stride == dim {
                    format!("(j0 - j_base) * {dim} + e")
                } else {
                    format!("(j0 - j_base + e / {dim}) * {stride} + e % {dim}")
                };
                let _ = writeln!(
                    load,
                    "      for (int e = threadIdx.x; e < len * {dim}; e += blockDim.x) \
                     tile[{smem_off} + e] = {v};",
                    v = scaled(
                        i,
                        &format!("args[{i}][off[{i}] + {at}]"),
                        &format!("e % {dim}")
                    ),
                );
                let ptr = format!("tile + {smem_off}");
                smem_off += tile * dim;
                ptr
            }
            Role::Unused => "0".to_string(),
        };
        ptrs.push(ptr);
    }
    let fold_args: String = ptrs.iter().map(|p| format!("{p}, ")).collect();
    let (sums, parts) = match &chunked {
        Some(c) => (
            c.pass(name, &k.args, tile, Site::Kernel { base: smem_off }, &|i| {
                ptrs[i].clone()
            }),
            c.part_args(),
        ),
        None => (String::new(), String::new()),
    };
    let kahan_fix = if k.spec.kind == Reduction::Sum && k.sum_scheme == SumScheme::Kahan {
        format!("for (int c = 0; c < {sv}; c++) st[r].v[c] -= comp[r * {sv1} + c];")
    } else {
        String::new()
    };
    // Outputs by columns: the group's values of rows of the whole width.
    let (dv, di) = match &k.columns {
        Some(c) => ((dv > 0) as usize * c.full, (di > 0) as usize * c.full),
        None => (dv, di),
    };
    let out_v = if dv > 0 {
        format!("out_v + ((long long)b * n_out + i) * {dv}")
    } else {
        "0".into()
    };
    let out_i = if di > 0 {
        format!("out_i + ((long long)b * n_out + i) * {di}")
    } else {
        "0".into()
    };
    // `rows` output rows per thread, folding the tiles of [lo, hi) into their states.
    let fold_range = format!(
        "    for (long long j0 = lo; j0 < hi; j0 += {tile}) {{
      const int len = hi - j0 < {tile} ? (int)(hi - j0) : {tile};
      __syncthreads();
{load}      __syncthreads();
      {sums}
      if (live) {name}_fold(st, comp, {fold_args}{parts}j0, len);
    }}
"
    );
    let init = format!(
        "{st} st[{rows}];
    KEOPS_UNROLL for (int r = 0; r < {rows}; r++) {name}_init(&st[r]);
    {a} comp[{nc}];
    KEOPS_UNROLL for (int c = 0; c < {nc}; c++) comp[c] = 0;",
        nc = rows * sv1
    );
    // Each live row: its partial state (2D scheme) or its outputs.
    let store = |part: bool| {
        let write = if part {
            format!(
                "if (part) part[((long long)b * gridDim.y + blockIdx.y) * n_out + i] = st[r];\n        \
                 else {name}_final(&st[r], {out_v}, {out_i});"
            )
        } else {
            format!("{name}_final(&st[r], {out_v}, {out_i});")
        };
        format!(
            "KEOPS_UNROLL for (int r = 0; r < {rows}; r++) {{
      const long long i = i0 + r;
      if (i < row_end) {{
        {kahan_fix}
        {write}
      }}
    }}"
        )
    };
    let (store_reduce, store_ranges) = (store(true), store(false));
    let head = format!(
        "extern __shared__ __align__(16) unsigned char {name}_smem[];
  {t}* tile = ({t}*){name}_smem;
  (void)tile;"
    );
    format!(
        "extern \"C\" __global__ void {name}_reduce(int n_out, long long n_red, int nbatch, long long chunk,
    long long j_base, const {t}* const* args, const long long* boff, {t}* out_v, long long* out_i, {st}* part) {{
  {head}
  const long long i0 = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * {rows};
  const long long center_row = (long long)blockIdx.x * blockDim.x * {rows};
  (void)center_row;
  const long long row_end = n_out;
  const bool live = i0 < row_end;
  const long long lo = j_base + (long long)blockIdx.y * chunk;
  const long long hi = lo + chunk < j_base + n_red ? lo + chunk : j_base + n_red;
  for (int b = blockIdx.z; b < nbatch; b += gridDim.z) {{
    const long long* off = boff + (long long)b * {nargs};
    (void)off;
{setup}    {init}
{fold_range}    {store_reduce}
  }}
}}
extern \"C\" __global__ void {name}_combine(int n_out, int nchunks, int nbatch, const {st}* part,
    {t}* out_v, long long* out_i) {{
  const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= (long long)nbatch * n_out) return;
  const int b = (int)(t / n_out), i = (int)(t % n_out);
  {st} st = part[(long long)b * nchunks * n_out + i];
  for (int c = 1; c < nchunks; c++) {name}_combine_states(&st, &part[((long long)b * nchunks + c) * n_out + i]);
  {name}_final(&st, {out_v}, {out_i});
}}
extern \"C\" __global__ void {name}_reduce_ranges(int n_out, const long long* task, const long long* red,
    const {t}* const* args, const long long* boff, {t}* out_v, long long* out_i) {{
  {head}
  const long long* tk = task + 5 * (long long)blockIdx.x;
  const int b = (int)tk[0];
  const long long i0 = tk[1] + (long long)threadIdx.x * {rows};
  const long long row_end = tk[2];
  const long long center_row = tk[1];
  (void)center_row;
  const bool live = i0 < row_end;
  const long long j_base = 0;
  (void)j_base; (void)n_out;
  const long long* off = boff + (long long)b * {nargs};
  (void)off;
{setup}  {init}
  for (long long q = tk[3]; q < tk[4]; q++) {{
    const long long lo = red[2 * q], hi = red[2 * q + 1];
{fold_range}  }}
  {store_ranges}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Genred;

    fn gauss(axis: usize) -> Genred {
        Genred::new(
            "Exp(-SqDist(x,y)) * b",
            &["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)"],
            Reduction::Sum,
            axis,
        )
        .unwrap()
    }

    #[test]
    fn roles_follow_the_axis() {
        let k = KernelSpec::new::<f32>(&gauss(1), &Options::default());
        assert_eq!(k.args, vec![(Role::Out, 3), (Role::Red, 3), (Role::Red, 1)]);
        assert_eq!(k.tile_row_bytes(), 16);
        let k = KernelSpec::new::<f64>(&gauss(0), &Options::default());
        assert_eq!(k.args, vec![(Role::Red, 3), (Role::Out, 3), (Role::Out, 1)]);
        assert_eq!((k.ty, k.acc), (CType::F64, CType::F64));
    }

    #[test]
    fn rows_and_registers_follow_the_dimensions() {
        let k = KernelSpec::new::<f32>(&gauss(1), &Options::default());
        assert_eq!(k.in_registers(), vec![true, false, false]);
        // x (3) and a sum state with its block copy: 5 values per row, 4 rows.
        assert_eq!(k.max_rows(), 4);
        let knn = |d: usize, k: usize| {
            let (x, y) = (format!("x = Vi(0,{d})"), format!("y = Vj(1,{d})"));
            let g = Genred::new("SqDist(x,y)", &[&x, &y], Reduction::ArgKMin(k), 1).unwrap();
            KernelSpec::new::<f32>(&g, &Options::default())
        };
        // K = 10: 10 values and 10 indices per state, one row per thread.
        assert_eq!(knn(3, 10).max_rows(), 1);
        assert_eq!(knn(3, 2).max_rows(), 2);
        assert_eq!(knn(64, 1).in_registers(), vec![true, false]);
        // Past the budget: read in place, one row per thread.
        let wide = knn(65, 1);
        assert_eq!((wide.in_registers()[0], wide.max_rows()), (false, 1));
        let g = Genred::new(
            "SqDist(x,y) + SqDist(u,v)",
            &[
                "x = Vi(0,40)",
                "y = Vj(1,40)",
                "u = Vi(2,40)",
                "v = Vj(3,40)",
            ],
            Reduction::Min,
            1,
        )
        .unwrap();
        let k = KernelSpec::new::<f32>(&g, &Options::default());
        assert_eq!(k.in_registers(), vec![true, false, false, false]);
        let src = kernel_source(&k, "k", 64, 1).code;
        assert!(src.contains("T r0[40]") && src.contains("const T* a2 = args[2] + off[2]"));
    }

    #[test]
    fn kernels_are_guarded_for_host_c() {
        let k = KernelSpec::new::<f32>(&gauss(1), &Options::default());
        let src = kernel_source(&k, "keops", 128, 1);
        let host_part = src
            .code
            .split("#if defined(__CUDACC__) || defined(KEOPS_SIM)\nextern")
            .next()
            .unwrap();
        assert!(!host_part.contains("__global__"));
        assert!(src.code.contains("keops_reduce(") && src.code.contains("keops_combine("));
        assert!(src.code.contains("tile[0 + e]") && src.code.contains("tile[384 + e]"));
    }

    #[test]
    fn fast_math_is_part_of_the_source() {
        let strict = KernelSpec::new::<f32>(&gauss(1), &Options::default());
        let fast = KernelSpec::new::<f32>(
            &gauss(1),
            &Options {
                fast_math: true,
                ..Options::default()
            },
        );
        let (a, b) = (
            kernel_source(&strict, "k", 64, 1),
            kernel_source(&fast, "k", 64, 1),
        );
        assert!(!strict.fast_math && fast.fast_math);
        assert_ne!(a.code, b.code, "the cache key must tell them apart");
        let fast64 = KernelSpec::new::<f64>(
            &gauss(1),
            &Options {
                fast_math: true,
                ..Options::default()
            },
        );
        assert!(!fast64.fast_math, "float64 math is the same with it");
    }

    #[test]
    fn state_bytes_match_c_layout() {
        let g = Genred::new(
            "SqDist(x,y)",
            &["x = Vi(0,3)", "y = Vj(1,3)"],
            Reduction::ArgKMin(5),
            1,
        )
        .unwrap();
        let k = KernelSpec::new::<f32>(&g, &Options::default());
        // 5 floats (20 bytes, padded to 24) + 5 indices.
        assert_eq!(k.state_bytes(), 24 + 40);
    }
}
