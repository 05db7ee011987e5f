// Rotary position embedding (Su et al. 2021, RoFormer) in transformers' rotate-half layout, in place on the q/k
// heads of rows [tokens, row_stride]: with h = rotary_dim / 2 and the angle a = pos * inv_freq[i] (f32, as
// torch), y[i] = x[i]*c - x[i+h]*s, y[i+h] = x[i+h]*c + x[i]*s, c = cos(a) * scaling, s = sin_sign * sin(a) *
// scaling. inv_freq carries the rope type (default, linear, llama3, or LongRoPE's short or long factors, the host
// picking) and scaling is LongRoPE's attention factor (1 otherwise); sin_sign = -1 is the backward (the transpose
// of the rotation). Token t sits at position pos_offset + t % seq (rows of `seq` tokens; pos_offset = the KV cache's
// length). With a KV cache (k_cache not null; one sequence), the block then also appends its token's rotated keys
// and its values: the kv_width columns of the row from k_col, and those from k_col + kv_width, to row
// pos_offset + t of k_cache and v_cache. (A decode step captured in a CUDA graph does this in its attention
// kernel: attention.cu's RopeStep.) Dims past rotary_dim pass through. One block per token: its h cos/sin pairs
// are computed once into shared memory (accurate sincosf), then threadIdx.x walks a head's first half V elements at
// a time (16-byte accesses where the layout keeps them aligned) and threadIdx.y walks the heads.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// Most rotary_dim / 2 a block takes (the launcher checks).
#define MAX_HALF 256

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }

template <typename T, int V> struct alignas(sizeof(T) * V) Pack { T v[V]; };

template <typename T, int V>
__device__ void rotate(T *row, const float *cs, const float *sn, int heads, int head_dim, int half) {
    for (int h = threadIdx.y; h < heads; h += blockDim.y) {
        T *head = row + (long long)h * head_dim;
        for (int j = threadIdx.x; j < half / V; j += blockDim.x) {
            const int i = j * V;
            Pack<T, V> a = *reinterpret_cast<const Pack<T, V> *>(head + i);
            Pack<T, V> b = *reinterpret_cast<const Pack<T, V> *>(head + i + half);
#pragma unroll
            for (int k = 0; k < V; ++k) {
                const float2 r = rope_rotate(to_f32(a.v[k]), to_f32(b.v[k]), cs[i + k], sn[i + k]);
                a.v[k] = from_f32<T>(r.x);
                b.v[k] = from_f32<T>(r.y);
            }
            *reinterpret_cast<Pack<T, V> *>(head + i) = a;
            *reinterpret_cast<Pack<T, V> *>(head + i + half) = b;
        }
    }
}

// dst[i] = src[i] for i < n, V elements at a time.
template <typename T, int V> __device__ void copy_row(T *__restrict__ dst, const T *__restrict__ src, int n) {
    for (int i = threadIdx.y * blockDim.x + threadIdx.x; i < n / V; i += blockDim.x * blockDim.y)
        reinterpret_cast<Pack<T, V> *>(dst)[i] = reinterpret_cast<const Pack<T, V> *>(src)[i];
}

template <typename T>
__device__ void rope(T *x, const float *__restrict__ inv_freq, int seq, int row_stride, int heads, int head_dim,
                     int rotary_dim, int pos_offset, float scaling, float sin_sign, T *__restrict__ k_cache,
                     T *__restrict__ v_cache, int k_col, int kv_width) {
    __shared__ float cs[MAX_HALF], sn[MAX_HALF];
    const int t = blockIdx.x;
    const int half = rotary_dim / 2;
    const float pos = (float)(pos_offset + t % seq);
    const int flat = threadIdx.y * blockDim.x + threadIdx.x;
    for (int i = flat; i < half; i += blockDim.x * blockDim.y) {
        float c, s;
        rope_cos_sin(pos, inv_freq[i], scaling, c, s);
        cs[i] = c;
        sn[i] = sin_sign * s;
    }
    __syncthreads();
    T *row = x + (long long)t * row_stride;
    // Every pack start (t*row_stride + h*head_dim + i, i and i + half) is a multiple of V when these three are.
    constexpr int V = 16 / sizeof(T);
    if (half % V == 0 && head_dim % V == 0 && row_stride % V == 0) rotate<T, V>(row, cs, sn, heads, head_dim, half);
    else rotate<T, 1>(row, cs, sn, heads, head_dim, half);
    if (k_cache == nullptr) return;
    __syncthreads();  // the keys rotated by every thread
    const long long at = (long long)(pos_offset + t) * kv_width;
    if (row_stride % V == 0 && k_col % V == 0 && kv_width % V == 0) {
        copy_row<T, V>(k_cache + at, row + k_col, kv_width);
        copy_row<T, V>(v_cache + at, row + k_col + kv_width, kv_width);
    } else {
        copy_row<T, 1>(k_cache + at, row + k_col, kv_width);
        copy_row<T, 1>(v_cache + at, row + k_col + kv_width, kv_width);
    }
}

#define ROPE_KERNEL(T, SUFFIX)                                                                                         \
    extern "C" __global__ void rope_##SUFFIX(T *x, const float *inv_freq, int seq, int row_stride, int heads,          \
                                            int head_dim, int rotary_dim, int pos_offset, float scaling,               \
                                            float sin_sign, T *k_cache, T *v_cache, int k_col, int kv_width) {         \
        rope<T>(x, inv_freq, seq, row_stride, heads, head_dim, rotary_dim, pos_offset, scaling, sin_sign, k_cache,     \
                v_cache, k_col, kv_width);                                                                             \
    }

ROPE_KERNEL(float, f32)
ROPE_KERNEL(__nv_bfloat16, bf16)
ROPE_KERNEL(__half, f16)
