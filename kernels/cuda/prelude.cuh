// Put before every kernel file when it is compiled (kernels/src/cuda/mod.rs, `cuda_source!`): helpers more than one
// file uses.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

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
// The same wait, issued only once `token` (made from loads the kernel issued before it: constant weights) has
// arrived, so those loads overlap the previous kernel: ptxas (CUDA 13.0) otherwise hoists the wait above loads it
// does not depend on, to the kernel's first instructions. The wait's predicate, token != ~token, always holds: every
// thread waits, unconditionally.
__device__ __forceinline__ void wait_for_previous_kernel_after(unsigned token) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile(
        "{\n .reg .pred p;\n .reg .b32 t;\n not.b32 t, %0;\n setp.ne.u32 p, %0, t;\n @p griddepcontrol.wait;\n}\n"
        :
        : "r"(token)
        : "memory");
#endif
}

// 16 bytes of data read once (weights): past L1.
__device__ __forceinline__ uint4 ldg_stream(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// RoPE's cos and sin of the angle pos · inv_freq (f32, as torch), times LongRoPE's scaling: one function for rope.cu
// and the decode step's fold in attention.cu, as rope_rotate below.
__device__ __forceinline__ void rope_cos_sin(float pos, float inv_freq, float scaling, float &c, float &s) {
    sincosf(pos * inv_freq, &s, &c);
    c *= scaling;
    s *= scaling;
}

// RoPE's rotation of the pair (x, y) = (x[i], x[i + rotary_dim / 2]) by the angle whose cos and sin (times the
// scaling) are c and s: (x·c − y·s, y·c + x·s), each an FMA on a rounded product, spelled out so that rope.cu and
// the decode step's fold in attention.cu give the same bits.
__device__ __forceinline__ float2 rope_rotate(float x, float y, float c, float s) {
    return make_float2(fmaf(x, c, -__fmul_rn(y, s)), fmaf(y, c, __fmul_rn(x, s)));
}

// One register of two 16-bit values (the first in the low half) as two floats, and two floats rounded into one.
__device__ __forceinline__ float2 unpack2(unsigned u, __nv_bfloat16) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&u));
}
__device__ __forceinline__ float2 unpack2(unsigned u, __half) {
    return __half22float2(*reinterpret_cast<const __half2 *>(&u));
}
__device__ __forceinline__ unsigned pack2(float lo, float hi, __nv_bfloat16) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned *>(&v);
}
__device__ __forceinline__ unsigned pack2(float lo, float hi, __half) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned *>(&v);
}

