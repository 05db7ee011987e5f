// Row moves of a transformer's forward on [rows, width] row-major data: the embedding lookup (gather rows of a
// table by token id), a residual add, a bias added to every row, and a strided copy of a block of columns (the
// k and v columns of a fused qkv row into the KV cache). fp32 math on f32/bf16/f16 data. Also the mean |x| of
// every column of f32 data (AWQ's input statistic).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }

// out[r, :] = table[ids[r], :] (zeros for an id past the table's `vocab` rows); one block a (grid-strided) row,
// width in threads.
template <typename T>
__device__ void gather_rows(T *__restrict__ out, const T *__restrict__ table, const unsigned *__restrict__ ids,
                            int rows, int width, unsigned vocab) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const unsigned id = ids[r];
        const T *src = table + (long long)id * width;
        T *dst = out + (long long)r * width;
        for (int c = threadIdx.x; c < width; c += blockDim.x) dst[c] = id < vocab ? src[c] : from_f32<T>(0.f);
    }
}

// x[i] += y[i]
template <typename T>
__device__ void add_assign(T *__restrict__ x, const T *__restrict__ y, long long n) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        x[i] = from_f32<T>(to_f32(x[i]) + to_f32(y[i]));
}

// x[r, c] += bias[c] over n = rows * width elements.
template <typename T>
__device__ void add_bias(T *__restrict__ x, const T *__restrict__ bias, long long n, int width) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        x[i] = from_f32<T>(to_f32(x[i]) + to_f32(bias[i % width]));
}

// dst[r * dst_stride + c] = src[r * src_stride + c] for r < rows, c < width (offsets applied by the caller).
template <typename T>
__device__ void copy_columns(T *__restrict__ dst, int dst_stride, const T *__restrict__ src, int src_stride,
                             int rows, int width) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x)
        for (int c = threadIdx.x; c < width; c += blockDim.x)
            dst[(long long)r * dst_stride + c] = src[(long long)r * src_stride + c];
}

#define ROWS_KERNELS(T, S)                                                                                       \
    extern "C" __global__ void gather_rows_##S(T *out, const T *table, const unsigned *ids, int rows, int w,     \
                                               unsigned vocab) {                                                 \
        wait_for_previous_kernel();                                                                              \
        gather_rows(out, table, ids, rows, w, vocab);                                                            \
    }                                                                                                            \
    extern "C" __global__ void add_assign_##S(T *x, const T *y, long long n) { add_assign(x, y, n); }            \
    extern "C" __global__ void add_bias_##S(T *x, const T *bias, long long n, int w) {                           \
        wait_for_previous_kernel();                                                                              \
        add_bias(x, bias, n, w);                                                                                 \
    }                                                                                                            \
    extern "C" __global__ void copy_columns_##S(T *dst, int ds, const T *src, int ss, int rows, int w) {         \
        copy_columns(dst, ds, src, ss, rows, w);                                                                 \
    }

ROWS_KERNELS(float, f32)
ROWS_KERNELS(__nv_bfloat16, bf16)
ROWS_KERNELS(__half, f16)

// out[c] = the mean over the rows of |x[r, c]|, summed in double in row order, one thread a column: bit for bit
// the CPU's column_abs_mean (kernels/src/cpu/rows.rs).
extern "C" __global__ void column_abs_mean_f32(float *__restrict__ out, const float *__restrict__ x, int rows,
                                               int width) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < width; c += gridDim.x * blockDim.x) {
        double s = 0.0;
        for (long long r = 0; r < rows; ++r) s += fabs((double)x[r * width + c]);
        out[c] = (float)(s / (double)(rows > 0 ? rows : 1));
    }
}
