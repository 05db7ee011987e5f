// Causal GQA attention over a KV cache, flash-attention style (Dao et al. 2022, FlashAttention-2 2023): queries in
// blocks of 64, keys/values streamed through shared memory in tiles of 64, an online softmax (running max and sum
// per row, the partial output rescaled as the max grows), so the score matrix never reaches global memory.
// Products run on the tensor cores through mma.sync m16n8k16 (bf16/fp16 operands, fp32 accumulators), fragments
// loaded with ldmatrix, so S, P and O (and in the backward dS, dK, dV) stay in registers.
//   attention_fwd_<t>_<d>:    the tiled forward; grid (query blocks, heads, batch), 128 threads; writes out and,
//                             when lse is not null, the log-sum-exp of each row ([batch, heads, tokens], natural log)
//   attention_decode_<t>_<d>: few queries per KV head (decode): grid (splits, kv_heads, batch); each block takes all
//                             query rows of one KV head over one chunk of keys (K/V read once per KV head, the KV
//                             length split across blocks), writing partial (max, sum, output) rows ...
//   attention_combine_<t>_<d>: ... which this merges: grid (batch·heads·tokens). Both take kv_len from device
//                             memory (`past` + tokens) when `past` is not null: a decode step captured in a CUDA
//                             graph, the splits sized for the cache's capacity and the live ones found from kv_len.
//                             Given `out` (attention.rs passes it for a captured step of one split), the decode
//                             kernel writes the output rows itself: no combine launch.
//                             Given `inv_freq` (a captured step), q's rows hold the step's queries and its own
//                             keys and values unrotated: the kernel rotates them as rope.cu does and the split
//                             holding their positions writes them to the cache: no rope launch.
//   attention_delta_<t>_<d>:  backward step 1: delta = rowsum(dO ⊙ O) ([batch, heads, tokens])
//   attention_bwd_<t>_<d>:    backward step 2 (FlashAttention-2's): grid (key blocks, kv_heads, batch); per key block
//                             the probabilities are recomputed from the stored lse, dK and dV summed over the group's
//                             heads in registers, dQ added to an fp32 accumulator with atomics
//   attention_dq_copy:        backward step 3: the dQ accumulator into the strided dq
// Query t of sequence b sits at position kv_len − tokens + t and sees key j when j ≤ pos, pos − j < window (when
// window > 0) and key_mask[b·kv_len + j] ≠ 0 (when has_mask); a row that sees no key gets zeros.
// Layouts: row r of an operand starts at element off + r·stride, head h at + h·head_dim; q, out: [batch·tokens] rows;
// k, v: [batch·kv_len] rows. Offsets and strides are multiples of 8 elements (16-byte loads).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

struct AttnParams {
    int batch, tokens, kv_len, heads, kv_heads;
    int q_off, q_stride, k_off, k_stride, v_off, v_stride;
    int o_off, o_stride, do_off, do_stride;
    int dk_off, dk_stride, dv_off, dv_stride, dq_off, dq_stride;
    int window, has_mask, splits;
    float scale;
};

constexpr int BR = 64, BC = 64, THREADS = 128;
// A decode split's keys are a multiple of this (two tiles; attention.rs's DECODE_KEYS).
constexpr int DECODE_KEYS = 2 * BC;
constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }

// Element `hi` (0: the low half) of a register holding two 16-bit values.
__device__ __forceinline__ float half_at(unsigned u, int hi, __nv_bfloat16) {
    return __uint_as_float((hi ? u >> 16 : u & 0xffffu) << 16);
}
__device__ __forceinline__ float half_at(unsigned u, int hi, __half) {
    return __half2float(__ushort_as_half((unsigned short)(hi ? u >> 16 : u & 0xffffu)));
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, o));
    return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffff, x, o);
    return x;
}

__device__ __forceinline__ bool visible(const AttnParams &p, const unsigned char *mask, int b, int pos, int j) {
    return j <= pos && j < p.kv_len && (p.window == 0 || pos - j < p.window) &&
           (!p.has_mask || mask[(long long)b * p.kv_len + j] != 0);
}

// Query row t of sequence b, head h, in out (o_off, o_stride).
template <typename T, int D> __device__ __forceinline__ T *out_row(const AttnParams &p, T *out, int b, int t, int h) {
    return out + ((long long)b * p.tokens + t) * p.o_stride + p.o_off + h * D;
}
// The decode splits' partial rows [splits][D + 2] of query row t of sequence b, head h.
template <int D, typename F>
__device__ __forceinline__ F *part_rows(const AttnParams &p, F *part, int b, int t, int h) {
    return part + (((long long)b * p.heads + h) * p.tokens + t) * p.splits * (D + 2);
}

// dst: [rows, LD] in shared memory = rows row0 .. of src (row stride `stride`), zeros from row `valid` on.
template <typename T, int D, int LD>
__device__ void load_rows(T *dst, const T *src, int stride, long long row0, int rows, int valid) {
    constexpr int V = D / 8;
    for (int i = threadIdx.x; i < rows * V; i += blockDim.x) {
        const int r = i / V, c = (i % V) * 8;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (r < valid) val = *reinterpret_cast<const uint4 *>(src + (row0 + r) * stride + c);
        *reinterpret_cast<uint4 *>(dst + r * LD + c) = val;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Forward, tiled, FlashAttention-2's register layout: mma.sync m16n8k16 (bf16/f16 in, fp32 accumulators) with
// fragments loaded by ldmatrix; the scores S, the probabilities P and the output O never leave registers (S's
// accumulator layout is P's A-operand layout). Shared memory: 2 × K, 2 × V [64, D+8] (double-buffered through
// cp.async; rows padded by 16 bytes: the 8 rows an ldmatrix reads fall in distinct banks), Q passing through the
// second K buffer into registers at the start: 4 tiles a block, so 3 blocks a multiprocessor at head_dim 128 (the
// kernel is held to 168 registers for it). Warp w owns query rows 16w .. 16w+16; lane (g = lane/4, c = lane%4)
// holds rows g and g+8, columns 2c, 2c+1 of each 8-column tile.
__device__ __forceinline__ unsigned smem_u32(const void *ptr) {
    return static_cast<unsigned>(__cvta_generic_to_shared(ptr));
}
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void *ptr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(ptr)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void *ptr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(ptr)));
}
// c[16×8] += a[16×16] · b[16×8]
__device__ __forceinline__ void mma(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1, __nv_bfloat16) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1, __half) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffff, x, 1);
    return x + __shfl_xor_sync(0xffffffff, x, 2);
}

