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
// Tiles: W is cut into 16-row tiles (N % 16 == 0) and 64-input chunks (K % 64 == 0); a (tile, chunk) is 32 slots x
// 16 bytes, lane = 4g + t (g = lane / 4, t = lane % 4) in slot tile_slot(lane) = lane ^ (lane / 8) (so that both a
// warp's own 16-byte reads and w4_ws's reads of quad lane s's words are free of shared-memory bank conflicts), its
// four u32 words one per k16 mma step j, stored in the step order 0, 2, 1, 3 (steps j and j + 2 side by side, which
// w4_ws reads together: `word`). Inputs are
// renumbered inside a chunk so that lane t's activations are the 16 contiguous x[64c + 16t .. +16): mma step j of
// lane (g, t) sees inputs 64c + 16t + 4j + {0, 1, 2, 3} in the fragment places {2t, 2t+1, 2t+8, 2t+9}. The word's
// nibbles: 0 and 4 = row g, inputs +0 and +1 (fragment a0); 1 and 5 = row g+8, +0/+1 (a1); 2 and 6 = row g,
// +2/+3 (a2); 3 and 7 = row g+8, +2/+3 (a3): masks 0x000f000f / 0x00f000f0 (fp16) or shifts by 4 (bf16) give the
// pairs as 16-bit floats through the exponent trick (1024 + q in fp16, 128 + q in bf16, both exact).
// Group metadata: `meta` u32 [G, N], scale bits (activation dtype) low, the zero point as a float of that dtype
// high; group of input k is k / group (group % 16 == 0, a ragged last group allowed). Act-order (GPTQ g_idx) is a
// permutation of the inputs into group order, applied to W at repacking and to x by `w4_gather_u16`.
// Dequantized weights are ((q - z) * s) rounded once to the activation dtype: (q - z) is exact, one multiply.
// Two product kernels: w4_mm (batch tiles of 8 or 16 columns, K split over the warps of a block, weights streamed
// from memory into registers; with groups of whole 64-input chunks it feeds the exact (q - z) to the mma and scales
// each chunk's fp32 sums) for decode, and w4_mm_pipe (cp.async stages in shared memory, K split over blocks when
// the output tiles are few) for larger batches; kernels/src/cuda/w4a16.rs picks one per batch size. w4a16_sm90.cu,
// appended to this file, adds the warp-specialised wgmma kernel for sm_90a.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef unsigned int u32;

__device__ __forceinline__ u32 as_u32(__half2 v) { return *reinterpret_cast<u32 *>(&v); }
__device__ __forceinline__ u32 as_u32(__nv_bfloat162 v) { return *reinterpret_cast<u32 *>(&v); }

// (a & mask) | magic in one LOP3 (written as PTX: the compiler otherwise splits it into two).
__device__ __forceinline__ u32 and_or(u32 a, u32 mask, u32 magic) {
    u32 r;
    asm("lop3.b32 %0, %1, %2, %3, 0xea;\n" : "=r"(r) : "r"(a), "r"(mask), "r"(magic));
    return r;
}

template <typename T> struct W4;

