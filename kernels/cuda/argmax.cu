// Greedy token choice over rows of logits: out[r] = the index of the largest of x[r·n .. r·n + n), the first on ties,
// as cpu::argmax: a NaN is never the largest, save that a NaN first logit gives 0 (nothing compares above it in the
// CPU loop). One block of 1024 threads a row: each thread scans a strided slice keeping its first maximum, then the
// warps and the block reduce the candidates.
constexpr int THREADS = 1024;
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// (v, i) becomes (ov, oi) where that is the better candidate: the larger value, the smaller index on ties.
__device__ __forceinline__ void take_better(float &v, int &i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) v = ov, i = oi;
}

__device__ __forceinline__ void warp_best(float &v, int &i) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        take_better(v, i, __shfl_xor_sync(0xffffffff, v, o), __shfl_xor_sync(0xffffffff, i, o));
}

extern "C" __global__ void __launch_bounds__(THREADS) argmax_rows(const float *__restrict__ x, int n,
                                                                  unsigned *__restrict__ out) {
    const float *row = x + (long long)blockIdx.x * n;
    float v = -INFINITY;
    int i = n;  // past the row: any element, -inf included, takes its place
    for (int j = threadIdx.x; j < n; j += THREADS) {
        const float xj = row[j];
        take_better(v, i, isnan(xj) ? -INFINITY : xj, j);
    }
    warp_best(v, i);
    __shared__ float wv[THREADS / 32];
    __shared__ int wi[THREADS / 32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) wv[warp] = v, wi[warp] = i;
    __syncthreads();
    if (warp != 0) return;
    v = wv[lane], i = wi[lane];
    warp_best(v, i);
    if (lane == 0) out[blockIdx.x] = isnan(row[0]) ? 0u : (unsigned)i;
}