// 2^x by the special-function unit (flushes subnormal results to zero; ex2(-inf) = 0).
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// The online softmax's step (FlashAttention-2's) for a lane's rows gq and gq + 8 over NT 8-key tiles of raw scores
// s (-inf where hidden; mx: each row's maximum over this lane's keys) scaled by sl2 (the softmax scale times
// log2 e): the running max m (log2 units) and sum l take the tiles in (the max over the row's quad), s become the
// probabilities 2^(s·sl2 − m), one FFMA and one ex2 each, and the output o is rescaled to the new max.
template <int NT, int D>
__device__ __forceinline__ void online_softmax(float (&s)[NT][4], const float (&mx)[2], float sl2, float (&m)[2],
                                               float (&l)[2], float (&o)[D / 8][4]) {
    float alpha[2], neg_m[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float mn = fmaxf(m[r], quad_max(mx[r]) * sl2);
        alpha[r] = mn == -INFINITY ? 1.f : ex2(m[r] - mn);
        // A row that has seen no key yet: its scores are all -inf, their probabilities 0.
        neg_m[r] = mn == -INFINITY ? 0.f : -mn;
        m[r] = mn;
        l[r] *= alpha[r];
    }
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int r = e / 2;
            s[n][e] = ex2(fmaf(s[n][e], sl2, neg_m[r]));
            l[r] += s[n][e];
        }
    }
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] *= alpha[0], o[n][1] *= alpha[0], o[n][2] *= alpha[1], o[n][3] *= alpha[1];
}

// O += P V over 16 keys: P's A fragment from the probabilities of two 8-key tiles (S's accumulator layout is P's
// A-operand layout); B(k=key, n=d) = V[key][d] for tV's 16 rows, a transposed ldmatrix.
template <typename T, int D, int LDT>
__device__ __forceinline__ void pv_step(float (&o)[D / 8][4], const float (&s0)[4], const float (&s1)[4], const T *tV,
                                        int lane) {
    const unsigned pa[4] = {pack2(s0[0], s0[1], T()), pack2(s0[2], s0[3], T()), pack2(s1[0], s1[1], T()),
                            pack2(s1[2], s1[3], T())};
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
        unsigned vb[4];
        ldmatrix_x4_trans(vb, tV + (((lane / 8) % 2) * 8 + lane % 8) * LDT + dp * 16 + (lane / 16) * 8);
        mma(o[2 * dp], pa, vb[0], vb[1], T());
        mma(o[2 * dp + 1], pa, vb[2], vb[3], T());
    }
}

// 16 bytes global -> shared without registers (zeros when `valid` is false), in the current commit group.
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Rows row0 .. row0+64 of src (zeros from row `valid` on) into dst [64, LD], asynchronously (in the open group).
template <typename T, int D, int LD>
__device__ void load_rows_async(T *dst, const T *src, int stride, long long row0, int valid) {
    constexpr int V = D / 8;
    static_assert(BC * V % THREADS == 0, "the block's threads take whole rounds of 16-byte pieces");
#pragma unroll 1
    for (int round = 0; round < BC * V / THREADS; ++round) {
        const int i = threadIdx.x + round * THREADS, r = i / V, c = (i % V) * 8;
        cp_async16(dst + r * LD + c, src + (row0 + min(r, valid - 1)) * stride + c, r < valid);
    }
}

// The K and V tiles of rows row0 .. row0+64 as one commit group.
template <typename T, int D, int LD>
__device__ void load_kv_async(T *dK, T *dV, const T *k, int k_stride, const T *v, int v_stride, long long row0, int valid) {
    load_rows_async<T, D, LD>(dK, k, k_stride, row0, valid);
    load_rows_async<T, D, LD>(dV, v, v_stride, row0, valid);
    cp_async_commit();
}

