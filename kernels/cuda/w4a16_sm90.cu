// W4A16 on Hopper: the wgmma product kernel. Appended to kernels/cuda/w4a16.cu when the launcher compiles the two as
// one source (kernels/src/cuda/w4a16.rs), so it uses its W4<T> dequantization and word(); it exists only where that
// source is compiled for sm_90a (the arch-specific target wgmma needs).
//
// The product: wgmma (warpgroup MMA, m64nNk16, N = COLS batch columns) with the dequantized weights as the A operand
// in registers (the tile layout is exactly wgmma's A fragment, warp i of a warpgroup holding rows 16i..16i+15) and
// the activations as B in shared memory, fp32 accumulators in registers. wgmma reads its A registers
// asynchronously: they must keep their values until the wgmma group completes (wait_group), which the compiler
// does not see; and any register copy of the accumulators while wgmmas own them, or a zero-trip loop path, makes
// ptxas serialize the wgmmas (hence wg_pin and the do-while shaped chunk loops).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WG_MMA_8(TY)                                                                                         \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\nwgmma.mma_async.sync.aligned.m64n8k16.f32." TY "." TY " {" \
                 "%0, %1, %2, %3"                                        \
                 "}, {%4, %5, %6, %7}, %8, p, 1, 1, 0;\n}\n"                                   \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))
#define WG_MMA_16(TY)                                                                                         \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\nwgmma.mma_async.sync.aligned.m64n16k16.f32." TY "." TY " {" \
                 "%0, %1, %2, %3, %4, %5, %6, %7"                                        \
                 "}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"                                   \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]) \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))
#define WG_MMA_32(TY)                                                                                         \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\nwgmma.mma_async.sync.aligned.m64n32k16.f32." TY "." TY " {" \
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"                                        \
                 "}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"                                   \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]) \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))
#define WG_MMA_64(TY)                                                                                         \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\nwgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " {" \
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                                        \
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"                                        \
                 "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"                                   \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]) \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))
#define WG_MMA_128(TY)                                                                                         \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\nwgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " {" \
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                                        \
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "                                        \
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                                        \
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"                                        \
                 "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"                                   \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
                   "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
                   "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
                   "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
                   "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))
// One wgmma m64nNk16 (N = 8 .. 128): d += A (registers a, this thread's fragment) x B (shared memory, desc).
template <typename T, int N> __device__ __forceinline__ void wg_mma(float (&d)[N / 2], const u32 a[4],
                                                                    unsigned long long desc) {
#define WG_MMA_CASE(NN)                                                                                           \
    if constexpr (N == NN) {                                                                                     \
        if constexpr (W4<T>::BF16) WG_MMA_##NN("bf16"); else WG_MMA_##NN("f16");                                 \
    }
    WG_MMA_CASE(8) WG_MMA_CASE(16) WG_MMA_CASE(32) WG_MMA_CASE(64) WG_MMA_CASE(128)
#undef WG_MMA_CASE
}

