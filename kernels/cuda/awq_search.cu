// AWQ's search on the GPU (Lin et al. 2023; AutoAWQ awq/quantize/quantizer.py `_compute_best_scale` /
// `_compute_best_clip`), the grid math of crates/quant/src/grid.rs (GPTQ's `find_params`: per (row, group) range
// [min(w, 0), max(w, 0)], symmetric ±max|w|, [-1, 1] when empty; scale = range / maxq; zero = round-half-even(-min /
// scale), or (maxq + 1) / 2 symmetric; level = clamp(round-half-even(x / scale) + zero, 0, maxq)) reproduced bit for
// bit: every rounding step is an explicit IEEE round-to-nearest intrinsic (no FMA contraction), rintf rounds half to
// even, and min/max folds start from 0 as the Rust folds do (their order does not change the result).
//   awq_scaled_fake_quantize: out = Q(w * s) * (1 / s) per (row, group), the weight of one scale candidate.
//   awq_clip_candidates:      d[step, r, :] = Q(clamp(w[r, c0:c0+len], +-max|w| * (1 - step / n_grid))) - w.
//   awq_clip_best:            per row, the clip max of the step whose error sum_j e[step, r, j] * d[step, r, j]
//                             (f64) is smallest (the first of equal ones), into best[r].
//   awq_sq_diff_partial + awq_sum_partials: sum (a - b)^2 in f64, in a fixed order (deterministic).
#define THREADS 256

// Block-wide reductions over THREADS threads (every thread gets the result).
__device__ __forceinline__ float block_min(float v, float *sh) {
    for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float r = sh[0];
    for (int w = 1; w < THREADS / 32; ++w) r = fminf(r, sh[w]);
    return r;
}

__device__ __forceinline__ float block_max(float v, float *sh) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float r = sh[0];
    for (int w = 1; w < THREADS / 32; ++w) r = fmaxf(r, sh[w]);
    return r;
}

// Sum in a fixed order: each warp's tree, then the warps in order (deterministic for a fixed launch).
__device__ __forceinline__ double block_sum(double v, double *sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    double r = sh[0];
    for (int w = 1; w < THREADS / 32; ++w) r += sh[w];
    return r;
}

// Rust's `x as u8` on a float, back as a float: NaN and x <= 0 -> +0, saturating at 255, truncating.
__device__ __forceinline__ float as_u8(float x) {
    return x > 0.f ? truncf(fminf(x, 255.f)) : 0.f;
}

struct GridParams {
    float scale;
    float zero;
    bool normal;
};

// grid.rs `group_params` from the group's folded min and max (folds started at 0).
__device__ __forceinline__ GridParams group_params(float xmin, float xmax, float maxq, int sym) {
    if (sym) {
        xmax = fmaxf(xmax, fabsf(xmin));
        if (xmin < 0.f) xmin = -xmax;
    }
    if (xmin == 0.f && xmax == 0.f) {
        xmin = -1.f;
        xmax = 1.f;
    }
    GridParams p;
    p.scale = __fdiv_rn(__fsub_rn(xmax, xmin), maxq);
    p.zero = as_u8(sym ? __fdiv_rn(__fadd_rn(maxq, 1.f), 2.f) : rintf(__fdiv_rn(-xmin, p.scale)));
    const float a = fabsf(p.scale);
    p.normal = a >= 1.17549435e-38f && a <= 3.40282347e38f;
    return p;
}

// dequantize(quantize(x)): awq.rs `on_grid` for a normal scale, else grid.rs quantize_value (NaN level -> 0)
// and dequantize_value.
__device__ __forceinline__ float on_grid(float x, GridParams p, float maxq) {
    float level = __fadd_rn(rintf(__fdiv_rn(x, p.scale)), p.zero);
    level = level < 0.f ? 0.f : (level > maxq ? maxq : level);
    if (!p.normal) level = as_u8(level);
    return __fmul_rn(__fsub_rn(level, p.zero), p.scale);
}

// One block per (row, group) of w: [rows, in_features]; out likewise. s: [in_features].
extern "C" __global__ void awq_scaled_fake_quantize(float *__restrict__ out, const float *__restrict__ w,
                                                    const float *__restrict__ s, int rows, int in_features,
                                                    int group_len, int max_level, int sym) {
    __shared__ float sh[THREADS / 32];
    const int groups = (in_features + group_len - 1) / group_len;
    const long long job = blockIdx.x;
    if (job >= (long long)rows * groups) return;
    const long long r = job / groups;
    const int c0 = (int)(job - r * groups) * group_len;
    const int len = min(group_len, in_features - c0);
    const float *wr = w + r * in_features + c0;
    float *orow = out + r * in_features + c0;
    const float *sr = s + c0;
    float lo = 0.f, hi = 0.f;
    for (int j = threadIdx.x; j < len; j += THREADS) {
        const float b = __fmul_rn(wr[j], sr[j]);
        lo = fminf(lo, b);
        hi = fmaxf(hi, b);
    }
    lo = block_min(lo, sh);
    hi = block_max(hi, sh);
    const float maxq = (float)max_level;
    const GridParams p = group_params(lo, hi, maxq, sym);
    for (int j = threadIdx.x; j < len; j += THREADS) {
        const float b = __fmul_rn(wr[j], sr[j]);
        orow[j] = __fmul_rn(on_grid(b, p, maxq), __fdiv_rn(1.f, sr[j]));
    }
}

