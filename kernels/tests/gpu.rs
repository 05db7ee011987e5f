//! GPU parity tests: every CUDA kernel against its CPU reference. Where there is no CUDA device each test prints
//! `skipped: no CUDA device: <name>` and does nothing else (`scripts/gpu-tests.sh` runs them on a GPU).

mod gpu {
    pub mod common;

    mod attention;
    mod convert;
    mod w4a16;
}
