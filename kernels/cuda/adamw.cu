// torch.optim.AdamW's single-tensor step (Loshchilov & Hutter 2019, decoupled weight decay; Kingma & Ba 2015 bias
// correction) fused over fp32 params, grads and moments, as kernels/src/cpu/adamw.rs computes it:
// g *= grad_scale (clip_grad_norm_'s coefficient); p *= decay; m += (g - m) * (1 - b1);
// v = v * b2 + (1 - b2) * g * g; p -= step_size * m / (sqrt(v) / bc2_sqrt + eps), where decay, step_size and
// bc2_sqrt are the step's scalars computed on the host. And the sum of squares that the global gradient norm
// (torch.nn.utils.clip_grad_norm_) needs: per-thread and per-block sums in f64, added atomically into one f64.

struct alignas(16) F4 { float x[4]; };

__device__ __forceinline__ void update(float &p, float g, float &m, float &v, float decay, float one_minus_b1,
                                       float b2, float one_minus_b2, float step_size, float bc2_sqrt, float eps,
                                       float grad_scale) {
    g *= grad_scale;
    p *= decay;
    m += (g - m) * one_minus_b1;
    v = v * b2 + one_minus_b2 * g * g;
    p -= step_size * m / (sqrtf(v) / bc2_sqrt + eps);
}

// p, g, m, v: [n]; grid-stride over packs of 4, the last n % 4 by the first threads.
extern "C" __global__ void adamw_f32(float *p, const float *g, float *m, float *v, long long n, float decay,
                                     float one_minus_b1, float b2, float one_minus_b2, float step_size,
                                     float bc2_sqrt, float eps, float grad_scale) {
    const long long packs = n / 4;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (long long j = first; j < packs; j += stride) {
        F4 pp = reinterpret_cast<F4 *>(p)[j], gg = reinterpret_cast<const F4 *>(g)[j];
        F4 mm = reinterpret_cast<F4 *>(m)[j], vv = reinterpret_cast<F4 *>(v)[j];
#pragma unroll
        for (int k = 0; k < 4; ++k)
            update(pp.x[k], gg.x[k], mm.x[k], vv.x[k], decay, one_minus_b1, b2, one_minus_b2, step_size, bc2_sqrt,
                   eps, grad_scale);
        reinterpret_cast<F4 *>(p)[j] = pp;
        reinterpret_cast<F4 *>(m)[j] = mm;
        reinterpret_cast<F4 *>(v)[j] = vv;
    }
    const long long i = packs * 4 + first;
    if (i < n)
        update(p[i], g[i], m[i], v[i], decay, one_minus_b1, b2, one_minus_b2, step_size, bc2_sqrt, eps, grad_scale);
}

// *acc += sum of g[i]^2 over g: [n] (acc zeroed by the caller before the first tensor).
extern "C" __global__ void sum_squares_f32(const float *g, long long n, double *acc) {
    __shared__ double partial[32];
    double s = 0.0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const double v = g[i];
        s += v * v;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) partial[warp] = s;
    __syncthreads();
    if (warp == 0) {
        s = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.0;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) atomicAdd(acc, s);
    }
}