template <> struct W4<__half> {
    static constexpr bool BF16 = false;
    // The four A fragments of word `w` as (q - z), exact, for rows g (meta m0) and g+8 (meta m1).
    __device__ static __forceinline__ void levels(u32 w, u32 m0, u32 m1, u32 a[4]) {
        // (1024 + z0, -(64 + z1)), exact, from the two zero points gathered into one register.
        const u32 zz = __byte_perm(m0, m1, 0x7632);
        const __half2 off = __hfma2(*reinterpret_cast<const __half2 *>(&zz), __floats2half2_rn(1.f, -1.f),
                                    __floats2half2_rn(1024.f, -64.f));
        const __half2 lo_off = __low2half2(off), hi_off = __high2half2(off);
        const __half2 sixteenth = __float2half2_rn(0.0625f);
        u32 lo = and_or(w, 0x000f000fu, 0x64006400u), hi = and_or(w, 0x00f000f0u, 0x64006400u);
        a[0] = as_u32(__hsub2(*reinterpret_cast<__half2 *>(&lo), lo_off));
        // (1024 + 16q) / 16 - (64 + z) = q - z, exact in one fma.
        a[1] = as_u32(__hfma2(*reinterpret_cast<__half2 *>(&hi), sixteenth, hi_off));
        w >>= 8;
        lo = and_or(w, 0x000f000fu, 0x64006400u);
        hi = and_or(w, 0x00f000f0u, 0x64006400u);
        a[2] = as_u32(__hsub2(*reinterpret_cast<__half2 *>(&lo), lo_off));
        a[3] = as_u32(__hfma2(*reinterpret_cast<__half2 *>(&hi), sixteenth, hi_off));
    }
    // The fragments dequantized: (q - z) * s rounded once.
    __device__ static __forceinline__ void dequant(u32 w, u32 m0, u32 m1, u32 a[4]) {
        levels(w, m0, m1, a);
        const __half2 s0 = __half2half2(__ushort_as_half((unsigned short)(m0 & 0xffff)));
        const __half2 s1 = __half2half2(__ushort_as_half((unsigned short)(m1 & 0xffff)));
#pragma unroll
        for (int i = 0; i < 4; ++i)
            a[i] = as_u32(__hmul2(*reinterpret_cast<__half2 *>(&a[i]), (i & 1) ? s1 : s0));
    }
    __device__ static __forceinline__ float scale(u32 m) {
        return __half2float(__ushort_as_half((unsigned short)(m & 0xffff)));
    }
    __device__ static __forceinline__ void mma(float c[4], const u32 a[4], u32 b0, u32 b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    __device__ static __forceinline__ __half from_f32(float v) { return __float2half_rn(v); }
    __device__ static __forceinline__ float to_f32(__half v) { return __half2float(v); }
};

template <> struct W4<__nv_bfloat16> {
    static constexpr bool BF16 = true;
    __device__ static __forceinline__ void levels(u32 w, u32 m0, u32 m1, u32 a[4]) {
        // (128 + z0, 128 + z1), exact, from the two zero points gathered into one register.
        const u32 zz = __byte_perm(m0, m1, 0x7632);
        const __nv_bfloat162 off =
            __hadd2(*reinterpret_cast<const __nv_bfloat162 *>(&zz), __float2bfloat162_rn(128.f));
        const __nv_bfloat162 off0 = __low2bfloat162(off), off1 = __high2bfloat162(off);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            u32 v = and_or(w >> (4 * i), 0x000f000fu, 0x43004300u);  // bf16 128 + q
            a[i] = as_u32(__hsub2(*reinterpret_cast<__nv_bfloat162 *>(&v), (i & 1) ? off1 : off0));
        }
    }
    __device__ static __forceinline__ void dequant(u32 w, u32 m0, u32 m1, u32 a[4]) {
        levels(w, m0, m1, a);
        const __nv_bfloat162 s0 = __bfloat162bfloat162(__ushort_as_bfloat16((unsigned short)(m0 & 0xffff)));
        const __nv_bfloat162 s1 = __bfloat162bfloat162(__ushort_as_bfloat16((unsigned short)(m1 & 0xffff)));
#pragma unroll
        for (int i = 0; i < 4; ++i)
            a[i] = as_u32(__hmul2(*reinterpret_cast<__nv_bfloat162 *>(&a[i]), (i & 1) ? s1 : s0));
    }
    __device__ static __forceinline__ float scale(u32 m) { return __uint_as_float(m << 16); }
    __device__ static __forceinline__ void mma(float c[4], const u32 a[4], u32 b0, u32 b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    __device__ static __forceinline__ __nv_bfloat16 from_f32(float v) { return __float2bfloat16_rn(v); }
    __device__ static __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
};

// The group of input i: a shift where the group size is a power of two (all the usual sizes), else a division.
struct GroupOf {
    int shift, group;
    __device__ __forceinline__ int operator()(int i) const { return shift >= 0 ? i >> shift : i / group; }
    // The same where the kernel knows which it is (P2: a power of two, shift >= 0), with no branch.
    template <bool P2> __device__ __forceinline__ int of(int i) const { return P2 ? i >> shift : i / group; }
};
__device__ __forceinline__ GroupOf group_of(int group) {
    return GroupOf{(group & (group - 1)) == 0 ? __ffs(group) - 1 : -1, group};
}

__device__ __forceinline__ int tile_slot(int lane) { return lane ^ (lane >> 3); }

// k16 step j's word of a lane's 16 bytes (stored in the step order 0, 2, 1, 3), and plain element i of a uint4.
__device__ __forceinline__ u32 word(const uint4 &v, int j) { return j == 0 ? v.x : j == 1 ? v.z : j == 2 ? v.y : v.w; }
__device__ __forceinline__ u32 elem(const uint4 &v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

// The product for one block: warps split as WK (input chunks, reduced at the end) x WN (row groups of RT tiles) x
// WB (batch groups of NB8 x 8 columns). Each warp keeps PF chunks' weight tiles and metadata loading while it
// consumes one. With `accumulate` y += the product (the fp32 sum plus y, rounded once). With NORM, x goes through
// RMSNorm (weight `norm`, epsilon `eps`) first, each element rounded once as by rmsnorm.cu but at another point
// (prelude.cuh's rms_factor and rms_split; x in its original input order: no act-order). With SWIGLU (RT = 2) W is
// SwiGLU's gate_up [2·half, k] (gate rows first): a warp's two row tiles are gate tile i and up tile i (half / 16
// apart), and y [batch, half] gets silu(gate) * up of the products rounded as written, as silu_mul.cu computes it
// (prelude.cuh's silu_mul_of).
// The chunk loop's two choices are the kernel's (MODE = 2·SA + P2, picked by the launcher for the weight's group,
// so that no chunk branches on them and each kernel holds one loop's registers): SA, the chunk's sums scaled after
// the mma (small batch tiles, groups of whole chunks: fewer instructions, exact levels); P2, the group size a power
// of two (a shift, not a division).
template <typename T, int RT, int NB8, int WK, int WN, int WB, int PF, bool NORM, bool SWIGLU, int MODE>
__device__ __forceinline__ void w4_mm(T *__restrict__ y, const T *__restrict__ x, const uint4 *__restrict__ tiles,
                                      const u32 *__restrict__ meta, int batch, int n, int k, int group,
                                      int accumulate, const T *__restrict__ norm, float eps) {
    typedef W4<T> Op;
    constexpr bool SA = MODE >> 1, P2 = MODE & 1;
    static_assert(!SA || NB8 <= 2, "the sums are scaled after the mma for small batch tiles only");
    constexpr int ACC = RT * NB8 * 4;
    constexpr int RED = (WK - 1) * WN * WB * 32 * ACC;
    static_assert(RED * 4 <= 48 * 1024, "reduction buffer over 48 KB");
    __shared__ float red[RED > 0 ? RED : 1];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wk = warp % WK, wn = (warp / WK) % WN, wb = warp / (WK * WN);
    const int g = lane >> 2, t = lane & 3;
    const int ntiles = n >> 4, nchunks = k >> 6;
    static_assert(!SWIGLU || RT == 2, "SwiGLU's write-out pairs a gate tile with an up tile");
    // Row tile r of this warp: RT adjacent tiles, or with SWIGLU gate tile `pair` and up tile `pair` + half / 16.
    const int pair = blockIdx.x * WN + wn, tile0 = pair * RT;
    auto tile_of = [&](int r) { return SWIGLU ? pair + r * (ntiles / 2) : tile0 + r; };
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
    for (int r = 0; r < RT; ++r) row_ok[r] = SWIGLU ? pair < ntiles / 2 : tile0 + r < ntiles;
    const T *xrow[NB8];
    bool col_ok[NB8];
#pragma unroll
    for (int b = 0; b < NB8; ++b) {
        const int col = col0 + b * 8 + g;
        col_ok[b] = col < batch;
        xrow[b] = x + (size_t)(col_ok[b] ? col : 0) * k + 16 * t;
        asm volatile("" : "+l"(xrow[b]));  // kept in a register (see wbase below)
    }

    // Per-row-tile bases, so a chunk's loads cost a 32-bit offset each.
    const GroupOf grp_of = group_of(group);
    const uint4 *wbase[RT];
    const u32 *mbase[RT];
#pragma unroll
    for (int r = 0; r < RT; ++r) {
        wbase[r] = tiles + (size_t)(row_ok[r] ? tile_of(r) : 0) * nchunks * 32 + tile_slot(lane);
        mbase[r] = meta + (row_ok[r] ? tile_of(r) : 0) * 16 + g;
        // Opaque to the compiler, so it keeps them in registers: it recomputed them every chunk (about 20 of a
        // chunk's 145 instructions a warp, ptxas 13.0), and the batch-1 kernel is bound by its issue rate.
        asm volatile("" : "+l"(wbase[r]), "+l"(mbase[r]));
    }
    // A row tile past n loads tile 0's words (its bases point there): its sums are never written.
    auto load = [&](int c, uint4 (&wv)[RT], u32 (&mv)[RT][2]) {
        const int moff = grp_of.template of<P2>(c * 64 + 16 * t) * n;
#pragma unroll
        for (int r = 0; r < RT; ++r) {
            wv[r] = ldg_stream(wbase[r] + c * 32);
            const u32 *m = mbase[r] + moff;
            mv[r][0] = __ldg(m);
            mv[r][1] = __ldg(m + 8);
        }
    };
    // NORM: RMSNorm's factor of each of the block's columns (set after the first loads), and the power of two that
    // scales each of the warp's input columns (prelude.cuh's rms_split: the rest multiplies the sums at the end).
    constexpr int COLS = NB8 * 8 * WB;
    __shared__ float factors[NORM ? COLS : 1];
    const int colb = blockIdx.y * COLS;
    unsigned xscale[NB8];
    // Column b's 8 activations h of lane t's 16 in chunk c (normalized with NORM, but for the rest). Past the batch,
    // column 0's: an mma's output column reads only its own input column, and those outputs are never written.
    auto load_x = [&](int b, int c, int h) {
        const uint4 v = __ldg(reinterpret_cast<const uint4 *>(xrow[b] + c * 64 + 8 * h));
        if constexpr (NORM)
            return rms_scaled<T>(v, __ldg(reinterpret_cast<const uint4 *>(norm + c * 64 + 16 * t + 8 * h)), xscale[b]);
        return v;
    };
    // One chunk's products from its weight words `wcur` and metadata `mcur`.
    auto consume = [&](int c, const uint4 (&wcur)[RT], const u32 (&mcur)[RT][2]) {
        if constexpr (SA) {
            // (q - z) exact in the mma, this chunk's sums scaled in fp32 (one group per chunk).
            float part[RT][NB8][4];
#pragma unroll
            for (int r = 0; r < RT; ++r)
#pragma unroll
                for (int b = 0; b < NB8; ++b)
#pragma unroll
                    for (int e = 0; e < 4; ++e) part[r][b][e] = 0.f;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                uint4 xv[NB8];
#pragma unroll
                for (int b = 0; b < NB8; ++b) xv[b] = load_x(b, c, h);
#pragma unroll
                for (int jj = 0; jj < 2; ++jj) {
                    const int j = 2 * h + jj;
#pragma unroll
                    for (int r = 0; r < RT; ++r) {
                        u32 a[4];
                        Op::levels(word(wcur[r], j), mcur[r][0], mcur[r][1], a);
#pragma unroll
                        for (int b = 0; b < NB8; ++b)
                            Op::mma(part[r][b], a, jj ? xv[b].z : xv[b].x, jj ? xv[b].w : xv[b].y);
                    }
                }
            }
#pragma unroll
            for (int r = 0; r < RT; ++r) {
                const float s0 = Op::scale(mcur[r][0]), s1 = Op::scale(mcur[r][1]);
#pragma unroll
                for (int b = 0; b < NB8; ++b) {
                    acc[r][b][0] = fmaf(s0, part[r][b][0], acc[r][b][0]);
                    acc[r][b][1] = fmaf(s0, part[r][b][1], acc[r][b][1]);
                    acc[r][b][2] = fmaf(s1, part[r][b][2], acc[r][b][2]);
                    acc[r][b][3] = fmaf(s1, part[r][b][3], acc[r][b][3]);
                }
            }
        } else {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                uint4 xv[NB8];
#pragma unroll
                for (int b = 0; b < NB8; ++b) xv[b] = load_x(b, c, h);
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
        }
    };
    // A ring of PF + 1 register slots: PF chunks' loads stay in flight while one is consumed (the loop is unrolled
    // over the ring, so no slot is copied: a copy would wait for its load).
    // Warp wk takes chunks wk, wk + WK, ...
    uint4 wring[PF + 1][RT];
    u32 mring[PF + 1][RT][2];
    unsigned token = 0;  // of the first loads: the weights are constant, so they go before the wait, x and y after
#pragma unroll
    for (int i = 0; i < PF; ++i)
        if (wk + i * WK < nchunks) {
            load(wk + i * WK, wring[i], mring[i]);
            token ^= wring[i][0].x ^ mring[i][0][0];
        }
    wait_for_previous_kernel_after(token);
    if constexpr (NORM) {  // the block's live columns' factors, one column after the other
        for (int j = 0; j < COLS && colb + j < batch; ++j) {
            const float f = rms_factor(x + (size_t)(colb + j) * k, k, eps);
            if (threadIdx.x == 0) factors[j] = f;
        }
        __syncthreads();
#pragma unroll
        for (int b = 0; b < NB8; ++b)
            xscale[b] = rms_split(col_ok[b] ? factors[col0 + b * 8 + g - colb] : 0.f, T()).p2;
    }
    // First the ring passes whose every chunk and load is in range (unchecked), then the rest.
    int c = wk;
    for (; c + 2 * PF * WK < nchunks; c += (PF + 1) * WK) {
#pragma unroll
        for (int u = 0; u <= PF; ++u) {
            load(c + (u + PF) * WK, wring[(u + PF) % (PF + 1)], mring[(u + PF) % (PF + 1)]);
            consume(c + u * WK, wring[u], mring[u]);
        }
    }
    for (; c < nchunks; c += (PF + 1) * WK) {
#pragma unroll
        for (int u = 0; u <= PF; ++u) {
            const int cu = c + u * WK, slot = (u + PF) % (PF + 1);
            if (cu < nchunks) {
                if (cu + PF * WK < nchunks) load(cu + PF * WK, wring[slot], mring[slot]);
                consume(cu, wring[u], mring[u]);
            }
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
        if (wk == 0)
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

    if constexpr (NORM) {  // the rest of each output column's RMSNorm factor
#pragma unroll
        for (int b = 0; b < NB8; ++b)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int col = col0 + b * 8 + 2 * t + e;
                const float rest = rms_split(col < batch ? factors[col - colb] : 0.f, T()).rest;
#pragma unroll
                for (int r = 0; r < RT; ++r) {
                    acc[r][b][e] *= rest;
                    acc[r][b][e + 2] *= rest;
                }
            }
    }
    if constexpr (SWIGLU) {
        if (!row_ok[0]) return;
        const int half = n / 2, row = pair * 16 + g;
        // The gate and up products rounded as written, then silu(gate) * up.
        auto act = [&](float gate, float up) {
            return Op::from_f32(silu_mul_of(Op::to_f32(Op::from_f32(gate)), Op::to_f32(Op::from_f32(up))));
        };
#pragma unroll
        for (int b = 0; b < NB8; ++b) {
            const int col = col0 + b * 8 + 2 * t;
            if (col < batch) {
                y[(size_t)col * half + row] = act(acc[0][b][0], acc[1][b][0]);
                y[(size_t)col * half + row + 8] = act(acc[0][b][2], acc[1][b][2]);
            }
            if (col + 1 < batch) {
                y[(size_t)(col + 1) * half + row] = act(acc[0][b][1], acc[1][b][1]);
                y[(size_t)(col + 1) * half + row + 8] = act(acc[0][b][3], acc[1][b][3]);
            }
        }
        return;
    }
#pragma unroll
    for (int r = 0; r < RT; ++r) {
        if (!row_ok[r]) continue;
        const int row = (tile0 + r) * 16 + g;
#pragma unroll
        for (int b = 0; b < NB8; ++b) {
            const int col = col0 + b * 8 + 2 * t;
            auto put = [&](size_t i, float v) { y[i] = Op::from_f32(accumulate ? v + Op::to_f32(y[i]) : v); };
            if (col < batch) {
                put((size_t)col * n + row, acc[r][b][0]);
                put((size_t)col * n + row + 8, acc[r][b][2]);
            }
            if (col + 1 < batch) {
                put((size_t)(col + 1) * n + row, acc[r][b][1]);
                put((size_t)(col + 1) * n + row + 8, acc[r][b][3]);
            }
        }
    }
}

__device__ __forceinline__ void cp_async16(void *dst, const void *src, int bytes) {
    const u32 d = (u32)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(bytes));
}

// The pipelined kernel's weight stage (w4_mm_pipe): chunk c's weight tiles of the ROWS
// rows from rowb (ROWS / 16 x 512 bytes) at `base`, then its group metadata as 4 slices (one per 16-input slice
// of the chunk) of ROWS words, ROWS + 8 apart (the pad keeps the slices' reads conflict-free), by the block's NT
// threads through 16-byte cp.async; tiles and rows past n are zero-filled.
template <int ROWS, int NT>
__device__ __forceinline__ void stage_weights(unsigned char *base, const uint4 *__restrict__ tiles,
                                              const u32 *__restrict__ meta, int rowb, int n, int nchunks, int c,
                                              GroupOf grp_of) {
    constexpr int WBYTES = ROWS / 16 * 512, MPITCH = ROWS + 8;
    const int ntiles = n >> 4;
    for (int p = threadIdx.x; p < ROWS / 16 * 32; p += NT) {
        const int tile = rowb / 16 + (p >> 5);
        const bool ok = tile < ntiles;
        cp_async16(base + p * 16, tiles + ((size_t)(ok ? tile : 0) * nchunks + c) * 32 + (p & 31), ok ? 16 : 0);
    }
    for (int p = threadIdx.x; p < ROWS; p += NT) {  // 4 slices x ROWS/4 pieces of 4 rows
        const int slice = p / (ROWS / 4), q = p % (ROWS / 4);
        const int grp = grp_of(c * 64 + 16 * slice), row = rowb + 4 * q;
        const bool ok = row < n;
        cp_async16(base + WBYTES + (slice * MPITCH + 4 * q) * 4, meta + (size_t)grp * n + (ok ? row : 0),
                   ok ? 16 : 0);
    }
}

// Larger batches: a block computes a ROWS x COLS output tile over a range of chunks (grid.z splits K; partial sums
// then go to `part` [splits, batch, n] f32 for w4_reduce_*). Each chunk's weight tiles, group metadata (for the
// four 16-input slices) and activations [COLS, 64] go to shared memory by cp.async, S stages deep (one barrier
// per chunk); activation rows are padded to 144 bytes so the 16-byte fragment reads are conflict-free. Each warp
// dequantizes its RT words once per k16 step and reuses them over its NB8 batch tiles. blockIdx.x runs over the
// column blocks, so the blocks sharing a weight tile run together and read it once from memory.
template <typename T, int RT, int NB8, int WN, int WB, int S>
__device__ __forceinline__ void w4_mm_pipe(T *__restrict__ y, float *__restrict__ part, const T *__restrict__ x,
                                           const uint4 *__restrict__ tiles, const u32 *__restrict__ meta,
                                           int batch, int n, int k, int group, int chunks_per_split) {
    typedef W4<T> Op;
    constexpr int ROWS = 16 * RT * WN, COLS = 8 * NB8 * WB, PITCH = 72, NT = 32 * WN * WB, MPITCH = ROWS + 8;
    constexpr int WBYTES = ROWS / 16 * 512, MBYTES = 4 * MPITCH * 4, XBYTES = COLS * PITCH * 2;
    constexpr int STAGE = WBYTES + MBYTES + XBYTES;
    extern __shared__ __align__(16) unsigned char smem[];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wn = warp % WN, wb = warp / WN;
    const int g = lane >> 2, t = lane & 3;
    const int nchunks = k >> 6;
    const int colb = blockIdx.x * COLS, rowb = blockIdx.y * ROWS;
    const int c0 = blockIdx.z * chunks_per_split;
    const int c1 = min(nchunks, c0 + chunks_per_split);
    const GroupOf grp_of = group_of(group);

    auto stage = [&](int c, int s) {
        unsigned char *base = smem + s * STAGE;
        stage_weights<ROWS, NT>(base, tiles, meta, rowb, n, nchunks, c, grp_of);
        for (int p = threadIdx.x; p < COLS * 8; p += NT) {
            const int row = p >> 3, piece = p & 7, col = colb + row;
            const bool ok = col < batch;  // rows past the batch are zero-filled
            cp_async16(base + WBYTES + MBYTES + (row * PITCH + piece * 8) * 2,
                       x + (size_t)(ok ? col : 0) * k + c * 64 + piece * 8, ok ? 16 : 0);
        }
    };

    float acc[RT][NB8][4];
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
        for (int b = 0; b < NB8; ++b)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[r][b][e] = 0.f;

#pragma unroll
    for (int i = 0; i < S - 1; ++i) {
        if (c0 + i < c1) stage(c0 + i, i);
        asm volatile("cp.async.commit_group;\n" ::);
    }
    for (int c = c0; c < c1; ++c) {
        const int i = c - c0;
        asm volatile("cp.async.wait_group %0;\n" ::"n"(S - 2));
        __syncthreads();  // stage i is in; every warp is done with the slot refilled next
        if (c + S - 1 < c1) stage(c + S - 1, (i + S - 1) % S);
        asm volatile("cp.async.commit_group;\n" ::);

        const unsigned char *base = smem + (i % S) * STAGE;
        const uint4 *ws = reinterpret_cast<const uint4 *>(base);
        const u32 *ms = reinterpret_cast<const u32 *>(base + WBYTES);
        const unsigned short *xs = reinterpret_cast<const unsigned short *>(base + WBYTES + MBYTES);
        u32 a[RT][4][4];
#pragma unroll
        for (int r = 0; r < RT; ++r) {
            const int tl = wn * RT + r;
            const uint4 w = ws[tl * 32 + tile_slot(lane)];
            const u32 m0 = ms[t * MPITCH + tl * 16 + g], m1 = ms[t * MPITCH + tl * 16 + g + 8];
#pragma unroll
            for (int j = 0; j < 4; ++j) Op::dequant(word(w, j), m0, m1, a[r][j]);
        }
        const unsigned short *xb = xs + (wb * NB8 * 8 + g) * PITCH + 16 * t;
#pragma unroll
        for (int b = 0; b < NB8; ++b)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const uint4 v = *reinterpret_cast<const uint4 *>(xb + b * 8 * PITCH + 8 * h);
#pragma unroll
                for (int r = 0; r < RT; ++r) {
                    Op::mma(acc[r][b], a[r][2 * h], v.x, v.y);
                    Op::mma(acc[r][b], a[r][2 * h + 1], v.z, v.w);
                }
            }
    }
    asm volatile("cp.async.wait_group 0;\n" ::);

    float *out = part + (size_t)blockIdx.z * batch * n;
#pragma unroll
    for (int r = 0; r < RT; ++r) {
        const int row = rowb + (wn * RT + r) * 16 + g;
        if (row >= n) continue;
#pragma unroll
        for (int b = 0; b < NB8; ++b) {
            const int col = colb + (wb * NB8 + b) * 8 + 2 * t;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int cc = col + (e & 1), rr = row + 8 * (e >> 1);
                if (cc >= batch) continue;
                if (gridDim.z == 1)
                    y[(size_t)cc * n + rr] = Op::from_f32(acc[r][b][e]);
                else
                    out[(size_t)cc * n + rr] = acc[r][b][e];
            }
        }
    }
}

