//! Exponentials of scaled squared distances, `exp(c |a - b|^2)` and `exp(c |a - b|)`,
//! computed as `exp2` of a distance between points scaled as they are loaded.
//!
//! With fast math, `exp(u)` is the GPU's `ex2(u * log2 e)`: a multiplication besides the
//! special-function instruction, which a Gaussian sum at D = 3 (3 differences, 3 squares,
//! the product by the weight) pays at every pair. Where `a` and `b` enter the formulas
//! only through such distances, the kernel loads them as `s (a - r)` and `s (b - r)`
//! (once per thread for output-side rows, once per block and tile for reduced-side rows),
//! with `s = sqrt(|c| log2 e)` (`exp(c r2) = exp2(±|s a - s b|^2)`) or `s = |c| log2 e`
//! (for `exp(c |a - b|)`). The loop over pairs then keeps the distance and the `exp2`: the
//! product by `log2 e`, the negation and the constant factors of `c` are gone (a Gaussian
//! sum: 8.6 instructions per pair on sm_90 instead of 9.6). Factors of `c` that read
//! parameters stay in the loop.
//!
//! The center `r` is the first output-side row of the thread block (of the output-side
//! variable of lowest index among those the exponentials connect), so that rounding the
//! loaded points costs half an ulp of `s |a - r|`, not of `s |a|`: the result does not
//! depend on where the origin is (float32 data at 1000 with a width of 1 would otherwise
//! lose three digits), and for data sorted by position (as block-sparse reductions
//! require) `|a - r|` is the block's extent. What remains is the rounding of scaling
//! data spread over `R` widths (`1 / sqrt|c|`) from `r`, which the kernel without it
//! (like pykeops') avoids by subtracting unscaled points: an exponential `exp(-u)` gets a
//! relative error of about `2 sqrt(u) R` float32 epsilons.
//!
//! Float32 kernels with fast math only ([`super::kernel::KernelSpec::prescaled`]); sites
//! whose two variables are one output-side and one reduced-side variable only (the
//! center comes from the output side).

use super::codegen::literal;
use super::kernel::Role;
use crate::formula::eval::PointEvaluator;
use crate::formula::pattern::{depends_on, scaled_sqdist, Factors};
use crate::formula::{topo_order, Binary, Cat, Formula, Op, Unary};
use std::collections::{HashMap, HashSet};

/// How a scaled argument is loaded: `factor * (value - center row's value)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scaling {
    /// What the centered value is multiplied by.
    pub factor: f64,
    /// The output-side argument whose first row (of the thread block) is the center.
    pub center: usize,
}

/// One `exp(c r2)` (or `exp(c sqrt(r2))`) computed as an `exp2`.
#[derive(Clone, Debug)]
struct Site {
    /// The `Exp` node.
    exp: Formula,
    /// The two variables of its squared distance.
    vars: (Formula, Formula),
    /// `exp(c sqrt(r2))`.
    sqrt: bool,
    /// Whether the constant part of `c` is negative.
    neg: bool,
    /// Factors of `c` that read parameters (they stay in the loop).
    params: Factors,
    /// What the variables are multiplied by as they are loaded.
    scale: f64,
    /// Nodes between `exp` and the variables: only `exp` may use them, since they are
    /// computed (if at all) from the scaled points.
    inner: HashSet<u64>,
}

/// The exponentials a kernel computes as `exp2`, and how each argument is loaded.
#[derive(Clone, Debug)]
pub struct Prescaled {
    sites: Vec<Site>,
    scales: Vec<Option<Scaling>>,
}

