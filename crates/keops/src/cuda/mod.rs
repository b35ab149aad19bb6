//! The CUDA engine (in progress). Built so far: code generation of formulas as C that
//! compiles both as CUDA device code and as host C ([`codegen`]); the kernels, NVRTC,
//! the kernel cache and the device runtime come next (see docs/ARCHITECTURE.md).

pub mod codegen;
