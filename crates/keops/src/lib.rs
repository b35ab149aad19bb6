//! # keops
//!
//! Kernel operations on CPUs (and GPUs): reductions of *symbolic matrices*
//! `M[i,j] = F(x_i, y_j, p)` computed tile by tile, so that memory stays linear in the
//! data while the work is quadratic. A Rust re-implementation of
//! [KeOps](https://www.kernel-operations.io).
//!
//! ```
//! use keops::{Genred, Reduction, Arg};
//! // Gaussian kernel sum: a_i = sum_j exp(-|x_i - y_j|^2) b_j
//! let g = Genred::new("Exp(-SqDist(x,y)) * b",
//!                     &["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)"], Reduction::Sum, 1)?;
//! let x = vec![0.0f32; 4 * 3];
//! let y = vec![0.0f32; 5 * 3];
//! let b = vec![1.0f32; 5];
//! let a = g.call(&[Arg::new(&x, &[4, 3]), Arg::new(&y, &[5, 3]), Arg::new(&b, &[5, 1])])?;
//! assert_eq!(a.values.unwrap().data, vec![5.0; 4]);
//! # Ok::<(), keops::KeopsError>(())
//! ```
//!
//! Layers (arrows point one way): [`formula`] (IR, parser, reference evaluator) <-
//! [`reduction`] / [`plan`] <- [`grad`] (gradients of reductions) and [`cpu`] engine <-
//! [`lazy`] builder API.

#![warn(missing_docs)]

pub mod cluster;
pub mod cpu;
pub mod cuda;
pub mod error;
pub mod formula;
pub mod grad;
pub mod jvp;
pub mod lazy;
pub mod math;
pub mod plan;
pub mod ranges;
pub mod real;
pub mod reduction;
pub mod reference;
pub mod solve;

pub use error::{KeopsError, Result};
pub use formula::{Cat, Formula};
pub use grad::{Extra, Gradient};

pub use lazy::{LazyTensor, Pm, Vi, Vj};
pub use plan::{
    AccType, Arg, Array, Backend, CpuKernel, Element, Genred, GpuScheme, Layout, MultiGpu, Options,
    Reduced, SumScheme,
};
pub use ranges::{Blocks, Ranges};
pub use reduction::Reduction;