// RMSNorm folded into a product's input (decode: the norm before the attention's and the MLP's first product, and
// before the lm_head). `rms_factor`: rsqrt(mean(x²) + eps) over x[0, len) (16-bit elements, len % 8 == 0, 16-byte
// aligned), summed by the whole block (every thread calls it with the same arguments) and returned to every thread
// (`rms_factor_of` the same from squares each thread summed itself with `add_squares`, in rms_factor's order);
// `rms_normed`: 8 elements of x as rmsnorm.cu writes them, w * (x * factor) rounded once (the dense GEMV's input).
// The int4 products take w * (x * p) rounded once instead (`rms_scaled`), p the power of two at or under the factor
// (an exact scaling), and multiply their sums by rest = factor / p (`rms_split`): one rounding an element as
// rmsnorm.cu's, at another point (an input may round to its neighbour), in two packed multiplies a pair of elements
// where `rms_normed` takes nine instructions (as many as the int4 product's own work). A column past the batch
// (factor 0) gets p = 1, rest 0.
// ss plus the squares of 8 elements, in order.
template <typename T> __device__ __forceinline__ float add_squares(float ss, uint4 p) {
    const unsigned w[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const float2 f = unpack2(w[j], T());
        ss += f.x * f.x;
        ss += f.y * f.y;
    }
    return ss;
}
// The factor from each thread's share of the squares (its chunks threadIdx.x, + blockDim.x, ... in order).
__device__ __forceinline__ float rms_factor_of(float ss, int len, float eps) {
    __shared__ float partial[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    __syncthreads();  // an earlier call's readers are done with `partial`
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = ss;
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < (int)(blockDim.x + 31) / 32; ++w) total += partial[w];
    return rsqrtf(total / (float)len + eps);
}
template <typename T> __device__ float rms_factor(const T *__restrict__ x, int len, float eps) {
    const uint4 *v = reinterpret_cast<const uint4 *>(x);
    float ss = 0.f;
    for (int i = threadIdx.x; i < len / 8; i += blockDim.x) ss = add_squares<T>(ss, __ldg(v + i));
    return rms_factor_of(ss, len, eps);
}
template <typename T> __device__ __forceinline__ uint4 rms_normed(uint4 x, uint4 w, float factor) {
    const unsigned xs[4] = {x.x, x.y, x.z, x.w}, ws[4] = {w.x, w.y, w.z, w.w};
    unsigned o[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const float2 a = unpack2(xs[j], T()), b = unpack2(ws[j], T());
        o[j] = pack2(b.x * (a.x * factor), b.y * (a.y * factor), T());
    }
    return make_uint4(o[0], o[1], o[2], o[3]);
}
struct RmsSplit {
    unsigned p2;  // p in both halves of a pair of the activation dtype
    float rest;
};
// The power of two at or under a positive normal x: x's exponent bits alone.
__device__ __forceinline__ float pow2_at_or_under(float x) { return __uint_as_float(__float_as_uint(x) & 0x7f800000u); }
// factor / p as factor times 2^-e (p = 2^e normal): exact, as the division is, without its slow path.
__device__ __forceinline__ float rms_rest(float factor, float p) {
    return factor * __uint_as_float(0x7f000000u - __float_as_uint(p));
}
__device__ __forceinline__ RmsSplit rms_split(float factor, __nv_bfloat16) {
    const float p = factor > 0.f ? pow2_at_or_under(factor) : 1.f;
    return RmsSplit{pack2(p, p, __nv_bfloat16()), rms_rest(factor, p)};
}
__device__ __forceinline__ RmsSplit rms_split(float factor, __half) {
    // Within fp16's normal range, where the scaling stays exact.
    const float p = factor > 0.f ? fminf(fmaxf(pow2_at_or_under(factor), 0x1p-14f), 0x1p15f) : 1.f;
    return RmsSplit{pack2(p, p, __half()), rms_rest(factor, p)};
}
__device__ __forceinline__ unsigned mul2(unsigned a, unsigned b, __nv_bfloat16) {
    const __nv_bfloat162 v =
        __hmul2(*reinterpret_cast<const __nv_bfloat162 *>(&a), *reinterpret_cast<const __nv_bfloat162 *>(&b));
    return *reinterpret_cast<const unsigned *>(&v);
}
__device__ __forceinline__ unsigned mul2(unsigned a, unsigned b, __half) {
    const __half2 v = __hmul2(*reinterpret_cast<const __half2 *>(&a), *reinterpret_cast<const __half2 *>(&b));
    return *reinterpret_cast<const unsigned *>(&v);
}
// 8 elements of x as w * (x * p), p packed as `RmsSplit::p2`.
template <typename T> __device__ __forceinline__ uint4 rms_scaled(uint4 x, uint4 w, unsigned p2) {
    return make_uint4(mul2(mul2(x.x, p2, T()), w.x, T()), mul2(mul2(x.y, p2, T()), w.y, T()),
                      mul2(mul2(x.z, p2, T()), w.z, T()), mul2(mul2(x.w, p2, T()), w.w, T()));
}

// SwiGLU's gating of one pair, silu(gate) * up = gate / (1 + exp(-gate)) * up: silu_mul.cu's forward and w4_mm's
// SwiGLU write-out, so that the two round alike.
__device__ __forceinline__ float silu_mul_of(float gate, float up) { return gate / (1.f + expf(-gate)) * up; }
