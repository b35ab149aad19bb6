//! The launch planner: KeOps' 1D or 2D scheme, block and tile sizes, grid.
//!
//! 1D: one thread per output row, one chunk of the reduced axis: enough when there are
//! enough output rows to fill the device. 2D: the reduced axis is also split across
//! blocks (grid `y`) and the partial states are combined by a second kernel, for few
//! output rows and long reductions. Threads reduce several output rows each where the
//! kernel allows it and the 1D scheme still fills the device.

use crate::error::{KeopsError, Result};
use crate::plan::GpuScheme;

/// Threads per block (KeOps' default `CUDA_BLOCK_SIZE`).
pub const BLOCK: usize = 192;
/// Shared memory a block may use without opting in to more.
pub const SMEM_LIMIT: usize = 48 * 1024;
/// Largest grid `y` and `z`.
const GRID_YZ_MAX: usize = 65_535;

/// The scheme chosen for a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// One chunk of the reduced axis per output row.
    OneD,
    /// Several chunks, combined.
    TwoD,
}

/// How a reduction is launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// The scheme.
    pub scheme: Scheme,
    /// Threads per block.
    pub block: usize,
    /// Output rows per thread (a constant of the kernel source).
    pub rows: usize,
    /// Reduced rows staged in shared memory at a time (a constant of the kernel source).
    pub tile: usize,
    /// Reduced rows per chunk (grid `y`).
    pub chunk: usize,
    /// Grid (`x`: blocks of output rows, `y`: chunks, `z`: batch entries).
    pub grid: (usize, usize, usize),
    /// Dynamic shared memory, bytes.
    pub smem: usize,
}

/// Rows of a tile: a block's worth, fewer when the rows do not fit in shared memory.
pub fn tile_rows(row_bytes: usize) -> Result<usize> {
    if row_bytes == 0 {
        return Ok(BLOCK);
    }
    let rows = (SMEM_LIMIT / row_bytes).min(BLOCK);
    if rows == 0 {
        return Err(KeopsError::Backend {
            backend: "GPU".into(),
            msg: format!(
                "one row of the reduced-side arguments takes {row_bytes} bytes, more than the \
                 {SMEM_LIMIT} bytes of shared memory of a block; use the CPU engine"
            ),
        });
    }
    // Whole warps when possible.
    Ok(if rows >= 32 { rows / 32 * 32 } else { rows })
}

/// What the kernel allows and the caller asks of a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Bytes of one reduced-side row in shared memory.
    pub row_bytes: usize,
    /// Most output rows per thread the kernel allows ([`KernelSpec::max_rows`]).
    ///
    /// [`KernelSpec::max_rows`]: super::kernel::KernelSpec::max_rows
    pub max_rows: usize,
    /// Output rows per thread asked for (`None`: the planner's choice).
    pub rows: Option<usize>,
    /// The scheme asked for.
    pub scheme: GpuScheme,
}

