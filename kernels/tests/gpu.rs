//! GPU parity tests: every CUDA kernel against its CPU reference. Where there is no CUDA device each test prints
//! `skipped: no CUDA device: <name>` and does nothing else (`scripts/gpu-tests.sh` runs them on a GPU).

mod gpu {
    pub mod common;
    pub mod floats;

    mod adamw;
    mod argmax;
    mod attention;
    mod attention_windows;
    mod convert;
    mod cross_entropy;
    mod gemm;
    mod lora;
    mod rmsnorm;
    mod rope;
    mod rows;
    mod silu_mul;
    mod w4a16;
}