// y = sum over the K splits of `part` [splits, len], rounded once.
template <typename T>
__device__ void w4_reduce(T *__restrict__ y, const float *__restrict__ part, int splits, long long len) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        float s = 0.f;
        for (int z = 0; z < splits; ++z) s += part[z * len + i];
        y[i] = W4<T>::from_f32(s);
    }
}
extern "C" __global__ void w4_reduce_f16(__half *y, const float *part, int splits, long long len) {
    w4_reduce(y, part, splits, len);
}
extern "C" __global__ void w4_reduce_bf16(__nv_bfloat16 *y, const float *part, int splits, long long len) {
    w4_reduce(y, part, splits, len);
}

// The product kernels, named w4_mm_<dtype>_<RT>_<NB8>_<WK>_<WN>_<WB>_p<PF>_m<MODE>: block = 32 * WK * WN * WB
// threads, PF chunks' loads in flight a warp, MODE w4_mm's loop; `accumulate` != 0 adds the product to y. One is
// built a compile, the one a call needs (W4_INSTANCE at the end of w4a16_sm90.cu; the launcher's CONFIGS list those
// it may pick).
// A one-column-tile (decode) kernel keeps the blocks a multiprocessor it had before its loop was specialised by
// MODE (which let ptxas take 4-11 more registers: a 256-thread block 4 a multiprocessor instead of 5, so Phi-3.5's
// qkv ran in two waves): at most 48 registers (one row tile), 64 (one, with the norm) or 80 (two) a thread.
#define W4_MIN_BLOCKS(RT, NB8, THREADS, NORM)                                                                    \
    ((NB8) == 1 && (THREADS) <= 512 ? 65536 / ((THREADS) * ((RT) == 1 ? ((NORM) ? 64 : 48) : 80)) : 1)
