// W4A16: int4 weight-only matrix products y[b, n] = sum_k x[b, k] * W[n, k] with fp16/bf16 activations and fp32
// accumulation on the tensor cores (mma.sync m16n8k16), the weights dequantized in registers; plus `dequantize`
// (int4 -> dense fp16/bf16 [N, K]) and the act-order input gather.
//
// One device layout for every on-disk int4 layout (AutoAWQ GEMM, GPTQ v1 with g_idx, MatMulNBits / Olive): the
// loader repacks once on the host (kernels/src/cpu/w4a16_tiles.rs, a linear pass over the packed bytes) into
// "tiles" laid out for the mma's A operand, so each thread's 16-byte load is exactly its four A fragments and the
// kernels need no shared memory shuffles. The weights are the A operand (M = output features, "swap AB"), the
// activations the B operand (N = batch), so batch 1 wastes only mma lanes, never weight bytes.
//
// Tiles: W is cut into 16-row tiles (N % 16 == 0) and 64-input chunks (K % 64 == 0); a (tile, chunk) is 32 lanes x
// 16 bytes, lane = 4g + t (g = lane / 4, t = lane % 4), its four u32 words j = 0..3 one per k16 mma step. Inputs are
// renumbered inside a chunk so that lane t's activations are the 16 contiguous x[64c + 16t .. +16): mma step j of
// lane (g, t) sees inputs 64c + 16t + 4j + {0, 1, 2, 3} in the fragment places {2t, 2t+1, 2t+8, 2t+9}. The word's
// nibbles: 0 and 4 = row g, inputs +0 and +1 (fragment a0); 1 and 5 = row g+8, +0/+1 (a1); 2 and 6 = row g,
// +2/+3 (a2); 3 and 7 = row g+8, +2/+3 (a3): masks 0x000f000f / 0x00f000f0 (fp16) or shifts by 4 (bf16) give the
// pairs as 16-bit floats through the exponent trick (1024 + q in fp16, 128 + q in bf16, both exact).
// Group metadata: `meta` u32 [G, N], scale bits (activation dtype) low, the zero point as a float of that dtype
// high; group of input k is k / group (group % 16 == 0, a ragged last group allowed). Act-order (GPTQ g_idx) is a
// permutation of the inputs into group order, applied to W at repacking and to x by `w4_gather_u16`.
// Dequantized weights are ((q - z) * s) rounded once to the activation dtype: (q - z) is exact, one multiply.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef unsigned int u32;

__device__ __forceinline__ u32 as_u32(__half2 v) { return *reinterpret_cast<u32 *>(&v); }
__device__ __forceinline__ u32 as_u32(__nv_bfloat162 v) { return *reinterpret_cast<u32 *>(&v); }

template <typename T> struct W4;