template <typename T, int D>
__device__ void attn_fwd(const AttnParams p, const T *__restrict__ q, const T *__restrict__ k,
                         const T *__restrict__ v, const unsigned char *__restrict__ mask, T *__restrict__ out,
                         float *__restrict__ lse) {
    constexpr int LDT = D + 8;
    extern __shared__ __align__(128) unsigned char smem[];
    T *sK = reinterpret_cast<T *>(smem);  // two buffers [2][64][LDT]
    T *sV = sK + 2 * BC * LDT;            // two buffers
    // Q passes through K's second buffer into registers before the first prefetch there.
    T *sQ = sK + BC * LDT;

    // The last query blocks see the most keys: they start first.
    const int t0 = (gridDim.x - 1 - blockIdx.x) * BR, h = blockIdx.y, b = blockIdx.z;
    const int g = h / (p.heads / p.kv_heads);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gq = lane / 4, cq = lane % 4;
    const int start = p.kv_len - p.tokens;
    const int valid_q = min(BR, p.tokens - t0);
    const int pos_first = start + t0, pos_last = start + t0 + valid_q - 1;
    const int j_begin = p.window > 0 ? max(0, pos_first - p.window + 1) : 0;
    // K/V tiles double-buffered: the next tile's copy runs while this one is computed.
    const T *kg = k + p.k_off + g * D, *vg = v + p.v_off + g * D;
    const long long kv0 = (long long)b * p.kv_len;
    load_kv_async<T, D, LDT>(sK, sV, kg, p.k_stride, vg, p.v_stride, kv0 + j_begin, min(BC, p.kv_len - j_begin));
    load_rows<T, D, LDT>(sQ, q + p.q_off + h * D, p.q_stride, (long long)b * p.tokens + t0, BR, valid_q);
    __syncthreads();
    unsigned qa[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qa[kk], sQ + (warp * 16 + lane % 16) * LDT + kk * 16 + (lane / 16) * 8);
    __syncthreads();  // every warp holds its Q before the buffer is refilled
    const float sl2 = p.scale * LOG2E;
    // This lane's two rows: query t0 + 16w + gq (+ 8).
    const int row_t[2] = {t0 + warp * 16 + gq, t0 + warp * 16 + gq + 8};
    float o[D / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

    int buf = 0;
    for (int j0 = j_begin; j0 <= pos_last; j0 += BC, buf ^= 1) {
        const int valid_k = min(BC, p.kv_len - j0);
        if (j0 + BC <= pos_last) {
            load_kv_async<T, D, LDT>(sK + (buf ^ 1) * BC * LDT, sV + (buf ^ 1) * BC * LDT, kg, p.k_stride, vg,
                                     p.v_stride, kv0 + j0 + BC, min(BC, p.kv_len - j0 - BC));
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const T *tK = sK + buf * BC * LDT, *tV = sV + buf * BC * LDT;
        float s[BC / 8][4];
#pragma unroll
        for (int n = 0; n < BC / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
        // S = Q K^T: B(k=d, n=key) = K[key][d], an ldmatrix of K's rows; x4 = two 8-key tiles.
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
            for (int np = 0; np < BC / 16; ++np) {
                unsigned kb[4];
                ldmatrix_x4(kb, tK + (np * 16 + (lane / 16) * 8 + lane % 8) * LDT + kk * 16 + ((lane / 8) % 2) * 8);
                mma(s[2 * np], qa[kk], kb[0], kb[1], T());
                mma(s[2 * np + 1], qa[kk], kb[2], kb[3], T());
            }
        }
        // Masks only where a key of the tile can be hidden from a query of the block.
        const bool masked = p.has_mask || p.window > 0 || j0 + BC - 1 > pos_first || valid_k < BC;
        if (masked) {
            // Row r sees keys lo .. hi (visible()'s rule: causal, within the window, in the cache; none for a row
            // past the queries), then the key mask.
            int lo[2], hi[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int pos = start + row_t[r];
                hi[r] = row_t[r] < p.tokens ? min(pos, p.kv_len - 1) : -1;
                lo[r] = p.window > 0 ? pos - p.window + 1 : 0;
            }
#pragma unroll
            for (int n = 0; n < BC / 8; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int r = e / 2, j = j0 + n * 8 + 2 * cq + e % 2;
                    const bool vis = j >= lo[r] && j <= hi[r] &&
                                     (!p.has_mask || mask[(long long)b * p.kv_len + j] != 0);
                    if (!vis) s[n][e] = -INFINITY;
                }
            }
        }
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < BC / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) mx[e / 2] = fmaxf(mx[e / 2], s[n][e]);
        }
        online_softmax<BC / 8, D>(s, mx, sl2, m, l, o);
#pragma unroll
        for (int kc = 0; kc < BC / 16; ++kc) pv_step<T, D, LDT>(o, s[2 * kc], s[2 * kc + 1], tV + kc * 16 * LDT, lane);
        __syncthreads();  // every warp is done with this buffer before the next iteration refills it
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float sum = quad_sum(l[r]);
        const int t = row_t[r];
        if (t >= p.tokens) continue;
        const float inv = sum > 0.f ? 1.f / sum : 0.f;
        T *dst = out_row<T, D>(p, out, b, t, h);
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            const unsigned pair = pack2(o[n][2 * r] * inv, o[n][2 * r + 1] * inv, T());
            *reinterpret_cast<unsigned *>(dst + n * 8 + 2 * cq) = pair;
        }
        if (lse != nullptr && cq == 0)
            lse[((long long)b * p.heads + h) * p.tokens + t] = sum > 0.f ? (m[r] + log2f(sum)) * LN2 : -INFINITY;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Decode: R = group·tokens ≤ MAXR query rows of KV head g (row r: head g·group + r / tokens, token r % tokens), one
// m16 tile of the tensor cores (rows from R on are zeros and never written), over keys [f + s·chunk, f + (s+1)·chunk)
// (f the first key a row sees: decode_first_key) in tiles of 64 keys, K/V double-buffered through cp.async as in the
// forward. Warp w takes keys 16w .. 16w+16 of each tile with its own online softmax (the forward's fragments:
// S = Q K^T and O += P V by mma.sync); at the end the four warps' (max, sum, output) rows are merged through shared
// memory into the split's partial row.
// part: [batch, heads, tokens, splits, D + 2] = the unnormalized output row, its running max (log2 units), its sum.
// Splits past the keys (f + s·chunk ≥ kv_len) write nothing; the combine reads the live ones only.
// With `out` (a launch of one split) the kernel writes the normalized rows there instead of the partial rows.
// With `inv_freq` (RopeStep), q's rows hold the step's queries, its keys from column k_col and its values after
// them, all unrotated: every block rotates its query rows in shared memory (rope.cu's rotation, cos/sin of the
// step's positions computed once into K's second buffer, free until the first prefetch), and the block whose split
// holds a new position rotates that key and writes it and its value to the cache rows k and v, before it loads that
// tile from there (the barrier between orders the stores before the block's copies).
// Dynamic shared memory (decode_smem in attention.rs): Q [16, D+8], 2 × K, 2 × V [64, D+8]; the warps' output rows
// [4, 16, D] f32 reuse the K/V buffers after the last tile.
constexpr int MAXR = 16;

// The decode launch's parameters as the kernels use them: kv_len from device memory when `past` is not null.
__device__ __forceinline__ AttnParams decode_params(AttnParams p, const unsigned *past) {
    if (past != nullptr) p.kv_len = (int)*past + p.tokens;
    return p;
}

