// Rotary position embedding (Su et al. 2021, RoFormer) in transformers' rotate-half layout, in place on the q/k
// heads of rows [tokens, row_stride]: with h = rotary_dim / 2 and the angle a = pos * inv_freq[i] (f32, as
// torch), y[i] = x[i]*c - x[i+h]*s, y[i+h] = x[i+h]*c + x[i]*s, c = cos(a) * scaling, s = sin_sign * sin(a) *
// scaling. inv_freq carries the rope type (default, linear, llama3, or LongRoPE's short or long factors) and
// scaling is LongRoPE's attention factor (1 otherwise); sin_sign = -1 is the backward (the transpose of the
// rotation). Token t sits at position pos_offset + t % seq (rows of `seq` tokens; pos_offset = the KV cache's
// length). Dims past rotary_dim pass through. Grid: one block per token; threadIdx.x = i, threadIdx.y strides the
// heads, so each angle's sincos is computed once per y-thread and reused across its heads.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }

template <typename T>
__device__ void rope(T *x, const float *__restrict__ inv_freq, int seq, int row_stride, int heads, int head_dim,
                     int rotary_dim, int pos_offset, float scaling, float sin_sign) {
    const int t = blockIdx.x;
    const int half = rotary_dim / 2;
    const float pos = (float)(pos_offset + t % seq);
    T *row = x + (long long)t * row_stride;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float s, c;
        sincosf(pos * inv_freq[i], &s, &c);
        c *= scaling;
        s = sin_sign * (s * scaling);
        for (int h = threadIdx.y; h < heads; h += blockDim.y) {
            T *head = row + (long long)h * head_dim;
            const float a = to_f32(head[i]), b = to_f32(head[i + half]);
            head[i] = from_f32<T>(a * c - b * s);
            head[i + half] = from_f32<T>(b * c + a * s);
        }
    }
}

#define ROPE_KERNEL(T, SUFFIX)                                                                               \
    extern "C" __global__ void rope_##SUFFIX(T *x, const float *inv_freq, int seq, int row_stride, int heads, \
                                            int head_dim, int rotary_dim, int pos_offset, float scaling,      \
                                            float sin_sign) {                                                \
        rope<T>(x, inv_freq, seq, row_stride, heads, head_dim, rotary_dim, pos_offset, scaling, sin_sign);   \
    }

ROPE_KERNEL(float, f32)
ROPE_KERNEL(__nv_bfloat16, bf16)
ROPE_KERNEL(__half, f16)