impl Prescaled {
    /// The sites of `roots` (the formula and the weight) whose two variables are an
    /// output-side and a reduced-side argument that may be scaled as they are loaded
    /// (`scalable[k]`: the role of argument `k`, `None` if it may not) and are used
    /// nowhere else; `None` if there is none.
    pub fn plan(roots: &[&Formula], scalable: &[Option<Role>]) -> Option<Prescaled> {
        let roots: Vec<Formula> = roots.iter().map(|f| (*f).clone()).collect();
        let nodes = topo_order(&roots);
        let mut parents: HashMap<u64, HashSet<u64>> = HashMap::new();
        for n in &nodes {
            for a in &n.args {
                parents.entry(a.id()).or_default().insert(n.id());
            }
        }
        let arg = |v: &Formula| v.as_var().map(|(_, k)| k);
        let mut sites: Vec<Site> = nodes
            .iter()
            .filter_map(|n| Site::find(n, &parents))
            .filter(|s| {
                let role = |v: &Formula| arg(v).and_then(|k| scalable.get(k).copied().flatten());
                matches!(
                    (role(&s.vars.0), role(&s.vars.1)),
                    (Some(Role::Out), Some(Role::Red)) | (Some(Role::Red), Some(Role::Out))
                )
            })
            .collect();
        // A variable is scaled for all its uses: drop the sites of a variable used
        // elsewhere, or by sites of different scales, until none is left to drop.
        loop {
            let mut scale: HashMap<usize, f64> = HashMap::new();
            let mut conflict: HashSet<usize> = HashSet::new();
            for s in &sites {
                for v in [&s.vars.0, &s.vars.1] {
                    let k = arg(v).unwrap_or(usize::MAX);
                    if *scale.entry(k).or_insert(s.scale) != s.scale {
                        conflict.insert(k);
                    }
                }
            }
            for n in nodes.iter().filter(|n| n.as_var().is_some()) {
                let k = arg(n).unwrap_or(usize::MAX);
                let used_inside = |p: &u64| sites.iter().any(|s| s.inner.contains(p));
                let mut uses = parents.get(&n.id()).into_iter().flatten();
                if scale.contains_key(&k) && !uses.all(used_inside) {
                    conflict.insert(k);
                }
            }
            if conflict.is_empty() {
                break;
            }
            sites.retain(|s| {
                [&s.vars.0, &s.vars.1]
                    .iter()
                    .all(|v| !conflict.contains(&arg(v).unwrap_or(usize::MAX)))
            });
        }
        if sites.is_empty() {
            return None;
        }
        // The variables the sites connect share a center (both points of a pair are
        // shifted alike): their group's output-side argument of lowest index. (The
        // filter above keeps sites of arguments in `scalable` only.)
        let pairs: Vec<(usize, usize)> = sites
            .iter()
            .filter_map(|s| Some((arg(&s.vars.0)?, arg(&s.vars.1)?)))
            .collect();
        let mut group: Vec<usize> = (0..scalable.len()).collect();
        let mut changed = true;
        while changed {
            changed = false;
            for &(a, b) in &pairs {
                let g = group[a].min(group[b]);
                changed |= group[a] != g || group[b] != g;
                (group[a], group[b]) = (g, g);
            }
        }
        let center = |k: usize| {
            (0..scalable.len()).find(|&c| group[c] == group[k] && scalable[c] == Some(Role::Out))
        };
        let mut scales = vec![None; scalable.len()];
        for s in &sites {
            for k in [&s.vars.0, &s.vars.1].into_iter().filter_map(arg) {
                scales[k] = Some(Scaling {
                    factor: s.scale,
                    center: center(k)?,
                });
            }
        }
        Some(Prescaled { sites, scales })
    }

    /// How argument `k` is loaded, if it is scaled.
    pub fn scale(&self, k: usize) -> Option<Scaling> {
        self.scales.get(k).copied().flatten()
    }

    /// The expression loading coordinate `coord` of argument `k` from `value`, with
    /// `center` the pointer to its center row: `value` itself if `k` is not scaled.
    pub fn load(
        pre: Option<&Prescaled>,
        k: usize,
        value: &str,
        center: &str,
        coord: &str,
    ) -> String {
        match pre.and_then(|p| p.scale(k)) {
            Some(s) => format!("{} * ({value} - {center}[{coord}])", literal(s.factor)),
            None => value.to_string(),
        }
    }

    /// The statements computing `v` (dimension 1) if `node` is one of the exponentials:
    /// `names` gives the printed name of every node printed before it.
    pub fn code(&self, node: &Formula, v: &str, names: &HashMap<u64, String>) -> Option<String> {
        let s = self.sites.iter().find(|s| s.exp == *node)?;
        let (a, b) = (&names[&s.vars.0.id()], &names[&s.vars.1.id()]);
        // The sign goes into the sum of squares (negated FMAs) or after the square root.
        let (acc, mut arg) = match (s.sqrt, s.neg) {
            (false, true) => ("-=", "s".to_string()),
            (false, false) => ("+=", "s".to_string()),
            (true, true) => ("+=", "-k_sqrt(s)".to_string()),
            (true, false) => ("+=", "k_sqrt(s)".to_string()),
        };
        for (f, e) in &s.params {
            let op = if *e < 0 { '/' } else { '*' };
            arg = format!("{arg} {op} {}[0]", names[&f.id()]);
        }
        Some(format!(
            "  T {v}[1];\n  {{ T s = 0;\n    for (int k = 0; k < {d}; k++) s {acc} ({a}[k] - {b}[k]) * ({a}[k] - {b}[k]);\n    \
             {v}[0] = k_exp2({arg}); }}\n",
            d = s.vars.0.dim
        ))
    }

