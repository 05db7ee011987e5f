// A spin that keeps the GPU busy while the host queues timed launches, so no launch gap lands between two timing
// events (see kernels/src/cuda/timing.rs).
extern "C" __global__ void spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) {
    }
}
