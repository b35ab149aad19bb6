//! What the fuzz targets that take formulas share: the input's layout and the
//! arguments synthesised for a reduction.
use keops::{Cat, Genred};

/// One argument's values and shape.
pub type Buffer<T> = (Vec<T>, Vec<usize>);

/// The input as a header line (option bytes), a formula and alias lines; `None` if it
/// is not UTF-8, has fewer than two lines, or writes a number in [`SLOW_SIZES`].
pub fn split(data: &[u8]) -> Option<(&[u8], &str, Vec<&str>)> {
    let text = std::str::from_utf8(data).ok()?;
    let mut parts = text.split('\n');
    let (head, formula) = (parts.next()?, parts.next()?);
    // The header's bytes are options, not text: only the formula and aliases count.
    let mut numbers = text[head.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse::<u64>().ok());
    if numbers.any(|v| SLOW_SIZES.contains(&v)) {
        return None;
    }
    Some((head.as_bytes(), formula, parts.collect()))
}

/// Numbers whose inputs are skipped: as dimensions, valid and slow (a differential
/// operator over such a variable expands to one term per coordinate: `Laplacian(x,y)`
/// with y of dimension 310,403 took 20 s under the sanitizer, within the expansion's
/// 2^20-node limit). Left in the corpus, they took nearly all of a run's time; smaller
/// sizes, and larger ones (the checks of sizes that overflow), are still fuzzed.
const SLOW_SIZES: std::ops::RangeInclusive<u64> = 65..=(1 << 32);

/// Arguments for `g` with `n` rows of `Vi` and `m` of `Vj` variables, fixed values
/// in [-0.6, 0.9]; `None` if a variable is wider than `max_dim`.
pub fn arguments(g: &Genred, n: usize, m: usize, max_dim: usize) -> Option<Vec<Buffer<f64>>> {
    g.args()
        .iter()
        .map(|d| {
            let Some(d) = d else {
                return Some((vec![0.5f64], vec![1usize, 1]));
            };
            if d.dim > max_dim {
                return None;
            }
            let rows = match d.cat {
                Cat::Vi => n,
                Cat::Vj => m,
                Cat::Pm => 1,
            };
            let data = (0..rows * d.dim)
                .map(|k| ((k * 37 % 11) as f64) / 7.0 - 0.6)
                .collect();
            let shape = if d.cat == Cat::Pm {
                vec![d.dim]
            } else {
                vec![rows, d.dim]
            };
            Some((data, shape))
        })
        .collect()
}

/// The same values in f32.
pub fn to_f32(bufs: &[Buffer<f64>]) -> Vec<Buffer<f32>> {
    bufs.iter()
        .map(|(d, s)| (d.iter().map(|&v| v as f32).collect(), s.clone()))
        .collect()
}