// Pins the accumulators to their registers around a wgmma batch (no copies the compiler might place while the
// asynchronous wgmmas own them, which would make ptxas serialize the wgmmas).
template <int N> __device__ __forceinline__ void wg_pin(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Marks A registers `a` in use up to here: a wgmma reads them asynchronously, which the compiler does not see, so
// after the wait_group that retires their wgmmas, this keeps it from reusing them earlier.
template <int RT> __device__ __forceinline__ void wg_keep(const u32 (&a)[RT][4][4]) {
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
        for (int j = 0; j < 4; ++j)
            asm volatile("" ::"r"(a[r][j][0]), "r"(a[r][j][1]), "r"(a[r][j][2]), "r"(a[r][j][3]) : "memory");
}

// A wgmma shared-memory matrix descriptor: core matrices LBO / SBO bytes apart, no swizzle (`sw128` false) or
// 128-byte swizzle (`sw128`: rows of 128 bytes as a tensor copy with CU_TENSOR_MAP_SWIZZLE_128B lays them out from a
// 1024-byte aligned base, SBO = 1024 between 8-row groups, LBO unused).
__device__ __forceinline__ unsigned long long wg_desc(const void *smem, u32 lbo, u32 sbo, bool sw128 = false) {
    const u32 a = (u32)__cvta_generic_to_shared(smem);
    return (unsigned long long)((a & 0x3ffff) >> 4) | (unsigned long long)(lbo >> 4) << 16 |
           (unsigned long long)(sbo >> 4) << 32 | (unsigned long long)sw128 << 62;
}

// w4_ws, the warp-specialised kernel: a producer warpgroup feeds the stages by bulk copies (cp.async.bulk, the copy
// engine) completing on mbarriers, and NWG consumer warpgroups of 64 * RT rows each (RT m64 wgmmas a k16 step
// sharing one B tile) dequantize and multiply as soon as their stage is in, each at its own pace: no block-wide
// barrier, so one warpgroup's dequantization overlaps another's wgmmas. The producer is a whole warpgroup (the
// last), so that its registers can go to the consumers (setmaxnreg); its four warps issue a stage's copies side by
// side (a warp issues its lanes' copies one at a time, and one warp issuing them all held the pipeline back). A
// stage is CPS chunks: for each, the block's weight tiles (ROWS / 16 tiles of 512 bytes, a tile's chunks contiguous,
// so one copy a tile and stage), its group metadata (one slice of ROWS words when groups are whole chunks, else one
// per 16-input slice, ROWS + 8 apart) and the activations, which w4_xperm_u16 has laid out once per call as the B
// operand's core matrices (per column block and chunk, COLS * 128 contiguous bytes: [8 core columns][COLS rows][16
// bytes], the tiles' input order, LBO = COLS * 16, SBO = 128), so one copy brings them. full[s] completes when a
// stage's bytes are in; empty[s] when every consumer warp is done with it (its wgmmas waited for).
__device__ __forceinline__ u32 smem_addr(const void *p) { return (u32)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(unsigned long long *bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(unsigned long long *bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned long long *bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// Waits until the phase of parity `parity` of `bar` has completed.
__device__ __forceinline__ void mbar_wait(unsigned long long *bar, u32 parity) {
    asm volatile("{\n.reg .pred p;\nWS_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra WS_WAIT;\n}\n" ::"r"(smem_addr(bar)),
                 "r"(parity)
                 : "memory");
}
// The same wait with acquire semantics at cluster scope: for data other blocks of the cluster stored (st_async).
__device__ __forceinline__ void mbar_wait_cluster(unsigned long long *bar, u32 parity) {
    asm volatile("{\n.reg .pred p;\nWS_WAIT_CLUSTER:\n"
                 "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra WS_WAIT_CLUSTER;\n}\n" ::"r"(smem_addr(bar)),
                 "r"(parity)
                 : "memory");
}
// Thread-block clusters: this block's rank; the two halves of a cluster barrier (arrive without ordering memory,
// wait with acquire); the address in block `rank`'s shared memory of this block's shared address `addr`; and an
// asynchronous 16-byte store into another block's shared memory (`remote`, from cluster_map) counted in bytes on
// that block's mbarrier `remote_bar` (its completion releases the data at cluster scope).
__device__ __forceinline__ int cluster_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return (int)r;
}
__device__ __forceinline__ void cluster_arrive_relaxed() {
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory"); }
__device__ __forceinline__ u32 cluster_map(u32 addr, int rank) {
    u32 remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(addr), "r"(rank));
    return remote;
}
__device__ __forceinline__ void st_async4(u32 remote, float a, float b, float c, float d, u32 remote_bar) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [%0], {%1, %2, %3, %4}, [%5];\n" ::"r"(
                     remote),
                 "f"(a), "f"(b), "f"(c), "f"(d), "r"(remote_bar)
                 : "memory");
}
// Shared-memory loads at a 32-bit shared address, volatile so that they stay after the mbarrier wait that publishes
// the data.
__device__ __forceinline__ u32 lds32(u32 addr) {
    u32 v;
    asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr));
    return v;
}
__device__ __forceinline__ void lds64(u32 addr, u32 &lo, u32 &hi) {
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(lo), "=r"(hi) : "r"(addr));
}
__device__ __forceinline__ uint4 lds128(u32 addr) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(addr));
    return v;
}
// A CUtensorMap (cuTensorMapEncodeTiled's 128 opaque bytes), passed by value as a __grid_constant__ parameter.
struct __align__(64) TensorMap {
    unsigned long long opaque[16];
};
// The box of 2-D tensor map `map` at (element x0, row x1) into shared memory `dst`, counted on `bar`.
__device__ __forceinline__ void tensor_copy_2d(void *dst, const TensorMap *map, int x0, int x1,
                                               unsigned long long *bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
        "[%4];\n" ::"r"(smem_addr(dst)),
        "l"(reinterpret_cast<unsigned long long>(map)), "r"(x0), "r"(x1), "r"(smem_addr(bar))
        : "memory");
}
// `bytes` (a multiple of 16, both addresses 16-byte aligned) from global to shared memory by the copy engine,
// counted on `bar`.
__device__ __forceinline__ void bulk_copy(void *dst, const void *src, u32 bytes, unsigned long long *bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                     smem_addr(dst)),
                 "l"(src), "r"(bytes), "r"(smem_addr(bar))
                 : "memory");
}

