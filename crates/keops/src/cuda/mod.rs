//! The CUDA engine: plans printed as CUDA C ([`codegen`], [`kernel`]), compiled at run
//! time by NVRTC ([`nvrtc`]) to CUBIN for the device's architecture, cached in memory
//! and on disk ([`cache`]), launched with KeOps' 1D or 2D scheme ([`scheme`]) through
//! the driver API loaded at run time ([`runtime`]), on one GPU or split over several
//! ([`multi`]); data already on a GPU is reduced in place ([`run_in_place`]). Builds and runs (on the CPU)
//! where CUDA is absent: asking for the GPU then gives an error.

pub mod cache;
pub mod chunks;
pub mod codegen;
pub mod columns;
pub mod kernel;
pub mod multi;
pub mod nvrtc;
pub mod prescale;
pub mod runtime;
pub mod scheme;
pub mod sim;

pub use runtime::{
    available, driver, run_in_place, status, DeviceArg, DeviceBuffer, DeviceOutputs, GpuStatus,
};