/// Plans a launch of `nbatch` reductions of `n_out` rows over `n_red` rows, on a device
/// with `sms` multiprocessors.
pub fn plan(n_out: usize, n_red: usize, nbatch: usize, shape: Shape, sms: usize) -> Result<Launch> {
    let tile = tile_rows(shape.row_bytes)?;
    let block = BLOCK;
    let want = 2 * sms.max(1);
    let blocks_1d = |rows: usize| n_out.div_ceil(block * rows).max(1) * nbatch.max(1);
    let rows = match shape.rows {
        Some(r) if r == 0 || r > shape.max_rows => {
            return Err(KeopsError::Option {
                name: "gpu_rows".into(),
                msg: format!(
                    "{r} output rows per thread, but this kernel allows 1 to {} (output-side \
                     rows and reduction states must fit in registers)",
                    shape.max_rows
                ),
            })
        }
        Some(r) => r,
        // The most rows that still leave two blocks per multiprocessor.
        None => super::kernel::ROWS_CHOICES
            .iter()
            .copied()
            .filter(|&r| r == 1 || (r <= shape.max_rows && blocks_1d(r) >= want))
            .max()
            .unwrap_or(1),
    };
    let blocks_x = n_out.div_ceil(block * rows).max(1);
    let blocks_1d = blocks_1d(rows);
    let scheme = match shape.scheme {
        GpuScheme::OneD => Scheme::OneD,
        GpuScheme::TwoD => Scheme::TwoD,
        GpuScheme::Auto if blocks_1d >= want || n_red <= 2 * tile => Scheme::OneD,
        GpuScheme::Auto => Scheme::TwoD,
    };
    let chunk = match scheme {
        Scheme::OneD => n_red.max(1),
        Scheme::TwoD => {
            let tiles = n_red.div_ceil(tile).max(1);
            let nchunks = (2 * want).div_ceil(blocks_1d).clamp(1, tiles);
            let per = tiles
                .div_ceil(nchunks)
                .max(n_red.div_ceil(tile * GRID_YZ_MAX));
            per * tile
        }
    };
    Ok(Launch {
        scheme,
        block,
        rows,
        tile,
        chunk,
        grid: (
            blocks_x,
            n_red.div_ceil(chunk).max(1),
            nbatch.clamp(1, GRID_YZ_MAX),
        ),
        smem: tile * shape.row_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100_SMS: usize = 132;

    /// A kernel of one row per thread.
    fn one(row_bytes: usize, scheme: GpuScheme) -> Shape {
        Shape {
            row_bytes,
            max_rows: 1,
            rows: None,
            scheme,
        }
    }

    #[test]
    fn many_rows_use_the_1d_scheme() {
        let l = plan(1_000_000, 1_000_000, 1, one(16, GpuScheme::Auto), H100_SMS).unwrap();
        assert_eq!(l.scheme, Scheme::OneD);
        assert_eq!((l.block, l.tile, l.smem), (192, 192, 192 * 16));
        assert_eq!(l.grid, (1_000_000usize.div_ceil(192), 1, 1));
        assert_eq!(l.chunk, 1_000_000);
    }

    #[test]
    fn few_rows_and_long_reductions_use_the_2d_scheme() {
        let l = plan(100, 1_000_000, 1, one(16, GpuScheme::Auto), H100_SMS).unwrap();
        assert_eq!(l.scheme, Scheme::TwoD);
        assert_eq!(l.chunk % l.tile, 0);
        // Enough blocks to fill the device, every reduced row in exactly one chunk.
        assert!(l.grid.0 * l.grid.1 >= 2 * H100_SMS);
        assert!(l.grid.1 * l.chunk >= 1_000_000 && (l.grid.1 - 1) * l.chunk < 1_000_000);
    }

    #[test]
    fn short_reductions_stay_1d_and_batches_fill_the_device() {
        assert_eq!(
            plan(10, 300, 1, one(16, GpuScheme::Auto), H100_SMS)
                .unwrap()
                .scheme,
            Scheme::OneD
        );
        let l = plan(1000, 100_000, 64, one(16, GpuScheme::Auto), H100_SMS).unwrap();
        assert_eq!((l.scheme, l.grid.2), (Scheme::OneD, 64));
    }

    #[test]
    fn schemes_can_be_forced() {
        let l = plan(1_000_000, 1000, 1, one(16, GpuScheme::TwoD), H100_SMS).unwrap();
        assert_eq!(l.scheme, Scheme::TwoD);
        assert_eq!(l.grid.1, 1000usize.div_ceil(l.chunk));
        let l = plan(10, 1_000_000, 1, one(16, GpuScheme::OneD), H100_SMS).unwrap();
        assert_eq!((l.scheme, l.grid.1), (Scheme::OneD, 1));
    }

    #[test]
    fn high_dimensions_shrink_the_tile_to_fit_shared_memory() {
        // D = 256 in f32 on both reduced-side arguments: 2 KiB per row.
        let l = plan(10_000, 10_000, 1, one(2048, GpuScheme::Auto), H100_SMS).unwrap();
        assert_eq!(l.tile, 24);
        assert!(l.smem <= SMEM_LIMIT);
        assert_eq!(tile_rows(4 * 100).unwrap(), 96);
        assert!(tile_rows(SMEM_LIMIT + 1).is_err());
        // No reduced-side argument: nothing staged.
        assert_eq!(
            plan(10, 10, 1, one(0, GpuScheme::Auto), H100_SMS)
                .unwrap()
                .smem,
            0
        );
    }

    #[test]
    fn huge_reductions_keep_grid_y_in_range() {
        let l = plan(1, 1 << 40, 1, one(4, GpuScheme::TwoD), H100_SMS).unwrap();
        assert!(l.grid.1 <= GRID_YZ_MAX);
        assert!(l.grid.1 * l.chunk >= 1 << 40);
    }

    #[test]
    fn threads_take_several_rows_when_the_device_stays_full() {
        let shape = Shape {
            max_rows: 4,
            ..one(16, GpuScheme::Auto)
        };
        let l = plan(1_000_000, 1_000_000, 1, shape, H100_SMS).unwrap();
        assert_eq!((l.rows, l.scheme), (4, Scheme::OneD));
        assert_eq!(l.grid.0, 1_000_000usize.div_ceil(192 * 4));
        // 2 10^5 rows in blocks of 4 * 192 threads leave fewer than two blocks per SM.
        assert_eq!(plan(200_000, 200_000, 1, shape, H100_SMS).unwrap().rows, 2);
        // Few rows: one each, and the 2D scheme.
        let l = plan(10_000, 100_000, 1, shape, H100_SMS).unwrap();
        assert_eq!((l.rows, l.scheme), (1, Scheme::TwoD));
        // A kernel of one row per thread keeps one.
        assert_eq!(
            plan(1_000_000, 1_000_000, 1, one(16, GpuScheme::Auto), H100_SMS)
                .unwrap()
                .rows,
            1
        );
    }

    #[test]
    fn rows_per_thread_can_be_forced_within_what_the_kernel_allows() {
        let shape = |rows| Shape {
            max_rows: 2,
            rows: Some(rows),
            ..one(16, GpuScheme::Auto)
        };
        let l = plan(1000, 1000, 1, shape(2), H100_SMS).unwrap();
        assert_eq!((l.rows, l.grid.0), (2, 3));
        assert_eq!(plan(10_000_000, 10, 1, shape(1), H100_SMS).unwrap().rows, 1);
        for bad in [0, 4] {
            let e = plan(1000, 1000, 1, shape(bad), H100_SMS)
                .unwrap_err()
                .to_string();
            assert!(e.contains("gpu_rows") && e.contains("1 to 2"), "{e}");
        }
    }
}