// NX (natural activations): no layout pass. The producer copies x [batch, k] itself, one 2-D tensor copy a chunk
// (`xmap`: boxes of 64 inputs x COLS rows, 128-byte swizzle, rows past the batch zero-filled), which is wgmma's B
// operand with the inputs in their own order (k16 step s = inputs 16s .. 16s + 15 of the chunk). The weight words
// are in the tiles' lane-contiguous order, so lane (g, t) builds step s's word from quad lane s's words of steps t / 2
// and 2 + t / 2 (one byte_perm: the bytes of its pair, see the file doc of w4a16.cu), which sit side by side: four
// 8-byte shared-memory reads a tile and chunk, conflict-free by tile_slot. Needs groups of whole chunks (one metadata
// slice) and no act-order.
template <typename T, int NWG, int RT, int COLS, int S, int CPS, int MINB, int CL, bool NX>
__device__ __forceinline__ void w4_ws(T *__restrict__ y, float *__restrict__ part, const uint4 *__restrict__ xp,
                                      const TensorMap *xmap, const uint4 *__restrict__ tiles,
                                      const u32 *__restrict__ meta, int batch, int n, int k, int group,
                                      int chunks_per_split) {
    typedef W4<T> Op;
    constexpr int ROWS = 64 * RT * NWG, MPITCH = ROWS + 8, LBO = COLS * 16;
    // A stage: CPS chunks. Activations [CPS][COLS * 128 bytes], weights [ROWS / 16 tiles][CPS chunks][512 bytes],
    // metadata [CPS][MSL slices][MPITCH] (NX: one slice, groups being whole chunks); with NX each stage starts
    // 1024-byte aligned (the swizzle's period).
    constexpr int MSL = NX ? 1 : 4;
    constexpr int WBYTES = ROWS * 32 * CPS, MBYTES = CPS * MSL * MPITCH * 4, XBYTES = COLS * 128;
    constexpr int XOFF = 0, WOFF = CPS * XBYTES, MOFF = WOFF + WBYTES;
    constexpr int STAGE = NX ? (MOFF + MBYTES + 1023) / 1024 * 1024 : MOFF + MBYTES;
    static_assert(STAGE % 128 == 0, "stage alignment");
    extern __shared__ __align__(128) unsigned char smem_raw[];
    unsigned char *smem = NX ? smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023) : smem_raw;
    unsigned long long *full = reinterpret_cast<unsigned long long *>(smem + S * STAGE), *empty = full + S;
    // With a cluster, each block owns OWN or fewer of the tile's NB 8-column blocks (block i: rank i * CL / NB) and
    // receives the other blocks' sums of them by st_async: recv [RT][CL - 1 senders][OWN][consumer threads] 16-byte
    // fragments, counted on recv_bar. Its own space: the senders may write while this block still reads its stages.
    constexpr int NB = COLS / 8, OWN = (NB + CL - 1) / CL, CONS = 128 * NWG;
    unsigned long long *recv_bar = empty + S;
    float4 *recv = reinterpret_cast<float4 *>(smem + S * STAGE + 16 * (S + 1));
    auto first_block = [](int rank) { return (rank * NB + CL - 1) / CL; };  // rank's first column block

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nchunks = k >> 6, rowb = blockIdx.y * ROWS;
    // With CL > 1 the CL blocks of a cluster along z split K evenly (each at least one chunk: k >= 64 * CL) and add
    // up through distributed shared memory; otherwise z splits K by chunks_per_split into `part`.
    const int c0 = CL > 1 ? (int)blockIdx.z * nchunks / CL : blockIdx.z * chunks_per_split;
    const int nch = CL > 1 ? ((int)blockIdx.z + 1) * nchunks / CL - c0 : min(nchunks, c0 + chunks_per_split) - c0;
    const bool one_slice = (group & 63) == 0;  // every 16-input slice of a chunk in one group
    if (threadIdx.x == 0) {
        for (int s = 0; s < S; ++s) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], 4 * NWG);
        }
        if (CL > 1) {  // the one arrival now; the phase completes when every sender's bytes are in
            mbar_init(recv_bar, 1);
            const int me = cluster_rank();
            mbar_expect_tx(recv_bar, (CL - 1) * RT * (first_block(me + 1) - first_block(me)) * CONS * 16);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    // Every thread's half of the cluster barrier that publishes recv_bar's initialisation to the other blocks; the
    // consumers wait on it before their first st_async.
    if (CL > 1) cluster_arrive_relaxed();

    // Registers: the producer warpgroup gives its registers back (setmaxnreg) and the consumers take them.
    constexpr int THREADS = 128 * (NWG + 1), PROD_REGS = 40;
    constexpr int CAP = (65536 / (THREADS * MINB) < 255 ? 65536 / (THREADS * MINB) : 255) / 8 * 8;
    constexpr int CONS_RAW = (CAP * THREADS - PROD_REGS * 128) / (128 * NWG) / 8 * 8;
    constexpr int CONS_REGS = CONS_RAW < 248 ? CONS_RAW : 248;
    if (warp >= 4 * NWG) {  // the producer warpgroup: its four warps issue a stage's copies side by side
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(PROD_REGS));
        const int pw = warp - 4 * NWG;
        const int tiles_here = min(ROWS / 16, (n >> 4) - rowb / 16), rows_here = 16 * tiles_here;
        const int slices = NX || one_slice ? 1 : 4;
        const GroupOf grp_of = group_of(group);
        const uint4 *xsrc = NX ? nullptr : xp + (size_t)blockIdx.x * nchunks * (XBYTES / 16);
        const uint4 *wsrc = tiles + (size_t)(rowb / 16) * nchunks * 32;
        for (int i = 0; i * CPS < nch; ++i) {
            const int s = i % S, c = c0 + i * CPS, cn = min(CPS, nch - i * CPS);  // chunks c .. c + cn
            if (i >= S) mbar_wait(&empty[s], ((i / S) & 1) ^ 1);
            unsigned char *base = smem + s * STAGE;
            if (pw == 0 && lane == 0)
                mbar_expect_tx(&full[s], cn * (tiles_here * 512 + slices * rows_here * 4 + XBYTES));
            // A copy is issued one lane at a time, so warp pw takes a quarter: weight tiles pw, pw + 4, ... (their cn
            // chunks are contiguous) on lanes 0 .. 7, chunk pw's activations (NX; otherwise warp 0 all cn chunks'
            // at once) on lane 8 and its metadata slices on lanes 16 .. 19.
            static_assert(CPS <= 4, "a warp per chunk");
            if (lane < 8) {
                for (int tl = pw + 4 * lane; tl < tiles_here; tl += 32)
                    bulk_copy(base + WOFF + tl * CPS * 512, wsrc + ((size_t)tl * nchunks + c) * 32, cn * 512,
                              &full[s]);
            } else if (lane == 8) {
                if (NX) {
                    if (pw < cn)
                        tensor_copy_2d(base + XOFF + pw * XBYTES, xmap, (c + pw) * 64, blockIdx.x * COLS, &full[s]);
                } else if (pw == 0) {
                    // The activations come from w4_xperm_u16, launched just before this kernel, which may still run
                    // (programmatic dependent launch): wait for it before the first copy.
                    if (i == 0) asm volatile("griddepcontrol.wait;\n" ::: "memory");
                    bulk_copy(base + XOFF, xsrc + (size_t)c * (XBYTES / 16), cn * XBYTES, &full[s]);
                }
            } else if (lane >= 16 && lane < 20) {
                const int sl = lane - 16;
                if (pw < cn && sl < slices)
                    bulk_copy(base + MOFF + (pw * MSL + sl) * MPITCH * 4,
                              meta + (size_t)grp_of((c + pw) * 64 + 16 * sl) * n + rowb, rows_here * 4, &full[s]);
            }
        }
        return;
    }
    if (CONS_REGS > CAP) asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(CONS_REGS));
    const int wgi = warp >> 2, wi = warp & 3, g = lane >> 2, t = lane & 3;
    float acc[RT][COLS / 2];
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
        for (int i = 0; i < COLS / 2; ++i) acc[r][i] = 0.f;

    // Two A buffers where the register cap leaves room: the previous chunk's wgmmas stay in flight through this
    // chunk's dequantization (the wait comes after this chunk's wgmmas, and only then are the previous A registers
    // free: the empty asm marks their last use); a stage is released once its last chunk's wgmmas are waited for.
    // The buffers alternate with the chunk's place in its stage, so that place is a constant (the stage loop is
    // unrolled) and so is every shared-memory offset but the stage's base.
    constexpr bool DB = RT * (COLS / 2 + 32) + 32 <= CONS_REGS;
    static_assert(!DB || CPS % 2 == 0, "double buffering alternates within a stage");
    // This thread's byte offsets in a stage, for chunk 0 of its warp's first tile (tile r is 4r tiles on, chunk q
    // of a stage q * 512 bytes on in the weights and q * MSL slices on in the metadata). NX: the words of steps
    // t / 2 and 2 + t / 2 (8 bytes) of quad lane `step`'s slot, for each k16 step; otherwise this lane's own slot.
    const int tile0 = wgi * RT * 4 + wi;
    // Opaque to the compiler, which would otherwise compute them again from the thread index every stage.
    u32 woff[NX ? 4 : 1];