template <> struct W4<__half> {
    typedef __half2 T2;
    // The four A fragments of word `w` for rows g (meta m0) and g+8 (meta m1).
    __device__ static __forceinline__ void dequant(u32 w, u32 m0, u32 m1, u32 a[4]) {
        const __half2 s0 = __half2half2(__ushort_as_half((unsigned short)(m0 & 0xffff)));
        const __half2 s1 = __half2half2(__ushort_as_half((unsigned short)(m1 & 0xffff)));
        const __half z0 = __ushort_as_half((unsigned short)(m0 >> 16));
        const __half z1 = __ushort_as_half((unsigned short)(m1 >> 16));
        const __half2 lo_off = __half2half2(__hadd(z0, __float2half(1024.f)));  // 1024 + z, exact
        const __half2 hi_off = __half2half2(__hneg(__hadd(z1, __float2half(64.f))));
        const __half2 sixteenth = __float2half2_rn(0.0625f);
        u32 lo = (w & 0x000f000fu) | 0x64006400u, hi = (w & 0x00f000f0u) | 0x64006400u;
        a[0] = as_u32(__hmul2(__hsub2(*reinterpret_cast<__half2 *>(&lo), lo_off), s0));
        // (1024 + 16q) / 16 - (64 + z) = q - z, exact in one fma.
        a[1] = as_u32(__hmul2(__hfma2(*reinterpret_cast<__half2 *>(&hi), sixteenth, hi_off), s1));
        w >>= 8;
        lo = (w & 0x000f000fu) | 0x64006400u;
        hi = (w & 0x00f000f0u) | 0x64006400u;
        a[2] = as_u32(__hmul2(__hsub2(*reinterpret_cast<__half2 *>(&lo), lo_off), s0));
        a[3] = as_u32(__hmul2(__hfma2(*reinterpret_cast<__half2 *>(&hi), sixteenth, hi_off), s1));
    }
    __device__ static __forceinline__ void mma(float c[4], const u32 a[4], u32 b0, u32 b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    __device__ static __forceinline__ __half from_f32(float v) { return __float2half_rn(v); }
};

template <> struct W4<__nv_bfloat16> {
    typedef __nv_bfloat162 T2;
    __device__ static __forceinline__ void dequant(u32 w, u32 m0, u32 m1, u32 a[4]) {
        const __nv_bfloat162 s0 = __bfloat162bfloat162(__ushort_as_bfloat16((unsigned short)(m0 & 0xffff)));
        const __nv_bfloat162 s1 = __bfloat162bfloat162(__ushort_as_bfloat16((unsigned short)(m1 & 0xffff)));
        const __nv_bfloat16 z0 = __ushort_as_bfloat16((unsigned short)(m0 >> 16));
        const __nv_bfloat16 z1 = __ushort_as_bfloat16((unsigned short)(m1 >> 16));
        const __nv_bfloat162 off0 = __bfloat162bfloat162(__hadd(z0, __float2bfloat16(128.f)));  // 128 + z, exact
        const __nv_bfloat162 off1 = __bfloat162bfloat162(__hadd(z1, __float2bfloat16(128.f)));
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            u32 v = ((w >> (4 * i)) & 0x000f000fu) | 0x43004300u;  // bf16 128 + q
            a[i] = as_u32(__hmul2(__hsub2(*reinterpret_cast<__nv_bfloat162 *>(&v), (i & 1) ? off1 : off0),
                                  (i & 1) ? s1 : s0));
        }
    }
    __device__ static __forceinline__ void mma(float c[4], const u32 a[4], u32 b0, u32 b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    __device__ static __forceinline__ __nv_bfloat16 from_f32(float v) { return __float2bfloat16_rn(v); }
};

__device__ __forceinline__ u32 word(const uint4 &v, int j) { return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w; }

__device__ __forceinline__ uint4 ldg_stream(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// The product for one block: warps split as WK (input chunks, reduced at the end) x WN (row groups of RT tiles) x
// WB (batch groups of NB8 x 8 columns). Weight tiles and their metadata are prefetched one chunk ahead.
template <typename T, int RT, int NB8, int WK, int WN, int WB>
__device__ __forceinline__ void w4_mm(T *__restrict__ y, const T *__restrict__ x, const uint4 *__restrict__ tiles,
                                      const u32 *__restrict__ meta, int batch, int n, int k, int group) {
    typedef W4<T> Op;
    constexpr int ACC = RT * NB8 * 4;
    constexpr int RED = (WK - 1) * WN * WB * 32 * ACC;
    static_assert(RED * 4 <= 48 * 1024, "reduction buffer over 48 KB");
    __shared__ float red[RED > 0 ? RED : 1];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wk = warp % WK, wn = (warp / WK) % WN, wb = warp / (WK * WN);
    const int g = lane >> 2, t = lane & 3;
    const int ntiles = n >> 4, nchunks = k >> 6;
    const int tile0 = (blockIdx.x * WN + wn) * RT;
    const int col0 = (blockIdx.y * WB + wb) * NB8 * 8;

    float acc[RT][NB8][4];
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
        for (int b = 0; b < NB8; ++b)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[r][b][e] = 0.f;

    bool row_ok[RT];
#pragma unroll
    for (int r = 0; r < RT; ++r) row_ok[r] = tile0 + r < ntiles;
    const T *xrow[NB8];
    bool col_ok[NB8];
#pragma unroll
    for (int b = 0; b < NB8; ++b) {
        const int col = col0 + b * 8 + g;
        col_ok[b] = col < batch;
        xrow[b] = x + (size_t)(col_ok[b] ? col : 0) * k + 16 * t;
    }

    uint4 wcur[RT], wnxt[RT];
    u32 mcur[RT][2], mnxt[RT][2];
    auto load = [&](int c, uint4 (&wv)[RT], u32 (&mv)[RT][2]) {
        const int grp = (c * 64 + 16 * t) / group;
#pragma unroll
        for (int r = 0; r < RT; ++r) {
            if (row_ok[r]) {
                wv[r] = ldg_stream(tiles + ((size_t)(tile0 + r) * nchunks + c) * 32 + lane);
                const u32 *m = meta + (size_t)grp * n + (tile0 + r) * 16 + g;
                mv[r][0] = __ldg(m);
                mv[r][1] = __ldg(m + 8);
            } else {
                wv[r] = make_uint4(0, 0, 0, 0);
                mv[r][0] = mv[r][1] = 0;
            }
        }
    };
    if (wk < nchunks) load(wk, wcur, mcur);
    for (int c = wk; c < nchunks; c += WK) {
        if (c + WK < nchunks) load(c + WK, wnxt, mnxt);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            uint4 xv[NB8];
#pragma unroll
            for (int b = 0; b < NB8; ++b)
                xv[b] = col_ok[b] ? __ldg(reinterpret_cast<const uint4 *>(xrow[b] + c * 64 + 8 * h))
                                  : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int jj = 0; jj < 2; ++jj) {
                const int j = 2 * h + jj;
#pragma unroll
                for (int r = 0; r < RT; ++r) {
                    u32 a[4];
                    Op::dequant(word(wcur[r], j), mcur[r][0], mcur[r][1], a);
#pragma unroll
                    for (int b = 0; b < NB8; ++b)
                        Op::mma(acc[r][b], a, jj ? xv[b].z : xv[b].x, jj ? xv[b].w : xv[b].y);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < RT; ++r) {
            wcur[r] = wnxt[r];
            mcur[r][0] = mnxt[r][0];
            mcur[r][1] = mnxt[r][1];
        }
    }

    if (WK > 1) {
        const int slot = (wb * WN + wn) * 32 + lane;
        if (wk > 0) {
            float *dst = red + ((size_t)(wk - 1) * WN * WB * 32 + slot) * ACC;
#pragma unroll
            for (int r = 0; r < RT; ++r)
#pragma unroll
                for (int b = 0; b < NB8; ++b)
#pragma unroll
                    for (int e = 0; e < 4; ++e) dst[(r * NB8 + b) * 4 + e] = acc[r][b][e];
        }
        __syncthreads();
        if (wk > 0) return;
        for (int s = 0; s < WK - 1; ++s) {
            const float *src = red + ((size_t)s * WN * WB * 32 + slot) * ACC;
#pragma unroll
            for (int r = 0; r < RT; ++r)
#pragma unroll
                for (int b = 0; b < NB8; ++b)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[r][b][e] += src[(r * NB8 + b) * 4 + e];
        }
    }

#pragma unroll
    for (int r = 0; r < RT; ++r) {
        if (!row_ok[r]) continue;
        const int row = (tile0 + r) * 16 + g;
#pragma unroll
        for (int b = 0; b < NB8; ++b) {
            const int col = col0 + b * 8 + 2 * t;
            if (col < batch) {
                y[(size_t)col * n + row] = Op::from_f32(acc[r][b][0]);
                y[(size_t)col * n + row + 8] = Op::from_f32(acc[r][b][2]);
            }
            if (col + 1 < batch) {
                y[(size_t)(col + 1) * n + row] = Op::from_f32(acc[r][b][1]);
                y[(size_t)(col + 1) * n + row + 8] = Op::from_f32(acc[r][b][3]);
            }
        }
    }
}

// The configurations the launcher (kernels/src/cuda/w4a16.rs, CONFIGS) may pick: name w4_mm_<dtype>_<RT>_<NB8>_
// <WK>_<WN>_<WB>, block = 32 * WK * WN * WB threads.
#define W4_MM(TY, NAME, RT, NB8, WK, WN, WB)                                                                     \
    extern "C" __global__ void __launch_bounds__(32 * WK * WN * WB)                                              \
        w4_mm_##NAME##_##RT##_##NB8##_##WK##_##WN##_##WB(TY *y, const TY *x, const uint4 *tiles, const u32 *meta, \
                                                         int batch, int n, int k, int group) {                   \
        w4_mm<TY, RT, NB8, WK, WN, WB>(y, x, tiles, meta, batch, n, k, group);                                    \
    }
#define W4_MM_BOTH(RT, NB8, WK, WN, WB)                                                                           \
    W4_MM(__half, f16, RT, NB8, WK, WN, WB)                                                                      \
    W4_MM(__nv_bfloat16, bf16, RT, NB8, WK, WN, WB)

W4_MM_BOTH(1, 1, 8, 1, 1)
W4_MM_BOTH(1, 1, 16, 1, 1)
W4_MM_BOTH(2, 1, 8, 1, 1)
W4_MM_BOTH(1, 1, 4, 2, 1)
W4_MM_BOTH(1, 2, 8, 1, 1)
W4_MM_BOTH(2, 2, 8, 1, 1)
W4_MM_BOTH(1, 2, 16, 1, 1)
W4_MM_BOTH(2, 2, 4, 2, 1)
W4_MM_BOTH(2, 4, 4, 2, 1)
W4_MM_BOTH(1, 4, 8, 1, 1)
W4_MM_BOTH(2, 8, 2, 4, 1)
W4_MM_BOTH(2, 8, 4, 2, 1)
W4_MM_BOTH(1, 8, 4, 2, 1)
W4_MM_BOTH(2, 8, 1, 8, 1)
W4_MM_BOTH(2, 8, 1, 4, 2)
W4_MM_BOTH(2, 8, 2, 2, 2)
W4_MM_BOTH(1, 8, 2, 4, 2)

// Dense W [N, K] (the original input order: column perm[k'] when has_perm) from the tiles, one thread a 16-byte
// tile load, with the GEMM's own dequantization (so the values are identical).
template <typename T>
__device__ void w4_dequantize(T *__restrict__ w, const uint4 *__restrict__ tiles, const u32 *__restrict__ meta,
                              const u32 *__restrict__ perm, int has_perm, int n, int k, int group) {
    const int nchunks = k >> 6;
    const long long total = (long long)(n >> 4) * nchunks * 32;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int lane = (int)(i & 31), g = lane >> 2, t = lane & 3;
        const int c = (int)((i >> 5) % nchunks);
        const int tile = (int)((i >> 5) / nchunks);
        const int row = tile * 16 + g;
        const int grp = (c * 64 + 16 * t) / group;
        const u32 m0 = meta[(size_t)grp * n + row], m1 = meta[(size_t)grp * n + row + 8];
        const uint4 v = tiles[i];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            u32 a[4];
            W4<T>::dequant(word(v, j), m0, m1, a);
            const int k0 = c * 64 + 16 * t + 4 * j;
            const T *lo0 = reinterpret_cast<const T *>(&a[0]), *lo1 = reinterpret_cast<const T *>(&a[1]);
            const T *hi0 = reinterpret_cast<const T *>(&a[2]), *hi1 = reinterpret_cast<const T *>(&a[3]);
            const T r0[4] = {lo0[0], lo0[1], hi0[0], hi0[1]};  // row g, inputs k0..k0+3
            const T r1[4] = {lo1[0], lo1[1], hi1[0], hi1[1]};  // row g + 8
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int col = has_perm ? (int)perm[k0 + e] : k0 + e;
                w[(size_t)row * k + col] = r0[e];
                w[(size_t)(row + 8) * k + col] = r1[e];
            }
        }
    }
}

extern "C" __global__ void w4_dequantize_f16(__half *w, const uint4 *tiles, const u32 *meta, const u32 *perm,
                                             int has_perm, int n, int k, int group) {
    w4_dequantize(w, tiles, meta, perm, has_perm, n, k, group);
}
extern "C" __global__ void w4_dequantize_bf16(__nv_bfloat16 *w, const uint4 *tiles, const u32 *meta,
                                              const u32 *perm, int has_perm, int n, int k, int group) {
    w4_dequantize(w, tiles, meta, perm, has_perm, n, k, group);
}

// Act-order: out[b, k'] = x[b, perm[k']] (16-bit elements of either dtype).
extern "C" __global__ void w4_gather_u16(unsigned short *out, const unsigned short *x, const u32 *perm, int batch,
                                         int k) {
    const long long total = (long long)batch * k;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long b = i / k;
        out[i] = x[b * k + perm[i - b * k]];
    }
}