// The first key a decode launch reads: the first the step's first row sees (with a window, the keys before it are
// seen by no row and no split reads them).
__device__ __forceinline__ int decode_first_key(const AttnParams &p) {
    return p.window > 0 ? max(0, p.kv_len - p.tokens - p.window + 1) : 0;
}

// Keys a decode split takes: the keys from decode_first_key over the launch's splits, rounded up to whole
// DECODE_KEYS (attention.rs's decode_chunk).
__device__ __forceinline__ int decode_chunk(const AttnParams &p) {
    const int keys = p.kv_len - decode_first_key(p);
    return ((keys + p.splits - 1) / p.splits + DECODE_KEYS - 1) / DECODE_KEYS * DECODE_KEYS;
}

// The splits that take keys (a chunk each from decode_first_key); those after take none.
__device__ __forceinline__ int decode_live(const AttnParams &p, int chunk) {
    return (p.kv_len - decode_first_key(p) + chunk - 1) / chunk;
}

// A captured decode step's rotation: LongRoPE's long set (when not null) replaces inv_freq once kv_len passes
// `original`; `scaling` multiplies cos and sin; the keys start at column k_col of q's rows (from q_off), the values
// kv_heads·D after.
struct RopeStep {
    int original, rotary_dim, k_col;
    float scaling;
};

// The pair xa = x[i], xb = x[i + rotary_dim / 2] rotated in place (prelude's rope_rotate, as rope.cu).
template <typename T> __device__ __forceinline__ void rotate_pair(T &xa, T &xb, float c, float s) {
    const float2 r = rope_rotate(to_float(xa), to_float(xb), c, s);
    xa = from_float<T>(r.x);
    xb = from_float<T>(r.y);
}

// Folds N partial rows (maxima ms, sums ls, column pairs os; log2 units) into a running row (m, l, o): their
// maximum first, then the running row rescaled once to it and each added.
template <int N>
__device__ __forceinline__ void fold_partials(float &m, float &l, float2 &o, const float *ms, const float *ls,
                                              const float2 *os) {
    float mn = m;
#pragma unroll
    for (int u = 0; u < N; ++u) mn = fmaxf(mn, ms[u]);
    if (mn == -INFINITY) return;  // no keys seen yet
    const float a = exp2f(m - mn);
    l *= a;
    o.x *= a;
    o.y *= a;
#pragma unroll
    for (int u = 0; u < N; ++u) {
        const float w = exp2f(ms[u] - mn);
        l += w * ls[u];
        o.x += w * os[u].x;
        o.y += w * os[u].y;
    }
    m = mn;
}

