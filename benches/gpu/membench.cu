// The bench's reference points (not kernels of the library): a plain device-memory read, 16-byte loads with four
// in flight per thread over a grid-stride loop (the bandwidth a memory-bound kernel can reach), and an empty kernel
// (what a launch costs).
typedef unsigned int u32;

extern "C" __global__ void empty() {}

extern "C" __global__ void read_bytes(u32 *out, const uint4 *__restrict__ in, long long n16) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    u32 acc = 0;
    for (; i + 3 * stride < n16; i += 4 * stride) {
        uint4 v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) v[u] = __ldcs(in + i + u * stride);
#pragma unroll
        for (int u = 0; u < 4; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    for (; i < n16; i += stride) {
        const uint4 v = __ldcs(in + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    // Written only on an impossible value, so the loads stay and the writes cost nothing.
    if (acc == 0x9e3779b9u) out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

// The int4 GEMV's access pattern with no arithmetic: one block of `wk` warps a 16-row weight tile, warp w reading
// the tile's 512-byte chunks w, w + wk, ... (one 16-byte load a lane, four in flight). `chunk_major` places chunk c of
// tile t at (c * ntiles + t) instead of the tiles' (t * nchunks + c), to see what the layout costs.
extern "C" __global__ void read_tiles(u32 *out, const uint4 *__restrict__ in, int nchunks, int chunk_major) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, wk = blockDim.x >> 5;
    const long long t = blockIdx.x, ntiles = gridDim.x;
    u32 acc = 0;
#pragma unroll 4
    for (int c = w; c < nchunks; c += wk) {
        const long long piece = chunk_major ? c * ntiles + t : t * nchunks + c;
        uint4 v;
        asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                     : "l"(in + piece * 32 + lane));
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}
