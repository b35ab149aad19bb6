//! Which threads run a CPU reduction.
//!
//! - Small problems run on the calling thread: waking pool threads costs more than the
//!   work (tens of microseconds), and a caller's own threads stay independent.
//! - `Options::threads = Some(n)`: a pool of `n` threads, made once per `n`.
//! - Otherwise the rayon pool the caller belongs to, else rayon's global pool.
//!
//! A thread outside a pool that hands work to one sleeps until it is done, and the pool's
//! threads, asleep after any pause between calls, must be woken first: on a 2-core VM,
//! with a millisecond of other work between calls, that cost a Gaussian sum of 1,000
//! points 690 us instead of 410 us. A thread that belongs to the pool starts the work
//! itself and is joined by the others as they wake. [`adopt_current_thread`] makes the
//! calling thread a member of a pool of its own (the Python module adopts the thread that
//! imports it); other threads keep rayon's global pool, whose threads all work for them
//! (in the engine's pool, one of them is the adopted thread, busy elsewhere).
//!
//! After a `fork` the child has none of its parent's pool threads (only the forking
//! thread survives): work handed to a pool would wait forever. A process that is not the
//! one whose pools ran or were made runs every reduction, and the engine's other parallel
//! loops ([`task_min_len`]), on the calling thread.

use crate::error::{KeopsError, Result};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

/// Below this many pairs, a reduction runs on the calling thread.
const SERIAL_PAIRS: usize = 1 << 16;

/// Pools of a given number of threads (`Options::threads`).
static POOLS: LazyLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> =
    LazyLock::new(Default::default);

/// The engine's pool, once a thread has joined it (kept for the process's life: that
/// thread is one of its workers). Behind a lock: two threads joining at once must not
/// both make one.
static ENGINE_POOL: Mutex<Option<rayon::ThreadPool>> = Mutex::new(None);

/// The process whose threads the pools hold: set when a pool is first used or made.
static POOLS_PID: OnceLock<u32> = OnceLock::new();

/// Whether this process is a `fork` of the one that made or used the pools.
fn forked() -> bool {
    *POOLS_PID.get_or_init(std::process::id) != std::process::id()
}

/// The fewest items of a rayon task (`with_min_len`) for the engine's other parallel
/// loops: 1, but in a forked child all of them, so that the loop runs on the calling
/// thread and hands nothing to a pool.
pub(crate) fn task_min_len() -> usize {
    if forked() {
        usize::MAX
    } else {
        1
    }
}

fn pool(threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&threads) {
        return Ok(p.clone());
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| KeopsError::Option {
            name: "threads".into(),
            msg: e.to_string(),
        })?;
    let p = Arc::new(p);
    pools.insert(threads, p.clone());
    Ok(p)
}

/// Makes the calling thread a member of a pool of `RAYON_NUM_THREADS` threads (else one
/// per core; this thread is one of them), the engine's pool. Reductions called from this
/// thread run in it: they start at once on this thread, the others joining as they wake,
/// instead of waiting for woken threads. Other threads' reductions run as before.
///
/// For a program's main thread (the Python module calls it when imported). The thread
/// stays a rayon worker of that pool until it exits: its own `rayon` parallel calls run
/// in that pool too. Errors when a thread joined the engine's pool already or this one
/// belongs to a rayon pool.
pub fn adopt_current_thread() -> Result<()> {
    let err = |msg: String| KeopsError::Option {
        name: "threads".into(),
        msg,
    };
    let mut engine = ENGINE_POOL.lock().unwrap_or_else(|e| e.into_inner());
    if engine.is_some() {
        return Err(err("a thread has joined the engine's pool already".into()));
    }
    let p = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .thread_name(|i| format!("keops-{i}"))
        .build()
        .map_err(|e| err(format!("cannot make the engine's pool: {e}")))?;
    POOLS_PID.get_or_init(std::process::id);
    *engine = Some(p);
    Ok(())
}

/// Runs `go(threads)` for a problem of `pairs` pairs with the threads that `threads`
/// (checked to be at least 1) asks for, as the module doc says: `go(1)` on the calling
/// thread, or inside a pool.
pub(super) fn run<R: Send>(
    threads: Option<usize>,
    pairs: usize,
    go: impl Fn(usize) -> Result<R> + Sync,
) -> Result<R> {
    if pairs < SERIAL_PAIRS || threads == Some(1) || forked() {
        return go(1);
    }
    match threads {
        Some(n) => pool(n)?.install(|| go(n)),
        // The pool the caller belongs to (the engine's, for the thread that joined it),
        // else rayon's global one.
        None => go(rayon::current_num_threads()),
    }
}
