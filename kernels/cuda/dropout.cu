// Inverted dropout with a counter-based mask, the one olive-nn's LoRA trainer draws on the CPU (train::lora::Mask):
// element i is kept when 16 bits of splitmix64(key ^ (i / 4) · 0xD6E8FEB86659FD93) — bits 16·(i % 4) onwards — are
// at least threshold = round(p · 65536); kept elements are scaled by keep = 1 / (1 − p). The mask is a function of
// (key, i), so a recomputed forward and the backward (the same mask on the input gradient) drop the same elements.
// fp32 math on f32/bf16/f16 data.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }

__device__ __forceinline__ unsigned long long splitmix(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// out[i] = (out[i] if accumulate else 0) + (kept(i) ? x[i] · keep : 0) over n elements.
template <typename T>
__device__ void dropout(T *__restrict__ out, const T *__restrict__ x, long long n, unsigned long long key,
                        unsigned threshold, float keep, int accumulate) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        unsigned long long h = splitmix(key ^ ((unsigned long long)(i >> 2) * 0xD6E8FEB86659FD93ULL));
        unsigned bits = (unsigned)((h >> (16 * (i & 3))) & 0xFFFF);
        float v = bits >= threshold ? to_f32(x[i]) * keep : 0.0f;
        if (accumulate) v += to_f32(out[i]);
        out[i] = from_f32<T>(v);
    }
}

#define DROPOUT(SUFFIX, T)                                                                                         \
    extern "C" __global__ void dropout_##SUFFIX(T *out, const T *x, long long n, unsigned long long key,          \
                                                unsigned threshold, float keep, int accumulate) {                  \
        dropout<T>(out, x, n, key, threshold, keep, accumulate);                                                    \
    }
DROPOUT(f32, float)
DROPOUT(bf16, __nv_bfloat16)
DROPOUT(f16, __half)
