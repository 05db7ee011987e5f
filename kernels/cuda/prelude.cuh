// Put before every kernel file when it is compiled (kernels/src/cuda/mod.rs, `cuda_source!`).
//
// Programmatic dependent launch, for the kernels of a captured decode step (`Gpu::capture` with
// `Edges::Overlapped`): a kernel whose code calls `wait_for_previous_kernel` gets a programmatic edge from the kernel
// before it, so its blocks may start (launch, read what no earlier kernel writes) while that kernel still runs. Every
// block must pass the wait, unconditionally, before it reads what earlier kernels wrote or writes anything: the wait
// returns once the previous kernel has ended and its writes are visible, and as every kernel so chained waits, once
// all kernels before it have. Launched the ordinary way, the wait returns at once.
__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
