// gpu-bench wgmma: how fast a multiprocessor's warpgroups get through chains of wgmma m64nNk16 (bf16, fp32
// accumulators) with no data moving, the way w4_ws issues them: per chunk 4 k16 steps of RT m64 tiles, one commit
// group, then a wait for all but the last DEPTH groups. Appended to kernels/cuda/w4a16.cu + w4a16_sm90.cu (wg_mma,
// wg_desc, wg_pin, wg_keep). A in registers (RS; MODE 0 rewrites them every chunk as a dequantization would, MODE 1
// keeps them) or in shared memory (MODE 2, N = 64 only); B in shared memory. Each warpgroup writes its clock64
// cycles.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void wg_mma_ss64(float (&d)[32], unsigned long long da, unsigned long long db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\nwgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
                 "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),
                   "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),
                   "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),
                   "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(da), "l"(db), "r"(1));
}

template <int NWG, int RT, int N, int MODE, int DEPTH>
__device__ __forceinline__ void wgmma_rate(long long *cycles, float *sink, int chunks) {
    extern __shared__ __align__(1024) unsigned char sm[];
    // B: 4 k16 steps of [N][16] (core matrices, LBO = N * 16, SBO = 128); A (MODE 2): 8 KiB a warpgroup and tile.
    constexpr int BBYTES = N * 128;
    for (int i = threadIdx.x; i < (BBYTES + NWG * RT * 8192) / 4; i += blockDim.x)
        reinterpret_cast<u32 *>(sm)[i] = 0x3c003c00u ^ ((i * 2654435761u) & 0x001f001fu);
    __syncthreads();
    const int wg = threadIdx.x >> 7;
    float acc[RT][N / 2];
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
        for (int i = 0; i < N / 2; ++i) acc[r][i] = 0.f;
    u32 a[2][RT][4][4];
#pragma unroll
    for (int q = 0; q < 2; ++q)
#pragma unroll
        for (int r = 0; r < RT; ++r)
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) a[q][r][j][e] = 0x3c003c00u ^ ((threadIdx.x + 7 * e + 3 * j) & 0x1f);
    const unsigned long long db = wg_desc(sm, N * 16, 128);
    const unsigned long long da = wg_desc(sm + BBYTES + wg * RT * 8192, 128, 256);
    const long long t0 = clock64();
    int it = 0;
    do {  // two chunks a trip, so that each A buffer is a constant
#pragma unroll
        for (int q = 0; q < 2; ++q) {
            u32(&cur)[RT][4][4] = a[q];
            if (MODE == 0) {
#pragma unroll
                for (int r = 0; r < RT; ++r)
#pragma unroll
                    for (int j = 0; j < 4; ++j)
#pragma unroll
                        for (int e = 0; e < 4; ++e) cur[r][j][e] = (cur[r][j][e] * 1664525u + (u32)it) & 0x3fff3fffu;
            }
#pragma unroll
            for (int r = 0; r < RT; ++r) wg_pin(acc[r]);
            asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int r = 0; r < RT; ++r) {
                    if constexpr (MODE == 2)
                        wg_mma_ss64(acc[r], da + (r * 8192 + j * 2048) / 16, db + (j * 2 * N * 16) / 16);
                    else
                        wg_mma<__nv_bfloat16, N>(acc[r], cur[r][j], db + (j * 2 * N * 16) / 16);
                }
            asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#pragma unroll
            for (int r = 0; r < RT; ++r) wg_pin(acc[r]);
            asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(DEPTH) : "memory");
            wg_keep(a[q ^ 1]);
        }
        it += 2;
    } while (it < chunks);
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
    for (int r = 0; r < RT; ++r) wg_pin(acc[r]);
    const long long t1 = clock64();
    float s = 0.f;
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
        for (int i = 0; i < N / 2; ++i) s += acc[r][i];
    sink[blockIdx.x * blockDim.x + threadIdx.x] = s;
    if ((threadIdx.x & 127) == 0) cycles[blockIdx.x * NWG + wg] = t1 - t0;
}

// wgmma_rate_<NWG>_<RT>_<N>_<MODE>_<DEPTH>
#define WGMMA_RATE(NWG, RT, N, MODE, DEPTH)                                                                    \
    extern "C" __global__ void __launch_bounds__(128 * NWG, 1)                                                 \
        wgmma_rate_##NWG##_##RT##_##N##_##MODE##_##DEPTH(long long *cycles, float *sink, int chunks) {          \
        wgmma_rate<NWG, RT, N, MODE, DEPTH>(cycles, sink, chunks);                                             \
    }
#define WGMMA_RATE_MODES(NWG, RT) WGMMA_RATE(NWG, RT, 64, 0, 1) WGMMA_RATE(NWG, RT, 64, 1, 1) WGMMA_RATE(NWG, RT, 64, 2, 1)
WGMMA_RATE_MODES(1, 1)
WGMMA_RATE_MODES(2, 1)
WGMMA_RATE_MODES(3, 1)
WGMMA_RATE_MODES(4, 1)
WGMMA_RATE_MODES(1, 2)
WGMMA_RATE_MODES(2, 2)
WGMMA_RATE_MODES(3, 2)
WGMMA_RATE(1, 1, 64, 0, 0)
WGMMA_RATE(2, 1, 64, 0, 0)
WGMMA_RATE(1, 1, 128, 0, 1)
WGMMA_RATE(2, 1, 128, 0, 1)
WGMMA_RATE(3, 1, 128, 0, 1)
WGMMA_RATE(1, 2, 128, 0, 1)
WGMMA_RATE(2, 2, 128, 0, 1)
#endif