    /// Host C (tests) of `{name}_tile`: copies of the scaled arguments `ak` (`n` rows each,
    /// centered on the first of the output-side rows), then `body`, then their release.
    pub fn host_copies(
        &self,
        dims: &[usize],
        rows: &str,
        len: &str,
        out: &[bool],
        body: &str,
    ) -> String {
        let mut pre = String::new();
        let mut post = String::new();
        let scaled = || (0..dims.len()).filter_map(|k| Some((k, self.scale(k)?)));
        // The centers are read before any argument is replaced by its copy.
        for (k, s) in scaled() {
            pre.push_str(&format!("  const T* c{k} = a{};\n", s.center));
        }
        for (k, _) in scaled() {
            let (n, d) = (if out[k] { rows } else { len }, dims[k]);
            let load = Prescaled::load(
                Some(self),
                k,
                &format!("a{k}[e]"),
                &format!("c{k}"),
                &format!("e % {d}"),
            );
            pre.push_str(&format!(
                "  T* s{k} = (T*)malloc(sizeof(T) * ({n}) * {d} + 1);\n  \
                 for (int e = 0; e < ({n}) * {d}; e++) s{k}[e] = {load};\n"
            ));
            post.push_str(&format!("  free(s{k});\n"));
        }
        for (k, _) in scaled() {
            pre.push_str(&format!("  a{k} = s{k};\n"));
        }
        format!("{pre}{body}{post}")
    }
}