#define W4_MM(TY, NAME, RT, NB8, WK, WN, WB, PF, MODE)                                                           \
    extern "C" __global__ void __launch_bounds__(32 * WK * WN * WB, W4_MIN_BLOCKS(RT, NB8, 32 * WK * WN * WB, 0)) \
        w4_mm_##NAME##_##RT##_##NB8##_##WK##_##WN##_##WB##_p##PF##_m##MODE(                                      \
            TY *y, const TY *x, const uint4 *tiles, const u32 *meta, int batch, int n, int k, int group,         \
            int accumulate) {                                                                                    \
        w4_mm<TY, RT, NB8, WK, WN, WB, PF, false, false, MODE>(y, x, tiles, meta, batch, n, k, group, accumulate,  \
                                                               nullptr, 0.f);                                    \
    }
// The same with RMSNorm folded into its input (x the norm's input, `norm` its weight): w4_mm_norm_<...>.
#define W4_MM_NORM(TY, NAME, RT, NB8, WK, WN, WB, PF, MODE)                                                      \
    extern "C" __global__ void __launch_bounds__(32 * WK * WN * WB, W4_MIN_BLOCKS(RT, NB8, 32 * WK * WN * WB, 1)) \
        w4_mm_norm_##NAME##_##RT##_##NB8##_##WK##_##WN##_##WB##_p##PF##_m##MODE(                                 \
            TY *y, const TY *x, const uint4 *tiles, const u32 *meta, int batch, int n, int k, int group,         \
            int accumulate, const TY *norm, float eps) {                                                         \
        w4_mm<TY, RT, NB8, WK, WN, WB, PF, true, false, MODE>(y, x, tiles, meta, batch, n, k, group, accumulate,   \
                                                              norm, eps);                                        \
    }
