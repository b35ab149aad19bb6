//! The reference reduction: every pair evaluated one by one in `f64` with libm's
//! functions ([`crate::formula::eval`]) and folded with the reductions' scalar
//! accumulate step, in index order. Slow and obviously right: the oracle that the
//! engines are tested against.

use crate::error::Result;
use crate::formula::eval::PointEvaluator;
use crate::formula::Cat;
use crate::plan::{Arg, Genred, Problem, Reduced};

/// Computes `genred` on `args` pair by pair.
pub fn reduce(genred: &Genred, args: &[Arg<'_, f64>]) -> Result<Reduced<f64>> {
    let p = Problem::new(genred, args)?;
    let spec = *genred.spec();
    let ev = PointEvaluator::new(&genred.roots());
    let (n_out, n_red) = p.sizes();
    let nb = p.batch_len();
    let (sv, si) = spec.state_len();
    let (dv, di) = spec.output_dims();
    let mut out_v = vec![0.0; nb * n_out * dv];
    let mut out_i = vec![0i64; nb * n_out * di];
    let (mut vals, mut idx) = (vec![0.0; sv], vec![0i64; si]);
    for b in 0..nb {
        let data = crate::cpu::batch_data(&p, b);
        for i in 0..n_out {
            spec.init(&mut vals, &mut idx);
            for j in 0..n_red {
                let v = ev.eval(variables_at(genred, &data, i, j));
                spec.accumulate(&mut vals, &mut idx, &v, j as i64);
            }
            let o = b * n_out + i;
            spec.finalize(
                &vals,
                &idx,
                &mut out_v[o * dv..(o + 1) * dv],
                &mut out_i[o * di..(o + 1) * di],
            );
        }
    }
    Ok(Reduced::assemble(
        out_v,
        out_i,
        p.output_shapes(),
        spec.output_dims(),
    ))
}

/// The values of `genred`'s variables at pair `(i, j)` of one batch entry's `data` (its
/// arguments, [`crate::cpu::batch_data`]), `i` an output row and `j` a reduced one, as
/// [`PointEvaluator::eval`] takes them.
pub fn variables_at<'a>(
    genred: &'a Genred,
    data: &'a [&'a [f64]],
    i: usize,
    j: usize,
) -> impl Fn(Cat, usize) -> &'a [f64] + 'a {
    let out_cat = genred.out_cat();
    move |cat, k| {
        let d = genred.args()[k].map(|a| a.dim).unwrap_or(0);
        let row = match cat {
            Cat::Pm => 0,
            c if c == out_cat => i,
            _ => j,
        };
        &data[k][row * d..(row + 1) * d]
    }
}