template <typename T, int D>
__device__ void attn_decode(const AttnParams params, const unsigned *__restrict__ past, const T *__restrict__ q,
                            T *k, T *v, const unsigned char *__restrict__ mask, float *__restrict__ part,
                            T *__restrict__ out, const float *__restrict__ inv_freq,
                            const float *__restrict__ long_freq, const RopeStep rope) {
    const AttnParams p = decode_params(params, past);
    const int chunk = decode_chunk(p), live = decode_live(p, chunk);
    if ((int)blockIdx.x >= live) return;
    constexpr int LDT = D + 8, WARPS = THREADS / 32;
    static_assert(BC == 16 * WARPS, "a warp takes 16 keys of a tile");
    extern __shared__ __align__(128) unsigned char smem[];
    T *sQ = reinterpret_cast<T *>(smem);
    T *sK = sQ + MAXR * LDT;    // two buffers [2][64][LDT]
    T *sV = sK + 2 * BC * LDT;  // two buffers
    float *sO = reinterpret_cast<float *>(sK);  // [WARPS][MAXR][D], after the last tile
    __shared__ float sm_w[WARPS][MAXR], sl_w[WARPS][MAXR];

    const int s = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const int group = p.heads / p.kv_heads, R = group * p.tokens, start = p.kv_len - p.tokens;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gq = lane / 4, cq = lane % 4;
    const bool fresh = inv_freq != nullptr;
    const int half = rope.rotary_dim / 2;
    // The step's cos and sin [tokens][half] (times the scaling), in K's second buffer.
    float *sCos = reinterpret_cast<float *>(sK + BC * LDT), *sSin = sCos + MAXR * (D / 2);
    static_assert(2 * MAXR * (D / 2) * sizeof(float) <= BC * LDT * sizeof(T), "cos/sin fit in a K buffer");
    if (fresh) {
        const float *freq = long_freq != nullptr && p.kv_len > rope.original ? long_freq : inv_freq;
        for (int i = threadIdx.x; i < p.tokens * half; i += THREADS) {
            rope_cos_sin((float)(start + i / half), freq[i % half], rope.scaling, sCos[i], sSin[i]);
        }
    }
    for (int i = threadIdx.x; i < MAXR * (D / 8); i += THREADS) {
        const int r = i / (D / 8), c = (i % (D / 8)) * 8;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (r < R) {
            const int hh = r / p.tokens, t = r % p.tokens;
            val = *reinterpret_cast<const uint4 *>(q + ((long long)b * p.tokens + t) * p.q_stride + p.q_off +
                                                   (g * group + hh) * D + c);
        }
        *reinterpret_cast<uint4 *>(sQ + r * LDT + c) = val;
    }
    const int j_begin = decode_first_key(p) + s * chunk, j_end = min(p.kv_len, j_begin + chunk);
    T *kg = k + p.k_off + g * D, *vg = v + p.v_off + g * D;
    const long long kv0 = (long long)b * p.kv_len;
    // The step's keys this split holds: [new_begin, j_end); its first tile is loaded once they are in the cache.
    const int new_begin = max(start, j_begin);
    const bool defer = fresh && new_begin < min(j_end, j_begin + BC);
    if (!defer)
        load_kv_async<T, D, LDT>(sK, sV, kg, p.k_stride, vg, p.v_stride, kv0 + j_begin, min(BC, j_end - j_begin));
    __syncthreads();
    if (fresh) {
        for (int i = threadIdx.x; i < R * half; i += THREADS) {
            const int r = i / half, f = i % half, at = (r % p.tokens) * half + f;
            rotate_pair(sQ[r * LDT + f], sQ[r * LDT + f + half], sCos[at], sSin[at]);
        }
        // Element e < half takes its pair e + half along; those from rotary_dim on pass through.
        for (int i = threadIdx.x; i < max(0, j_end - new_begin) * D; i += THREADS) {
            const int j = new_begin + i / D, e = i % D, t = j - start;
            const T *src = q + ((long long)b * p.tokens + t) * p.q_stride + p.q_off + rope.k_col + g * D;
            T *dk = kg + (kv0 + j) * p.k_stride;
            vg[(kv0 + j) * p.v_stride + e] = src[p.kv_heads * D + e];
            if (e < half) {
                T xa = src[e], xb = src[e + half];
                rotate_pair(xa, xb, sCos[t * half + e], sSin[t * half + e]);
                dk[e] = xa;
                dk[e + half] = xb;
            } else if (e >= rope.rotary_dim) {
                dk[e] = src[e];
            }
        }
        __syncthreads();
        if (defer)
            load_kv_async<T, D, LDT>(sK, sV, kg, p.k_stride, vg, p.v_stride, kv0 + j_begin, min(BC, j_end - j_begin));
    }
    unsigned qa[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qa[kk], sQ + (lane % 16) * LDT + kk * 16 + (lane / 16) * 8);
    const float sl2 = p.scale * LOG2E;
    // This lane's two rows gq and gq + 8: their positions, and whether they are rows at all.
    const int rows[2] = {gq, gq + 8};
    const bool row_ok[2] = {rows[0] < R, rows[1] < R};
    const int pos[2] = {start + rows[0] % p.tokens, start + rows[1] % p.tokens};
    float o[D / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

    int buf = 0;
    for (int j0 = j_begin; j0 < j_end; j0 += BC, buf ^= 1) {
        if (j0 + BC < j_end) {
            load_kv_async<T, D, LDT>(sK + (buf ^ 1) * BC * LDT, sV + (buf ^ 1) * BC * LDT, kg, p.k_stride, vg,
                                     p.v_stride, kv0 + j0 + BC, min(BC, j_end - j0 - BC));
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const T *tK = sK + buf * BC * LDT + warp * 16 * LDT, *tV = sV + buf * BC * LDT + warp * 16 * LDT;
        float sc[2][4];
#pragma unroll
        for (int n = 0; n < 2; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
        // S = Q K^T over this warp's 16 keys: B(k=d, n=key) = K[key][d], an ldmatrix of K's rows (x4: two 8-key tiles).
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            unsigned kb[4];
            ldmatrix_x4(kb, tK + ((lane / 16) * 8 + lane % 8) * LDT + kk * 16 + ((lane / 8) % 2) * 8);
            mma(sc[0], qa[kk], kb[0], kb[1], T());
            mma(sc[1], qa[kk], kb[2], kb[3], T());
        }
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e / 2, j = j0 + warp * 16 + n * 8 + 2 * cq + e % 2;
                const bool vis = row_ok[r] && j < j_end && visible(p, mask, b, pos[r], j);
                sc[n][e] = vis ? sc[n][e] : -INFINITY;
                mx[r] = fmaxf(mx[r], sc[n][e]);
            }
        }
        online_softmax<2, D>(sc, mx, sl2, m, l, o);
        pv_step<T, D, LDT>(o, sc[0], sc[1], tV, lane);
        __syncthreads();  // every warp is done with this buffer before the next iteration refills it
    }
    // The warps' rows into shared memory (the K/V buffers are free now), then merged.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float sum = quad_sum(l[r]);
        if (cq == 0) sm_w[warp][rows[r]] = m[r], sl_w[warp][rows[r]] = sum;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            float *dst = sO + ((size_t)warp * MAXR + rows[r]) * D + n * 8 + 2 * cq;
            dst[0] = o[n][2 * r];
            dst[1] = o[n][2 * r + 1];
        }
    }
    __syncthreads();
    const bool direct = out != nullptr;
    for (int i = threadIdx.x; i < R * D; i += THREADS) {
        const int r = i / D, c = i % D;
        float mw = -INFINITY;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) mw = fmaxf(mw, sm_w[w][r]);
        float acc = 0.f, sum = 0.f;
        if (mw != -INFINITY) {
#pragma unroll
            for (int w = 0; w < WARPS; ++w) {
                const float a = exp2f(sm_w[w][r] - mw);
                acc += a * sO[((size_t)w * MAXR + r) * D + c];
                sum += a * sl_w[w][r];
            }
        }
        const int h = g * group + r / p.tokens, t = r % p.tokens;
        if (direct) {
            out_row<T, D>(p, out, b, t, h)[c] = from_float<T>(sum > 0.f ? acc / sum : 0.f);
            continue;
        }
        float *dst = part_rows<D>(p, part, b, t, h) + s * (D + 2);
        dst[c] = acc;
        if (c == 0) dst[D] = mw, dst[D + 1] = sum;
    }
}