// The same writing SwiGLU's activation (W the gate_up projection, y [batch, n / 2], RT = 2, no accumulate):
// w4_mm_norm_swiglu_<...>.
#define W4_MM_NORM_SWIGLU(TY, NAME, RT, NB8, WK, WN, WB, PF, MODE)                                               \
    extern "C" __global__ void __launch_bounds__(32 * WK * WN * WB, W4_MIN_BLOCKS(RT, NB8, 32 * WK * WN * WB, 1)) \
        w4_mm_norm_swiglu_##NAME##_##RT##_##NB8##_##WK##_##WN##_##WB##_p##PF##_m##MODE(                          \
            TY *y, const TY *x, const uint4 *tiles, const u32 *meta, int batch, int n, int k, int group,         \
            int accumulate, const TY *norm, float eps) {                                                         \
        w4_mm<TY, RT, NB8, WK, WN, WB, PF, true, true, MODE>(y, x, tiles, meta, batch, n, k, group, 0, norm, eps); \
    }

// Pipelined kernels, named w4_mm_<dtype>_<RT>_<NB8>_0_<WN>_<WB>_<S>_<MINB>: S shared-memory stages (dynamic), at
// least MINB blocks a multiprocessor (the register cap that allows it).
#define W4_MMP(TY, NAME, RT, NB8, WN, WB, S, MINB)                                                               \
    extern "C" __global__ void __launch_bounds__(32 * WN * WB, MINB)                                             \
        w4_mm_##NAME##_##RT##_##NB8##_0_##WN##_##WB##_##S##_##MINB(                                              \
            TY *y, float *part, const TY *x, const uint4 *tiles, const u32 *meta, int batch, int n, int k,       \
            int group, int chunks_per_split) {                                                                   \
        w4_mm_pipe<TY, RT, NB8, WN, WB, S>(y, part, x, tiles, meta, batch, n, k, group, chunks_per_split);       \
    }

// Dense W [N, K] (the original input order: column perm[k'] when has_perm) from the tiles, one thread a 16-byte
// tile load, with the GEMM's own dequantization (so the values are identical).
template <typename T>
__device__ void w4_dequantize(T *__restrict__ w, const uint4 *__restrict__ tiles, const u32 *__restrict__ meta,
                              const u32 *__restrict__ perm, int has_perm, int n, int k, int group) {
    const int nchunks = k >> 6;
    const long long total = (long long)(n >> 4) * nchunks * 32;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int lane = tile_slot((int)(i & 31)), g = lane >> 2, t = lane & 3;  // tile_slot is its own inverse
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
    wait_for_previous_kernel();
    const long long total = (long long)batch * k;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long b = i / k;
        out[i] = x[b * k + perm[i - b * k]];
    }
}
