use keops::*;
fn main() -> Result<()> {
    let n = 1000; let m = 1500;
    let x: Vec<f64> = (0..n*3).map(|k| ((k*7919)%1000) as f64 / 500.0 - 1.0).collect();
    let y: Vec<f64> = (0..m*3).map(|k| ((k*104729)%1000) as f64 / 500.0 - 1.0).collect();
    let b: Vec<f64> = (0..m).map(|k| ((k*31)%17) as f64 / 17.0).collect();
    for red in Reduction::ALL {
        let g = if red.takes_weight() && *red == Reduction::SumSoftMaxWeight {
            Genred::with_weight("-SqDist(x,y)", "b", &["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)"], *red, 1)?
        } else {
            Genred::new("Exp(-SqDist(x,y)) * b", &["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)"], *red, 1)?
        };
        let args = [Arg::new(&x, &[n, 3]), Arg::new(&y, &[m, 3]), Arg::new(&b, &[m, 1])];
        let t = std::time::Instant::now();
        let r = g.call(&args)?;
        let dt = t.elapsed();
        let o = reference::reduce(&g, &args)?;
        let ev = match (&r.values, &o.values) { (Some(a), Some(b)) => a.data.iter().zip(&b.data).map(|(x,y)| (x-y).abs()).fold(0.0, f64::max), _ => 0.0 };
        let ei = match (&r.indices, &o.indices) { (Some(a), Some(b)) => a.data.iter().zip(&b.data).filter(|(x,y)| x!=y).count(), _ => 0 };
        println!("{:?}: err {ev:e} idx mismatches {ei} time {dt:?}", red);
    }
    Ok(())
}