// One block per output row (b, t, h): its splits' partial rows merged in one pass, a thread a pair of adjacent
// columns (one 8-byte load a split: a split's D + 2 floats keep pairs aligned, and a pair shares its maximum, sum
// and exponentials), folding IN_FLIGHT splits at a time (their loads together, then their maximum, one rescale, the
// batch added); the THREADS / (D / 2) parts of the block take every parts-th split and part 0 folds in the others
// through shared memory.
template <typename T, int D>
__device__ void attn_combine(const AttnParams params, const unsigned *__restrict__ past,
                             const float *__restrict__ part, T *__restrict__ out, float *__restrict__ lse) {
    constexpr int IN_FLIGHT = 8, PAIRS = D / 2, PARTS = THREADS / PAIRS;
    static_assert(D % 2 == 0 && PARTS >= 1, "a thread takes a pair of columns");
    const AttnParams p = decode_params(params, past);
    const int chunk = decode_chunk(p), live = decode_live(p, chunk);
    const long long row = blockIdx.x;  // (b·heads + h)·tokens + t
    const int t = row % p.tokens, h = (row / p.tokens) % p.heads, b = row / ((long long)p.tokens * p.heads);
    const float *src = part_rows<D>(p, part, b, t, h);
    const int c = 2 * (threadIdx.x % PAIRS), q = threadIdx.x / PAIRS;
    // The running row: maximum and sum (log2 units) and columns c, c + 1.
    float m = -INFINITY, l = 0.f;
    float2 o = make_float2(0.f, 0.f);
    if (q < PARTS) {
        for (int s0 = q; s0 < live; s0 += IN_FLIGHT * PARTS) {
            float ms[IN_FLIGHT], ls[IN_FLIGHT];
            float2 os[IN_FLIGHT];
#pragma unroll
            for (int u = 0; u < IN_FLIGHT; ++u) {
                const int s = s0 + u * PARTS;
                const float *split = src + (long long)s * (D + 2);
                ms[u] = s < live ? split[D] : -INFINITY;
                ls[u] = s < live ? split[D + 1] : 0.f;
                os[u] = s < live ? *reinterpret_cast<const float2 *>(split + c) : make_float2(0.f, 0.f);
            }
            fold_partials<IN_FLIGHT>(m, l, o, ms, ls, os);
        }
    }
    if constexpr (PARTS > 1) {
        __shared__ float part_m[PARTS], part_l[PARTS];
        __shared__ float2 part_o[PARTS][PAIRS];
        if (q > 0 && q < PARTS) {
            part_o[q][c / 2] = o;
            if (c == 0) part_m[q] = m, part_l[q] = l;
        }
        __syncthreads();
        if (q == 0)
            for (int j = 1; j < PARTS; ++j) fold_partials<1>(m, l, o, &part_m[j], &part_l[j], &part_o[j][c / 2]);
    }
    if (q != 0) return;
    T *dst = out_row<T, D>(p, out, b, t, h) + c;
    dst[0] = from_float<T>(l > 0.f ? o.x / l : 0.f);
    dst[1] = from_float<T>(l > 0.f ? o.y / l : 0.f);
    if (lse != nullptr && c == 0) lse[row] = l > 0.f ? (m + log2f(l)) * LN2 : -INFINITY;
}

// ---------------------------------------------------------------------------------------------------------------
// Backward step 1: delta[(b·heads + h)·tokens + t] = Σ_c dO·O, one warp per row.
template <typename T, int D>
__device__ void attn_delta(const AttnParams p, const T *__restrict__ o, const T *__restrict__ d_o,
                           float *__restrict__ delta) {
    const long long row = (long long)blockIdx.x * (THREADS / 32) + threadIdx.x / 32;
    if (row >= (long long)p.batch * p.heads * p.tokens) return;
    const int t = row % p.tokens, h = (row / p.tokens) % p.heads, b = row / ((long long)p.tokens * p.heads);
    const long long tok = (long long)b * p.tokens + t;
    const T *a = o + tok * p.o_stride + p.o_off + h * D;
    const T *da = d_o + tok * p.do_stride + p.do_off + h * D;
    float sum = 0.f;
    for (int c = threadIdx.x % 32; c < D; c += 32) sum += to_float(a[c]) * to_float(da[c]);
    sum = warp_sum(sum);
    if (threadIdx.x % 32 == 0) delta[row] = sum;
}