#pragma unroll
    for (int step = 0; step < (NX ? 4 : 1); ++step) {
        woff[step] = WOFF + tile0 * CPS * 512 + (NX ? tile_slot(4 * g + step) * 16 + (t >> 1) * 8 : tile_slot(lane) * 16);
        asm("" : "+r"(woff[step]));
    }
    u32 moff = MOFF + (((NX || one_slice ? 0 : t) * MPITCH) + tile0 * 16 + g) * 4;
    asm("" : "+r"(moff));
    // This thread's load addresses in a stage (its offsets above added to the stage's address once a stage, opaque to
    // the compiler, which would otherwise add them again for every chunk: each load is then a register plus an
    // immediate).
    u32 wbase[NX ? 4 : 1], mbase;
    auto stage_bases = [&](int stage) {
        const u32 sa = smem_addr(smem) + stage * STAGE;
#pragma unroll
        for (int step = 0; step < (NX ? 4 : 1); ++step) {
            wbase[step] = sa + woff[step];
            asm("" : "+r"(wbase[step]));
        }
        mbase = sa + moff;
        asm("" : "+r"(mbase));
    };
    // Chunk q's weight words and metadata of the stage whose bases are set, read from shared memory one chunk ahead,
    // so the loads' latency hides behind the previous chunk's wgmmas. NX: fw[r] holds each step's first word, fw2[r]
    // its second.
    uint4 fw[RT], fw2[RT];
    u32 fm0[RT], fm1[RT];
    auto fetch = [&](int q) {
#pragma unroll
        for (int r = 0; r < RT; ++r) {
            const int wq = (r * 4 * CPS + q) * 512;
            if (NX) {
                u32 lo[4], hi[4];
#pragma unroll
                for (int step = 0; step < 4; ++step) lds64(wbase[step] + wq, lo[step], hi[step]);
                fw[r] = make_uint4(lo[0], lo[1], lo[2], lo[3]);
                fw2[r] = make_uint4(hi[0], hi[1], hi[2], hi[3]);
            } else {
                fw[r] = lds128(wbase[0] + wq);
            }
            const u32 ms = mbase + (q * MSL * MPITCH + r * 64) * 4;
            fm0[r] = lds32(ms);
            fm1[r] = lds32(ms + 32);
        }
    };
    // The wgmma B descriptors of a stage: chunk q's k16 step j adds (q * XBYTES + j * step bytes) / 16
    // (the descriptor's address field, which no offset inside shared memory overflows).
    const unsigned long long desc0 =
        NX ? wg_desc(smem + XOFF, 16, 1024, true) : wg_desc(smem + XOFF, LBO, 128);
    constexpr int DSTEP = NX ? 32 : 2 * LBO;
    // NX: the bytes of lane t's input pair in quad lane s's words (even t: bytes 0 and 2, odd t: 1 and 3).
    const u32 pair_bytes = (t & 1) ? 0x7351u : 0x6240u;
    // Chunk q of the stage whose descriptors start at `dstage`: dequantize what fetch brought into `a` and issue its
    // wgmmas (one commit group).
    auto multiply = [&](unsigned long long dstage, int q, u32 (&a)[RT][4][4]) {
#pragma unroll
        for (int r = 0; r < RT; ++r)
#pragma unroll
            for (int j = 0; j < 4; ++j)
                Op::dequant(NX ? __byte_perm(elem(fw[r], j), elem(fw2[r], j), pair_bytes) : word(fw[r], j), fm0[r],
                            fm1[r], a[r][j]);
#pragma unroll
        for (int r = 0; r < RT; ++r) wg_pin(acc[r]);
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < RT; ++r) wg_mma<T, COLS>(acc[r], a[r][j], dstage + (q * XBYTES + j * DSTEP) / 16);
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int r = 0; r < RT; ++r) wg_pin(acc[r]);
    };
    auto release = [&](int s) {
        __syncwarp();
        if (lane == 0) mbar_arrive(&empty[s]);
    };
    u32 a[2][RT][4][4] = {};
    int s = 0;
    u32 parity = 0;
    mbar_wait(&full[0], 0);
    stage_bases(0);
    fetch(0);
    for (int i0 = 0;; i0 += CPS) {  // stage s: chunks i0 .. i0 + CPS - 1 (the launcher gives every split one)
        bool done = false;
        const unsigned long long dstage = desc0 + (unsigned long long)(s * STAGE / 16);
        const int sn = s + 1 == S ? 0 : s + 1, sp = s == 0 ? S - 1 : s - 1;
        const u32 parity_n = sn == 0 ? parity ^ 1 : parity;
#pragma unroll
        for (int q = 0; q < CPS; ++q) {
            const int i = i0 + q;
            u32(&cur)[RT][4][4] = a[DB ? q & 1 : 0];
            if (!DB) {
                asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
                if (q == 0 && i > 0) release(sp);
            }
            multiply(dstage, q, cur);
            if (i + 1 < nch) {
                if (q + 1 < CPS) {
                    fetch(q + 1);
                } else {
                    mbar_wait(&full[sn], parity_n);
                    stage_bases(sn);
                    fetch(0);
                }
            }
            if (DB) {
                asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
                wg_keep(a[(q + 1) & 1]);
                if (q == 0 && i > 0) release(sp);
            }
            // The last chunk, of a full stage or not: every exit waits for the wgmmas in flight first (leaving with
            // any in flight makes ptxas serialize them all).
            if (i + 1 >= nch) {
                asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
                for (int r = 0; r < RT; ++r) wg_pin(acc[r]);
                done = true;
                break;
            }
        }
        if (done) break;
        s = sn;
        parity = parity_n;
    }

    const int colb = blockIdx.x * COLS;
    if constexpr (CL > 1) {
        // The other ranks' column blocks go to their owners by st_async (a fragment of 4 sums, rows g and g + 8 by
        // columns 2t and 2t + 1, in 16 bytes), once every block's recv_bar is initialised. The owner adds the
        // cluster's fragments in rank order (its own from registers).
        static_assert(NB >= CL, "a column block for every rank");
        const int me = cluster_rank();
        cluster_wait();
        const u32 recv_addr = smem_addr(recv), bar_addr = smem_addr(recv_bar);
        auto slot_of = [](int src, int owner) { return src < owner ? src : src - 1; };  // sender's place
#pragma unroll
        for (int r = 0; r < RT; ++r)
#pragma unroll
            for (int i = 0; i < NB; ++i) {
                const int owner = i * CL / NB;
                if (owner == me) continue;
                const u32 off =
                    (((r * (CL - 1) + slot_of(me, owner)) * OWN + i - first_block(owner)) * CONS + threadIdx.x) * 16;
                st_async4(cluster_map(recv_addr + off, owner), acc[r][4 * i], acc[r][4 * i + 1], acc[r][4 * i + 2],
                          acc[r][4 * i + 3], cluster_map(bar_addr, owner));
            }
        // The owner's column blocks go out through shared memory (the idle stages, once every consumer is done
        // with them): [8 * OWN][ROWS + 8] of T, then each thread writes 4 consecutive rows of a column (coalesced;
        // the fragments' own stores would be 2-byte scatters).
        constexpr int OP = ROWS + 8;
        static_assert(8 * OWN * OP * (int)sizeof(T) <= S * STAGE, "output tile over the stages");
        T *tile = reinterpret_cast<T *>(smem);
        asm volatile("bar.sync 1, %0;\n" ::"n"(CONS) : "memory");
        mbar_wait_cluster(recv_bar, 0);
        const int mine = first_block(me), cols_mine = 8 * (first_block(me + 1) - mine);
#pragma unroll
        for (int r = 0; r < RT; ++r) {
            const int row = ((wgi * RT + r) * 4 + wi) * 16 + g;
#pragma unroll
            for (int i = 0; i < NB; ++i) {
                if (i * CL / NB != me) continue;
                float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
                for (int src = 0; src < CL; ++src) {
                    const float4 v =
                        src == me ? make_float4(acc[r][4 * i], acc[r][4 * i + 1], acc[r][4 * i + 2], acc[r][4 * i + 3])
                                  : recv[((r * (CL - 1) + slot_of(src, me)) * OWN + i - mine) * CONS + threadIdx.x];
                    sum.x += v.x;
                    sum.y += v.y;
                    sum.z += v.z;
                    sum.w += v.w;
                }
                const int col = 8 * (i - mine) + 2 * t;
                tile[col * OP + row] = Op::from_f32(sum.x);
                tile[(col + 1) * OP + row] = Op::from_f32(sum.y);
                tile[col * OP + row + 8] = Op::from_f32(sum.z);
                tile[(col + 1) * OP + row + 8] = Op::from_f32(sum.w);
            }
        }
        asm volatile("bar.sync 1, %0;\n" ::"n"(CONS) : "memory");
        for (int p = threadIdx.x; p < cols_mine * ROWS / 4; p += CONS) {
            const int col = p / (ROWS / 4), row = 4 * (p % (ROWS / 4));
            const int cc = colb + 8 * mine + col, rr = rowb + row;  // n % 16 == 0: 4 rows are in or out together
            if (cc < batch && rr < n)
                *reinterpret_cast<uint2 *>(y + (size_t)cc * n + rr) =
                    *reinterpret_cast<const uint2 *>(&tile[col * OP + row]);
        }
        return;
    }
    // Without a cluster the sums leave through shared memory (the idle stages, once every consumer is done with
    // them): [COLS][ROWS + 4] f32, then each thread writes 4 consecutive rows of an output column (coalesced; the
    // fragments' own stores would be 2-byte scatters), or its f32 partial sums when z splits K.
    constexpr int RP = ROWS + 4;
    static_assert(COLS * RP * 4 <= S * STAGE, "output tile over the stages");
    float *red = reinterpret_cast<float *>(smem);
    asm volatile("bar.sync 1, %0;\n" ::"n"(128 * NWG) : "memory");
