//! olive-rs compute kernels. `cpu` holds the Rust kernels the CPU runs; each op there keeps a plain
//! `*_ref` reference beside the fast version, and a parity test between the two. `cuda` holds the GPU kernels
//! (kernels/cuda/*.cu, compiled at run time), each tested against its same-named CPU reference.

pub mod cpu;
pub mod cuda;