// Backward step 2 (FlashAttention-2's, transposed): warp w owns keys j0+16w .. +16 of the block and computes, per
// tile of 64 queries, Sᵀ = K_w·Qᵀ, Pᵀ = exp(Sᵀ·scale − lse), dV_w += Pᵀ·dO, dPᵀ = V_w·dOᵀ, dSᵀ = Pᵀ ⊙ (dPᵀ − delta),
// dK_w += dSᵀ·Q in registers (mma.sync, the accumulators of one product the A operand of the next); dS goes through
// shared memory for dQ = dS·K (query rows split over the warps), added to the fp32 accumulator with atomics.
// Shared memory: K, V, 2 × Q, 2 × dO [64, D+8] (the query tiles double-buffered through cp.async), dS [64 queries, 72]
// (16-bit), lse and delta [64] (f32).
// dq_acc: [batch·tokens, heads, D] f32, zeroed before; gets scale · dS K.
template <typename T, int D>
__device__ void attn_bwd(const AttnParams p, const T *__restrict__ q, const T *__restrict__ k,
                         const T *__restrict__ v, const unsigned char *__restrict__ mask, const T *__restrict__ d_o,
                         const float *__restrict__ lse, const float *__restrict__ delta, float *__restrict__ dq_acc,
                         float *__restrict__ dk, float *__restrict__ dv) {
    constexpr int LDT = D + 8, LDS = BC + 8;
    extern __shared__ __align__(128) unsigned char smem[];
    T *sK = reinterpret_cast<T *>(smem);
    T *sV = sK + BC * LDT;
    T *sQ2 = sV + BC * LDT;     // two buffers
    T *sdO2 = sQ2 + 2 * BR * LDT;  // two buffers
    T *sdS = sdO2 + 2 * BR * LDT;  // [query][key]
    float *sLse = reinterpret_cast<float *>(sdS + BR * LDS);
    float *sDelta = sLse + BR;

    const int j0 = blockIdx.x * BC, g = blockIdx.y, b = blockIdx.z;
    const int group = p.heads / p.kv_heads, start = p.kv_len - p.tokens;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gq = lane / 4, cq = lane % 4;
    const int valid_k = min(BC, p.kv_len - j0);
    const long long krow = (long long)b * p.kv_len + j0;
    load_rows<T, D, LDT>(sK, k + p.k_off + g * D, p.k_stride, krow, BC, valid_k);
    load_rows<T, D, LDT>(sV, v + p.v_off + g * D, p.v_stride, krow, BC, valid_k);
    const float sl2 = p.scale * LOG2E;
    // This lane's keys: j0 + 16w + gq (+ 8); visible()'s rule for key r: a key of the cache not masked out, seen from
    // positions key .. last_pos[r] (the window's end).
    const int key[2] = {j0 + warp * 16 + gq, j0 + warp * 16 + gq + 8};
    bool key_ok[2];
    int last_pos[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        key_ok[r] = key[r] < p.kv_len && (!p.has_mask || mask[(long long)b * p.kv_len + key[r]] != 0);
        last_pos[r] = p.window > 0 ? key[r] + p.window - 1 : 0x7fffffff;
    }
    float dK[D / 8][4], dV[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) dK[n][e] = dV[n][e] = 0.f;
    // Queries that see some key of this block: pos ≥ j0 and pos ≤ last key + window − 1.
    const int t_lo = max(0, j0 - start);
    const int t_hi = p.window > 0 ? min(p.tokens, j0 + valid_k - 1 + p.window - start) : p.tokens;

    // (head of the group, query tile) pairs, the next one's Q and dO copied while this one is computed.
    const int n_tiles = t_hi > t_lo ? (t_hi - t_lo + BR - 1) / BR : 0, total = group * n_tiles;
    const T *qg = q + p.q_off + g * group * D, *dog = d_o + p.do_off + g * group * D;
    auto issue = [&](int it, int slot) {
        const int hh = it / n_tiles, tq0 = t_lo + (it % n_tiles) * BR;
        const long long row0 = (long long)b * p.tokens + tq0;
        const int valid = min(BR, p.tokens - tq0);
        load_rows_async<T, D, LDT>(sQ2 + slot * BR * LDT, qg + hh * D, p.q_stride, row0, valid);
        load_rows_async<T, D, LDT>(sdO2 + slot * BR * LDT, dog + hh * D, p.do_stride, row0, valid);
        cp_async_commit();
    };
    if (total > 0) issue(0, 0);
    for (int it = 0, slot = 0; it < total; ++it, slot ^= 1) {
        {
            const int hh = it / n_tiles, tq0 = t_lo + (it % n_tiles) * BR;
            const int h = g * group + hh;
            const T *sQ = sQ2 + slot * BR * LDT, *sdO = sdO2 + slot * BR * LDT;
            if (it + 1 < total) {
                issue(it + 1, slot ^ 1);
                cp_async_wait<1>();
            } else {
                cp_async_wait<0>();
            }
            const int valid_q = min(BR, p.tokens - tq0);
            const long long qrow = (long long)b * p.tokens + tq0;
            for (int i = threadIdx.x; i < BR; i += blockDim.x) {
                const long long at = ((long long)b * p.heads + h) * p.tokens + tq0 + i;
                sLse[i] = i < valid_q ? lse[at] * LOG2E : 0.f;
                sDelta[i] = i < valid_q ? delta[at] : 0.f;
            }
            __syncthreads();
            // Sᵀ = K_w Qᵀ and dPᵀ = V_w dOᵀ: [16 keys, 64 queries] each.
            float s[BR / 8][4], dp[BR / 8][4];
#pragma unroll
            for (int n = 0; n < BR / 8; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                unsigned ka[4], va[4];
                ldmatrix_x4(ka, sK + (warp * 16 + lane % 16) * LDT + kk * 16 + (lane / 16) * 8);
                ldmatrix_x4(va, sV + (warp * 16 + lane % 16) * LDT + kk * 16 + (lane / 16) * 8);
#pragma unroll
                for (int np = 0; np < BR / 16; ++np) {
                    const int off = (np * 16 + (lane / 16) * 8 + lane % 8) * LDT + kk * 16 + ((lane / 8) % 2) * 8;
                    unsigned qb[4], ob[4];
                    ldmatrix_x4(qb, sQ + off);
                    ldmatrix_x4(ob, sdO + off);
                    mma(s[2 * np], ka, qb[0], qb[1], T());
                    mma(s[2 * np + 1], ka, qb[2], qb[3], T());
                    mma(dp[2 * np], va, ob[0], ob[1], T());
                    mma(dp[2 * np + 1], va, ob[2], ob[3], T());
                }
            }
            // Pᵀ and dSᵀ in place of Sᵀ and dPᵀ; dS (transposed back) to shared memory for dQ.
            const bool masked = p.has_mask || p.window > 0 || start + tq0 < j0 + BC - 1 || valid_k < BC || valid_q < BR;
#pragma unroll
            for (int n = 0; n < BR / 8; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int c = n * 8 + 2 * cq + e % 2, r = e / 2, t = tq0 + c, pos = start + t;
                    const bool vis = !masked || (key_ok[r] && t < p.tokens && pos >= key[r] && pos <= last_pos[r]);
                    s[n][e] = vis ? ex2(fmaf(s[n][e], sl2, -sLse[c])) : 0.f;
                    dp[n][e] = s[n][e] * (dp[n][e] - sDelta[c]);
                    sdS[c * LDS + warp * 16 + gq + (e / 2) * 8] = from_float<T>(dp[n][e]);
                }
            }
            // dV_w += Pᵀ dO and dK_w += dSᵀ Q: B(k=query, n=d) = X[query][d], transposed ldmatrix.
#pragma unroll
            for (int kc = 0; kc < BR / 16; ++kc) {
                const unsigned pa[4] = {pack2(s[2 * kc][0], s[2 * kc][1], T()), pack2(s[2 * kc][2], s[2 * kc][3], T()),
                                        pack2(s[2 * kc + 1][0], s[2 * kc + 1][1], T()),
                                        pack2(s[2 * kc + 1][2], s[2 * kc + 1][3], T())};
                const unsigned da[4] = {pack2(dp[2 * kc][0], dp[2 * kc][1], T()), pack2(dp[2 * kc][2], dp[2 * kc][3], T()),
                                        pack2(dp[2 * kc + 1][0], dp[2 * kc + 1][1], T()),
                                        pack2(dp[2 * kc + 1][2], dp[2 * kc + 1][3], T())};
#pragma unroll
                for (int dd = 0; dd < D / 16; ++dd) {
                    const int off = (kc * 16 + ((lane / 8) % 2) * 8 + lane % 8) * LDT + dd * 16 + (lane / 16) * 8;
                    unsigned ob[4], qb[4];
                    ldmatrix_x4_trans(ob, sdO + off);
                    ldmatrix_x4_trans(qb, sQ + off);
                    mma(dV[2 * dd], pa, ob[0], ob[1], T());
                    mma(dV[2 * dd + 1], pa, ob[2], ob[3], T());
                    mma(dK[2 * dd], da, qb[0], qb[1], T());
                    mma(dK[2 * dd + 1], da, qb[2], qb[3], T());
                }
            }
            __syncthreads();
            // dQ[16w.., :] = dS K over this block's keys: A = dS rows, B(k=key, n=d) = K[key][d] (transposed).
            if (warp * 16 < valid_q) {
                unsigned sa[BC / 16][4];
#pragma unroll
                for (int kk = 0; kk < BC / 16; ++kk) ldmatrix_x4(sa[kk], sdS + (warp * 16 + lane % 16) * LDS + kk * 16 + (lane / 16) * 8);
#pragma unroll
                for (int dd = 0; dd < D / 16; ++dd) {
                    float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
                    for (int kk = 0; kk < BC / 16; ++kk) {
                        unsigned kb[4];
                        ldmatrix_x4_trans(kb, sK + (kk * 16 + ((lane / 8) % 2) * 8 + lane % 8) * LDT + dd * 16 + (lane / 16) * 8);
                        mma(acc[0], sa[kk], kb[0], kb[1], T());
                        mma(acc[1], sa[kk], kb[2], kb[3], T());
                    }
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int row = warp * 16 + gq + (e / 2) * 8;
                        if (row < valid_q) {
                            float *dst = dq_acc + ((qrow + row) * p.heads + h) * D + dd * 16 + 2 * cq + e % 2;
                            atomicAdd(dst, acc[0][e] * p.scale);
                            atomicAdd(dst + 8, acc[1][e] * p.scale);
                        }
                    }
                }
            }
        }
        __syncthreads();  // every warp is done with this slot, dS, lse and delta before the next pair refills them
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const int j = key[e / 2];
        if (j >= p.kv_len) continue;
        const long long at = (long long)b * p.kv_len + j;
        float *dkr = dk + at * p.dk_stride + p.dk_off + g * D, *dvr = dv + at * p.dv_stride + p.dv_off + g * D;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            const int c = n * 8 + 2 * cq + e % 2;
            dkr[c] = dK[n][e] * p.scale;
            dvr[c] = dV[n][e];
        }
    }
}

