use keops::{Arg, Genred, Options, Reduction};
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let n: usize = a[1].parse().unwrap();
    let d: usize = a[2].parse().unwrap();
    let reps: usize = a[3].parse().unwrap();
    let mode = a.get(4).cloned().unwrap_or("knn".into());
    let mut s = 1u64;
    let mut r = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32) / (1u64 << 24) as f32
    };
    let x: Vec<f32> = (0..n * d).map(|_| r()).collect();
    let y: Vec<f32> = (0..n * d).map(|_| r()).collect();
    let e = 1000;
    let b: Vec<f32> = (0..n * e).map(|_| r()).collect();
    let al = [
        format!("x = Vi(0,{d})"),
        format!("y = Vj(1,{d})"),
        format!("b = Vj(2,{e})"),
    ];
    let g = match mode.as_str() {
        "sum" => Genred::new("Exp(-SqDist(x,y))", &al[..2], Reduction::Sum, 1).unwrap(),
        "wsum" => Genred::new("Exp(-SqDist(x,y)) * b", &al, Reduction::Sum, 1).unwrap(),
        _ => Genred::new("SqDist(x,y)", &al[..2], Reduction::ArgKMin(10), 1).unwrap(),
    };
    let args = [
        Arg::new(&x, [n, d]),
        Arg::new(&y, [n, d]),
        Arg::new(&b, [n, e]),
    ];
    let args = if mode == "wsum" {
        &args[..]
    } else {
        &args[..2]
    };
    let o = Options::default();
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        let out = g.call_with(args, &o).unwrap();
        std::hint::black_box(&out);
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("{mode} n={n} d={d} best {:.3} ms", best * 1e3);
}
