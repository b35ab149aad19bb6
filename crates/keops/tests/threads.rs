//! The CPU engine's threads: a thread that joins the engine's pool
//! (`cpu::adopt_current_thread`, as the Python module does at import) runs reductions in
//! it, other threads still run theirs on rayon's global pool, and every split of the work
//! gives the same values as one thread. Its own test binary: joining a pool changes the thread
//! and the process for good.

use keops::{cpu, Arg, Genred, KeopsError, Options, Reduction};

/// A Gaussian sum over 700 x 800 pairs (enough for the pool), with weights of width 2.
fn gauss() -> (Genred, Vec<f64>, Vec<f64>, Vec<f64>) {
    let g = Genred::new(
        "Exp(-SqDist(x,y)) * b",
        &["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,2)"],
        Reduction::Sum,
        1,
    )
    .expect("a valid formula");
    let x = (0..700 * 3).map(|k| (k as f64 * 0.37).sin()).collect();
    let y = (0..800 * 3).map(|k| (k as f64 * 0.71).cos()).collect();
    let b = (0..800 * 2).map(|k| (k as f64 * 0.13).sin()).collect();
    (g, x, y, b)
}

fn run(g: &Genred, x: &[f64], y: &[f64], b: &[f64], threads: Option<usize>) -> Vec<f64> {
    let args = [
        Arg::new(x, [700, 3]),
        Arg::new(y, [800, 3]),
        Arg::new(b, [800, 2]),
    ];
    let opts = Options {
        threads,
        ..Default::default()
    };
    let out = g.call_with(&args, &opts).expect("the reduction runs");
    out.values.expect("a Sum has values").data
}

#[test]
fn a_thread_that_joins_the_pool_runs_reductions_in_it() {
    let (g, x, y, b) = gauss();
    let serial = run(&g, &x, &y, &b, Some(1));
    assert_eq!(rayon::current_thread_index(), None);
    cpu::adopt_current_thread().expect("the thread joins the engine's pool");
    assert_eq!(
        rayon::current_thread_index(),
        Some(0),
        "the thread is the pool's first"
    );
    let (_, threads) = cpu::status().expect("the CPU engine's status");
    assert_eq!(threads, rayon::current_num_threads());
    // From the member thread, from another thread (rayon's global pool), with a pool of
    // its own: the same values (the jobs are the same; only who runs them changes).
    for _ in 0..3 {
        assert_eq!(run(&g, &x, &y, &b, None), serial);
    }
    std::thread::scope(|s| {
        let other = s.spawn(|| {
            assert_eq!(rayon::current_thread_index(), None);
            run(&g, &x, &y, &b, None)
        });
        assert_eq!(run(&g, &x, &y, &b, Some(3)), serial);
        assert_eq!(other.join().expect("the other thread runs"), serial);
    });
    // One thread joins, once.
    let again = std::thread::spawn(cpu::adopt_current_thread)
        .join()
        .expect("the thread runs");
    assert!(
        matches!(&again, Err(KeopsError::Option { name, msg }) if name == "threads" && msg.contains("already")),
        "{again:?}"
    );
    assert!(cpu::adopt_current_thread().is_err());
}