// Backward step 3: dq[(b·tokens + t) · dq_stride + dq_off + h·D + c] = dq_acc[b·tokens + t, h, c].
extern "C" __global__ void attention_dq_copy(const AttnParams p, int head_dim, const float *__restrict__ acc,
                                             float *__restrict__ dq) {
    const int width = p.heads * head_dim;
    const long long n = (long long)p.batch * p.tokens * width;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        dq[(i / width) * p.dq_stride + p.dq_off + i % width] = acc[i];
}

// The decode kernels do not wait_for_previous_kernel: in a captured decode step a programmatic edge into them made
// int4 decode 3-8% slower (H200, benches/RESULTS.md), so they start once the kernel before has ended.
#define ATTENTION_KERNELS(NAME, T, D)                                                                                \
    extern "C" __global__ void __launch_bounds__(THREADS, 3) attention_fwd_##NAME##_##D(                            \
        const AttnParams p, const T *q, const T *k, const T *v, const unsigned char *mask, T *out, float *lse) {     \
        attn_fwd<T, D>(p, q, k, v, mask, out, lse);                                                                  \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_decode_##NAME##_##D(                            \
        const AttnParams p, const unsigned *past, const T *q, T *k, T *v, const unsigned char *mask, float *part,    \
        T *out, const float *inv_freq, const float *long_freq, const RopeStep rope) {                                \
        attn_decode<T, D>(p, past, q, k, v, mask, part, out, inv_freq, long_freq, rope);                             \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_combine_##NAME##_##D(                           \
        const AttnParams p, const unsigned *past, const float *part, T *out, float *lse) {                          \
        attn_combine<T, D>(p, past, part, out, lse);                                                                 \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                            \
        attention_delta_##NAME##_##D(const AttnParams p, const T *o, const T *d_o, float *delta) {                   \
        attn_delta<T, D>(p, o, d_o, delta);                                                                          \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_bwd_##NAME##_##D(                               \
        const AttnParams p, const T *q, const T *k, const T *v, const unsigned char *mask, const T *d_o,             \
        const float *lse, const float *delta, float *dq_acc, float *dk, float *dv) {                                 \
        attn_bwd<T, D>(p, q, k, v, mask, d_o, lse, delta, dq_acc, dk, dv);                                           \
    }

// One element type and head size a compile (attention.rs passes -DATTN_NAME=bf16|f16 -DATTN_D=64|96|128): NVRTC then
// does a sixth of the work of all six, which took ~19 s.
#if !defined(ATTN_NAME) || !defined(ATTN_D)
#error "attention.cu is compiled with -DATTN_NAME=bf16|f16 -DATTN_D=64|96|128"
#endif
#define ATTN_TYPE_bf16 __nv_bfloat16
#define ATTN_TYPE_f16 __half
#define ATTN_PASTE(a, b) a##b
#define ATTENTION_INSTANCE(NAME, D) ATTENTION_KERNELS(NAME, ATTN_PASTE(ATTN_TYPE_, NAME), D)
ATTENTION_INSTANCE(ATTN_NAME, ATTN_D)