#pragma unroll
    for (int r = 0; r < RT; ++r) {
        const int row = ((wgi * RT + r) * 4 + wi) * 16 + g;
#pragma unroll
        for (int i = 0; i < COLS / 8; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) red[(8 * i + 2 * t + (e & 1)) * RP + row + 8 * (e >> 1)] = acc[r][4 * i + e];
    }
    asm volatile("bar.sync 1, %0;\n" ::"n"(128 * NWG) : "memory");
    float *out = part + (size_t)blockIdx.z * batch * n;
    constexpr int PIECES = COLS * ROWS / 4;  // 4 rows each
    for (int p = threadIdx.x; p < PIECES; p += 128 * NWG) {
        const int col = p / (ROWS / 4), row = 4 * (p % (ROWS / 4));
        const float4 sum = *reinterpret_cast<const float4 *>(&red[col * RP + row]);
        const int cc = colb + col, rr = rowb + row;  // n % 16 == 0: 4 rows are in or out together
        if (cc >= batch || rr >= n) continue;
        if (gridDim.z > 1) {
            *reinterpret_cast<float4 *>(out + (size_t)cc * n + rr) = sum;
        } else {
            const T v[4] = {Op::from_f32(sum.x), Op::from_f32(sum.y), Op::from_f32(sum.z), Op::from_f32(sum.w)};
            *reinterpret_cast<uint2 *>(y + (size_t)cc * n + rr) = *reinterpret_cast<const uint2 *>(v);
        }
    }
}

