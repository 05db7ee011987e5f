// Element-wise precision conversion between f32 and the 16-bit floats (round to nearest even, as `half` does on
// the CPU), with 4 elements per thread.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

template <typename From, typename To> __device__ __forceinline__ To cast(From x);
template <> __device__ __forceinline__ __nv_bfloat16 cast(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half cast(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ float cast(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> __device__ __forceinline__ float cast(__half x) { return __half2float(x); }

template <typename From, typename To>
__device__ void convert(To *__restrict__ out, const From *__restrict__ in, long long n) {
    long long stride = (long long)gridDim.x * blockDim.x * 4;
    for (long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 4; i < n; i += stride) {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            if (i + k < n) out[i + k] = cast<From, To>(in[i + k]);
        }
    }
}

extern "C" __global__ void f32_to_bf16(__nv_bfloat16 *out, const float *in, long long n) { convert(out, in, n); }
extern "C" __global__ void f32_to_f16(__half *out, const float *in, long long n) { convert(out, in, n); }
extern "C" __global__ void bf16_to_f32(float *out, const __nv_bfloat16 *in, long long n) { convert(out, in, n); }
extern "C" __global__ void f16_to_f32(float *out, const __half *in, long long n) { convert(out, in, n); }
