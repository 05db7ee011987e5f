//! olive-rs compute kernels. `cpu` holds the Rust kernels the CPU runs; each op there keeps a plain
//! `*_ref` reference beside the fast version, and a parity test between the two.

pub mod cpu;