// w4_ws_<dtype>_<NWG>_<RT>_<COLS>_<S>_<CPS>_<MINB>: NWG consumer warpgroups of 64 * RT rows and a producer
// warpgroup, S stages of CPS chunks.
#define W4_WS(TY, NAME, NWG, RT, COLS, S, CPS, MINB)                                                             \
    extern "C" __global__ void __launch_bounds__(128 * (NWG + 1), MINB)                                          \
        w4_ws_##NAME##_##NWG##_##RT##_##COLS##_##S##_##CPS##_##MINB(                                             \
            TY *y, float *part, const uint4 *xp, const uint4 *tiles, const u32 *meta, int batch, int n, int k,   \
            int group, int chunks_per_split) {                                                                   \
        w4_ws<TY, NWG, RT, COLS, S, CPS, MINB, 1, false>(y, part, xp, nullptr, tiles, meta, batch, n, k, group,  \
                                                         chunks_per_split);                                      \
    }
// ..._c<CL>: clusters of CL blocks along z split K (grid.z = CL), reducing through distributed shared memory.
#define W4_WSC(TY, NAME, NWG, RT, COLS, S, CPS, MINB, CL)                                                        \
    extern "C" __global__ void __cluster_dims__(1, 1, CL) __launch_bounds__(128 * (NWG + 1), MINB)               \
        w4_ws_##NAME##_##NWG##_##RT##_##COLS##_##S##_##CPS##_##MINB##_c##CL(                                     \
            TY *y, float *part, const uint4 *xp, const uint4 *tiles, const u32 *meta, int batch, int n, int k,   \
            int group, int chunks_per_split) {                                                                   \
        w4_ws<TY, NWG, RT, COLS, S, CPS, MINB, CL, false>(y, part, xp, nullptr, tiles, meta, batch, n, k, group, \
                                                          chunks_per_split);                                     \
    }
