// f32 attention of whole calibration windows (AWQ's scale search on the GPU): the same function as
// cpu::rope_apply on the q and k heads followed by cpu::attention per window, in f32 throughout (no tensor cores),
// so the search's losses keep parity with the CPU path.
//
// qkv: [windows * seq, width], q heads at column 0, k heads at heads * D, v heads at (heads + kv_heads) * D; q and k
// are rotated on load by the RoPE tables cos, sin: [seq, rotary_dim / 2] (rotate-half; dims past rotary_dim pass
// through). Query head h reads KV head h / (heads / kv_heads); key j is visible from position p when j <= p and,
// with window > 0, p - j < window. out: [windows * seq, heads * D].
//
// A block: QT query rows of one (window, head), 128 threads; thread t owns row t / 4 and every fourth column from
// t % 4 (of the key tile for the scores, of the head for the output); keys in tiles of KT with an online softmax.
// Shared memory: q and k tiles [rows][D + 1] (the odd pitch keeps the column reads conflict-free), v [KT][D],
// probabilities [QT][KT + 1].
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#define WIN_QT 32
#define WIN_KT 32
#define WIN_MAXD 256

struct WindowParams {
    int seq, heads, kv_heads, head_dim, rotary_dim, width, window;
    float scale;
};

__device__ __forceinline__ float win_rotated(const float *x, const float *cs, const float *sn, int d, int half,
                                             int rotary) {
    if (d >= rotary) return x[d];
    if (d < half) return x[d] * cs[d] - x[d + half] * sn[d];
    return x[d] * cs[d - half] + x[d - half] * sn[d - half];
}

extern "C" __global__ void __launch_bounds__(128)
    attention_windows_f32(const WindowParams p, const float *__restrict__ qkv, const float *__restrict__ cosv,
                          const float *__restrict__ sinv, float *__restrict__ out) {
    extern __shared__ float win_smem[];
    const int D = p.head_dim, DP = D + 1, half = p.rotary_dim / 2;
    float *qs = win_smem;           // [QT][DP]
    float *ks = qs + WIN_QT * DP;   // [KT][DP]
    float *vs = ks + WIN_KT * DP;   // [KT][D]
    float *ps = vs + WIN_KT * D;    // [QT][KT + 1]
    const int h = blockIdx.y, kvh = h / (p.heads / p.kv_heads);
    const int q_cols = p.heads * D, kv_cols = p.kv_heads * D;
    const float *base = qkv + (size_t)blockIdx.z * p.seq * p.width;
    const int t = threadIdx.x, r = t >> 2, c0 = t & 3;
    const int q0 = blockIdx.x * WIN_QT, pos = q0 + r;

    for (int i = t; i < WIN_QT * D; i += 128) {
        const int rr = i / D, d = i % D, at = q0 + rr;
        qs[rr * DP + d] =
            at < p.seq ? win_rotated(base + (size_t)at * p.width + h * D, cosv + at * half, sinv + at * half, d,
                                     half, p.rotary_dim)
                       : 0.f;
    }
    float m = -INFINITY, l = 0.f, o[WIN_MAXD / 4];
#pragma unroll
    for (int i = 0; i < WIN_MAXD / 4; ++i) o[i] = 0.f;

    const int last = min(p.seq - 1, q0 + WIN_QT - 1);
    const int first = p.window > 0 ? max(0, q0 - p.window + 1) : 0;
    for (int k0 = first / WIN_KT * WIN_KT; k0 <= last; k0 += WIN_KT) {
        __syncthreads();  // the previous tile's reads are done (and, the first time, the q tile is written)
        for (int i = t; i < WIN_KT * D; i += 128) {
            const int rr = i / D, d = i % D, j = k0 + rr;
            float kv = 0.f, vv = 0.f;
            if (j < p.seq) {
                const float *row = base + (size_t)j * p.width;
                kv = win_rotated(row + q_cols + kvh * D, cosv + j * half, sinv + j * half, d, half, p.rotary_dim);
                vv = row[q_cols + kv_cols + kvh * D + d];
            }
            ks[rr * DP + d] = kv;
            vs[rr * D + d] = vv;
        }
        __syncthreads();
        float s[WIN_KT / 4], tile_max = -INFINITY;
#pragma unroll
        for (int i = 0; i < WIN_KT / 4; ++i) {
            const int c = c0 + 4 * i, j = k0 + c;
            float acc = 0.f;
            for (int d = 0; d < D; ++d) acc = fmaf(qs[r * DP + d], ks[c * DP + d], acc);
            const bool seen = pos < p.seq && j <= pos && (p.window <= 0 || pos - j < p.window);
            s[i] = seen ? acc * p.scale : -INFINITY;
            tile_max = fmaxf(tile_max, s[i]);
        }
        // The row's 4 threads are neighbours in one warp.
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
        const float mn = fmaxf(m, tile_max);
        const bool none = mn == -INFINITY;  // no key seen yet by this row
        const float corr = none ? 1.f : expf(m - mn);
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < WIN_KT / 4; ++i) {
            const float e = none ? 0.f : expf(s[i] - mn);
            ps[r * (WIN_KT + 1) + c0 + 4 * i] = e;
            sum += e;
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        l = l * corr + sum;
        m = mn;
        __syncwarp();
#pragma unroll
        for (int i = 0; i < WIN_MAXD / 4; ++i) o[i] *= corr;
        // Keys outer and not unrolled (the head's columns unrolled inside keep o in registers): each o[i] still
        // adds the keys in order, and NVRTC compiles this in a fraction of the fully unrolled nest's time.
#pragma unroll 1
        for (int c = 0; c < WIN_KT; ++c) {
            const float pc = ps[r * (WIN_KT + 1) + c];
            const float *vc = vs + c * D;
#pragma unroll
            for (int i = 0; i < WIN_MAXD / 4; ++i) {
                const int d = c0 + 4 * i;
                if (d < D) o[i] = fmaf(pc, vc[d], o[i]);
            }
        }
    }
    if (pos >= p.seq) return;
    float *dst = out + ((size_t)blockIdx.z * p.seq + pos) * q_cols + h * D;
#pragma unroll
    for (int i = 0; i < WIN_MAXD / 4; ++i) {
        const int d = c0 + 4 * i;
        if (d < D) dst[d] = o[i] / l;
    }
}