impl Site {
    /// `node` as a site, if it is `Exp(c r2)` or `Exp(c sqrt(r2))` with a constant part
    /// of `c` that is finite and not zero, and the nodes between `Exp` and the variables
    /// used by nothing else.
    fn find(node: &Formula, parents: &HashMap<u64, HashSet<u64>>) -> Option<Site> {
        if node.op != Op::Unary(Unary::Exp) || node.dim != 1 {
            return None;
        }
        let u = &node.args[0];
        let (sqrt, (factors, r2)) = match scaled_sqdist(u, false) {
            Some(m) => (false, m),
            None => (true, scaled_sqdist(u, true)?),
        };
        let (mut c, mut params) = (1.0, Vec::new());
        for (f, e) in factors {
            if depends_on(&f, Cat::Pm) {
                params.push((f, e));
            } else {
                let v = PointEvaluator::new(std::slice::from_ref(&f)).eval(|_, _| &[])[0];
                c = if e < 0 { c / v } else { c * v };
            }
        }
        if !(c.is_finite() && c != 0.0) {
            return None;
        }
        let k = c.abs() * std::f64::consts::LOG2_E;
        let scale = if sqrt { k } else { k.sqrt() };
        // The nodes from `u` down to `r2` (and `r2`'s difference), which only this site
        // may use; then `r2`'s variables, whose other uses `Prescaled::plan` checks.
        let mut inner = HashSet::new();
        for n in u.topo_order() {
            if n == r2 || n.args.iter().any(|a| inner.contains(&a.id())) {
                inner.insert(n.id());
            }
        }
        if r2.op == Op::SqNorm2 && r2.args[0].op == Op::Binary(Binary::Subtract) {
            inner.insert(r2.args[0].id());
        }
        let only_here = |id: &u64| {
            parents
                .get(id)
                .is_some_and(|ps| ps.iter().all(|p| *p == node.id() || inner.contains(p)))
        };
        if !inner.iter().all(only_here) {
            return None;
        }
        let vars = match r2.op {
            Op::SqDist => (r2.args[0].clone(), r2.args[1].clone()),
            _ => (r2.args[0].args[0].clone(), r2.args[0].args[1].clone()),
        };
        Some(Site {
            exp: node.clone(),
            vars,
            sqrt,
            neg: c < 0.0,
            params,
            scale,
            inner,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formula::parse::parse;

    const ALIASES: [&str; 6] = [
        "x = Vi(0,3)",
        "y = Vj(1,3)",
        "b = Vj(2,1)",
        "g = Pm(3,1)",
        "z = Vj(4,3)",
        "p = Pm(5,3)",
    ];

    const ROLES: [Option<Role>; 6] = [
        Some(Role::Out),
        Some(Role::Red),
        Some(Role::Red),
        None,
        Some(Role::Red),
        None,
    ];

    fn plan(f: &str) -> Option<Prescaled> {
        let f = parse(f, &ALIASES).unwrap();
        Prescaled::plan(&[&f], &ROLES)
    }

    fn factor(p: &Prescaled, k: usize) -> f64 {
        p.scale(k).unwrap().factor
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-15
    }

    #[test]
    fn prescales_gaussian_and_laplacian_exponentials() {
        let l = std::f64::consts::LOG2_E;
        let f = plan("Exp(-SqDist(x,y)) * b").unwrap();
        assert!(close(factor(&f, 0), l.sqrt()) && close(factor(&f, 1), l.sqrt()));
        assert_eq!((f.scale(2), f.sites[0].neg), (None, true));
        let f = plan("Exp(SqNorm2(x - y) / 4) * b").unwrap();
        assert!(close(factor(&f, 0), (l / 4.0).sqrt()) && !f.sites[0].neg);
        let f = plan("Exp(-2 * Sqrt(SqDist(x,y)))").unwrap();
        assert!(close(factor(&f, 1), 2.0 * l) && f.sites[0].sqrt);
        // A parameter stays in the loop; only the constant part goes into the scale.
        let f = plan("Exp(-g * SqDist(x,y) / 2) * b").unwrap();
        assert!(close(factor(&f, 0), (l / 2.0).sqrt()));
        assert_eq!(f.sites[0].params.len(), 1);
        // Two sites of one scale share their variables, and x's rows are their center.
        let f = plan("Exp(-SqDist(x,y)) + Exp(-SqDist(z,x))").unwrap();
        assert_eq!((f.sites.len(), f.scale(4).map(|s| s.center)), (2, Some(0)));
        assert_eq!(f.scale(1).map(|s| s.center), Some(0));
    }

    #[test]
    fn leaves_variables_used_elsewhere_alone() {
        // x also outside the distance; the distance also outside the exponential.
        assert!(plan("Exp(-SqDist(x,y)) * Sum(x)").is_none());
        assert!(plan("Exp(-SqDist(x,y)) * SqDist(x,y)").is_none());
        assert!(plan("Exp(-SqDist(x,y)) * (-SqDist(x,y))").is_none());
        // Two scales for x.
        assert!(plan("Exp(-SqDist(x,y)) + Exp(-2*SqDist(x,z))").is_none());
        // Two reduced-side variables: no output-side row to center them on.
        assert!(plan("Exp(-SqDist(y,z)) * b").is_none());
        // One site dropped (x is also elsewhere), the other kept, centered on u.
        let f = parse(
            "Exp(-SqDist(x,y)) * Sum(x) + Exp(-SqDist(u,z))",
            &[&ALIASES[..], &["u = Vi(6,3)"]].concat(),
        )
        .unwrap();
        let mut roles = ROLES.to_vec();
        roles.push(Some(Role::Out));
        let f = Prescaled::plan(&[&f], &roles).unwrap();
        assert_eq!(
            (f.sites.len(), f.scale(0), f.scale(4).map(|s| s.center)),
            (1, None, Some(6))
        );
        // A parameter point is not scalable; neither are zero or infinite coefficients.
        assert!(plan("Exp(-SqDist(x,p))").is_none());
        assert!(plan("Exp(0 * SqDist(x,y))").is_none());
        assert!(plan("Exp(-SqDist(x,y) / 0)").is_none());
        assert!(plan("Exp(-SqDist(x,y) * y)").is_none());
    }

    #[test]
    fn prints_the_exponential_as_exp2() {
        let f = parse("Exp(-g * SqDist(x,y)) * b", &ALIASES).unwrap();
        let pre = Prescaled::plan(&[&f], &ROLES[..4]).unwrap();
        let c = super::super::codegen::pair_function_with(&f, "F", 4, Some(&pre));
        // -g is the sign (in the sum of squares) and the parameter g (v0, in the loop).
        assert!(c.contains("s -= (v2[k] - v3[k]) * (v2[k] - v3[k])"), "{c}");
        assert!(c.contains("= k_exp2(s * v0[0]);"), "{c}");
        assert!(!c.contains("k_exp("), "{c}");
    }
}