// ..._x: natural activations (NX above) through the tensor map `xmap` of x; CL 1 or more (a cluster of one is an
// ordinary launch).
#define W4_WSX(TY, NAME, NWG, RT, COLS, S, CPS, MINB, CL)                                                        \
    extern "C" __global__ void __cluster_dims__(1, 1, CL) __launch_bounds__(128 * (NWG + 1), MINB)               \
        w4_ws_##NAME##_##NWG##_##RT##_##COLS##_##S##_##CPS##_##MINB##_c##CL##_x(                                 \
            TY *y, float *part, const __grid_constant__ TensorMap xmap, const uint4 *tiles, const u32 *meta,     \
            int batch, int n, int k, int group, int chunks_per_split) {                                          \
        w4_ws<TY, NWG, RT, COLS, S, CPS, MINB, CL, true>(y, part, nullptr, &xmap, tiles, meta, batch, n, k, group, \
                                                         chunks_per_split);                                      \
    }
// The activations of w4_ws: xp [batch / cols (rounded up)][k / 64][8][cols][8 elements] = x [batch, k] (16-bit
// elements of either dtype; act-order: stored input j is x[b, perm[j]]) in the B core-matrix layout above, zero
// past the batch. One thread a 16-byte piece, consecutive threads along a row's chunk (coalesced reads).
extern "C" __global__ void w4_xperm_u16(uint4 *__restrict__ xp, const unsigned short *__restrict__ x,
                                        const u32 *__restrict__ perm, int has_perm, int batch, int k, int cols) {
    // The product kernel launched after this one may start now (it waits for this grid before reading xp).
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    const int nchunks = k >> 6;
    const long long total = (long long)((batch + cols - 1) / cols) * cols * nchunks * 8;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int kk = (int)(i & 7), c = (int)((i >> 3) % nchunks), col = (int)((i >> 3) / nchunks);
        u32 v[4] = {0, 0, 0, 0};
        if (col < batch) {
            const unsigned short *row = x + (size_t)col * k;
#pragma unroll
            for (int m = 0; m < 4; ++m) {
                const int j = c * 64 + 2 * (kk + 8 * m);
                v[m] = has_perm ? (u32)row[perm[j]] | (u32)row[perm[j + 1]] << 16
                                : *reinterpret_cast<const u32 *>(row + j);
            }
        }
        xp[(((size_t)(col / cols) * nchunks + c) * 8 + kk) * cols + col % cols] = make_uint4(v[0], v[1], v[2], v[3]);
    }
}
#endif

// The one product kernel of this compile: -DW4_INSTANCE=W4_MM(__nv_bfloat16,bf16,1,1,16,1,1,2,3) and the like, from
// the launcher's configuration (kernels/src/cuda/w4a16.rs, MmConfig::kernel). Without it, only the helper
// kernels: NVRTC takes about a second for either, against ~23 s for every configuration at once.
#ifdef W4_INSTANCE
W4_INSTANCE
#endif