// max |w[r, c0:c0+len]| (fold from 0), every thread of the block.
__device__ __forceinline__ float row_abs_max(const float *wr, int len, float *sh) {
    float m = 0.f;
    for (int j = threadIdx.x; j < len; j += THREADS) m = fmaxf(m, fabsf(wr[j]));
    return block_max(m, sh);
}

// awq.rs `1.0 - i as f32 / n_grid as f32`.
__device__ __forceinline__ float shrink(int step, int n_grid) {
    return __fsub_rn(1.f, __fdiv_rn((float)step, (float)n_grid));
}

// One block per (step, row): d: [steps, rows, len]; w: [rows, in_features], the group's columns c0..c0+len.
extern "C" __global__ void awq_clip_candidates(float *__restrict__ d, const float *__restrict__ w, int in_features,
                                               int c0, int rows, int len, int steps, int n_grid, int max_level,
                                               int sym) {
    __shared__ float sh[THREADS / 32];
    const long long job = blockIdx.x;
    if (job >= (long long)steps * rows) return;
    const int step = (int)(job / rows);
    const long long r = job - (long long)step * rows;
    const float *wr = w + r * in_features + c0;
    float *dr = d + job * len;
    const float lim = __fmul_rn(row_abs_max(wr, len, sh), shrink(step, n_grid));
    float lo = 0.f, hi = 0.f;
    for (int j = threadIdx.x; j < len; j += THREADS) {
        float v = wr[j];
        v = v < -lim ? -lim : (v > lim ? lim : v);
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
    }
    lo = block_min(lo, sh);
    hi = block_max(hi, sh);
    const float maxq = (float)max_level;
    const GridParams p = group_params(lo, hi, maxq, sym);
    for (int j = threadIdx.x; j < len; j += THREADS) {
        const float v = wr[j];
        const float c = v < -lim ? -lim : (v > lim ? lim : v);
        dr[j] = __fsub_rn(on_grid(c, p, maxq), v);
    }
}

// One block per row: e, d: [steps, rows, len]; best[r] = max|w[r, group]| * shrink(step) of the step with the
// smallest sum_j e * d (f64), the first of equal ones; the unclipped max when every error is NaN.
extern "C" __global__ void awq_clip_best(float *__restrict__ best, const float *__restrict__ e,
                                         const float *__restrict__ d, const float *__restrict__ w, int in_features,
                                         int c0, int rows, int len, int steps, int n_grid) {
    __shared__ float shf[THREADS / 32];
    __shared__ double shd[THREADS / 32];
    const long long r = blockIdx.x;
    if (r >= rows) return;
    const float org = row_abs_max(w + r * in_features + c0, len, shf);
    double best_err = __longlong_as_double(0x7ff0000000000000LL); // +inf
    float best_max = org;
    for (int step = 0; step < steps; ++step) {
        const long long base = ((long long)step * rows + r) * len;
        double acc = 0.0;
        for (int j = threadIdx.x; j < len; j += THREADS) acc += (double)e[base + j] * (double)d[base + j];
        const double err = block_sum(acc, shd);
        if (err < best_err) {
            best_err = err;
            best_max = __fmul_rn(org, shrink(step, n_grid));
        }
    }
    if (threadIdx.x == 0) best[r] = best_max;
}

// partial[block] = sum over the block's grid-stride elements of (a - b)^2, (a - b) rounded to f32 first.
extern "C" __global__ void awq_sq_diff_partial(double *__restrict__ partial, const float *__restrict__ a,
                                               const float *__restrict__ b, long long n) {
    __shared__ double sh[THREADS / 32];
    double acc = 0.0;
    for (long long i = (long long)blockIdx.x * THREADS + threadIdx.x; i < n; i += (long long)gridDim.x * THREADS) {
        const double t = (double)__fsub_rn(a[i], b[i]);
        acc += t * t;
    }
    const double sum = block_sum(acc, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

// out[0] = sum of partial[0..count] (one block).
extern "C" __global__ void awq_sum_partials(double *__restrict__ out, const double *__restrict__ partial, int count) {
    __shared__ double sh[THREADS / 32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += THREADS) acc += partial[i];
    const double sum = block_sum(acc, sh);
    if (threadIdx.x == 0) out[0] = sum;
}
