//! w4a16.cu against its CPU reference (kernels/src/cpu/w4a16.rs): weights packed in each on-disk layout (AutoAWQ
//! GEMM, GPTQ v1 with act-order, MatMulNBits), unpacked, repacked into the device tiles; products against the f64
//! reference on the same 16-bit activations, `dequantize` bit for bit against w4a16_tiles::dequantize.

use olive_kernels::cpu::w4a16::{
    unpack_awq_gemm, unpack_gptq_v1, unpack_matmul_nbits, w4a16_ref, W4Levels,
};
use olive_kernels::cpu::w4a16_tiles::{dequantize as dequantize_ref, W4Tiles};
use olive_kernels::cuda::float::Half;
use olive_kernels::cuda::rmsnorm::{rmsnorm, InputNorm};
use olive_kernels::cuda::silu_mul::silu_mul;
use olive_kernels::cuda::w4a16::{
    dequantize, w4a16, w4a16_add, w4a16_normed, w4a16_normed_swiglu, w4a16_with, MmConfig,
    W4Weight, CONFIGS,
};
use olive_kernels::cuda::{bf16, f16, test_gpu, Gpu};

use super::common::{random, rel_error};
use super::floats::{download_f32, poisoned, upload_as};

/// fp16: the weight is rounded twice (scale to fp16, (q − z)·s to fp16) and the output once, 2^-12 relative
/// each, with fp32 accumulation; measured errors sit near 3e-4.
const F16_REL: f64 = 2e-3;
/// bf16: the same three roundings with an 8-bit mantissa (2^-9 each); measured near 2.5e-3.
const BF16_REL: f64 = 1e-2;

/// AutoAWQ's nibble order within an int32.
const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

struct Rng(u64);

impl Rng {
    fn below(&mut self, m: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 32) % u64::from(m)) as u32
    }
}

/// Random levels, zero points 1..=15 (every layout holds them), scales 0.005..0.025, optional act-order g_idx.
fn levels(n: usize, k: usize, gs: usize, seed: u64, act_order: bool) -> W4Levels {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let groups = k.div_ceil(gs);
    let scales = random(n * groups, seed + 1, 1.0)
        .iter()
        .map(|v| 0.015 + 0.01 * v)
        .collect();
    let g_idx = act_order.then(|| {
        let mut order: Vec<usize> = (0..k).collect();
        for i in (1..k).rev() {
            order.swap(i, rng.below(i as u32 + 1) as usize);
        }
        let mut g = vec![0u32; k];
        for (r, &i) in order.iter().enumerate() {
            g[i] = (r / gs) as u32;
        }
        g
    });
    W4Levels {
        n,
        k,
        group_size: gs,
        q: (0..n * k).map(|_| rng.below(16) as u8).collect(),
        scales,
        zeros: (0..n * groups).map(|_| 1 + rng.below(15) as u8).collect(),
        g_idx,
    }
}

fn nibbles(values: impl Iterator<Item = u8>) -> i32 {
    values
        .enumerate()
        .fold(0u32, |w, (i, v)| w | u32::from(v) << (4 * i)) as i32
}

fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| a[r * cols + c]))
        .collect()
}

/// `l` written as AutoAWQ GEMM and read back.
fn via_awq(l: &W4Levels) -> W4Levels {
    let (n, k, g) = (l.n, l.k, l.groups());
    let qweight: Vec<i32> = (0..k * n / 8)
        .map(|idx| {
            let (i, c) = (idx / (n / 8), idx % (n / 8));
            nibbles(AWQ_ORDER.iter().map(|&col| l.q[(8 * c + col) * k + i]))
        })
        .collect();
    let qzeros: Vec<i32> = (0..g * n / 8)
        .map(|idx| {
            let (gi, c) = (idx / (n / 8), idx % (n / 8));
            nibbles(AWQ_ORDER.iter().map(|&col| l.zeros[(8 * c + col) * g + gi]))
        })
        .collect();
    let scales = transpose(&l.scales, n, g);
    unpack_awq_gemm(&qweight, &qzeros, &scales, k, n, l.group_size).unwrap()
}

/// `l` written as GPTQ v1 (zero − 1, g_idx) and read back.
fn via_gptq(l: &W4Levels) -> W4Levels {
    let (n, k, g) = (l.n, l.k, l.groups());
    let qweight: Vec<i32> = (0..k / 8 * n)
        .map(|idx| {
            let (r, o) = (idx / n, idx % n);
            nibbles((0..8).map(|e| l.q[o * k + 8 * r + e]))
        })
        .collect();
    let qzeros: Vec<i32> = (0..g * n / 8)
        .map(|idx| {
            let (gi, c) = (idx / (n / 8), idx % (n / 8));
            nibbles((0..8).map(|e| l.zeros[(8 * c + e) * g + gi] - 1))
        })
        .collect();
    let scales = transpose(&l.scales, n, g);
    let g_idx: Vec<i32> = (0..k).map(|i| l.group_of(i) as i32).collect();
    unpack_gptq_v1(&qweight, &qzeros, &scales, Some(&g_idx), k, n, l.group_size).unwrap()
}

/// `l` written as MatMulNBits (block = group) and read back.
fn via_matmul_nbits(l: &W4Levels) -> W4Levels {
    let (n, k, bs, nb) = (l.n, l.k, l.group_size, l.groups());
    let mut b = vec![0u8; n * nb * bs / 2];
    for o in 0..n {
        for i in 0..k {
            b[o * nb * bs / 2 + i / 2] |= l.q[o * k + i] << (4 * (i % 2));
        }
    }
    let zc = nb.div_ceil(2);
    let mut zp = vec![0u8; n * zc];
    for o in 0..n {
        for blk in 0..nb {
            zp[o * zc + blk / 2] |= l.zeros[o * nb + blk] << (4 * (blk % 2));
        }
    }
    unpack_matmul_nbits(&b, &l.scales, Some(&zp), k, n, bs).unwrap()
}

/// Activations rounded to `T`, as f32 for the reference and as `T` for the GPU.
fn activations<T: Half>(batch: usize, k: usize, seed: u64) -> (Vec<f32>, Vec<T>) {
    let t: Vec<T> = random(batch * k, seed, 1.0)
        .iter()
        .map(|&v| T::from_f32(v))
        .collect();
    (t.iter().map(|v| v.to_f32()).collect(), t)
}

/// Row scales of the folded norm's inputs (about 2^-9 to 2^10: RMSNorm factors from about 2^10 down to 2^-9), so each
/// row (a batch column of the kernel) has its own power of two and rest (prelude.cuh's rms_split), within fp16's range.
const NORM_ROW_SCALES: [f32; 7] = [1.0, 0.013, 37.0, 0.41, 900.0, 0.0021, 5.5];

/// [`activations`] with row b scaled by `NORM_ROW_SCALES[b % 7]`, rounded to `T` once.
fn norm_inputs<T: Half>(batch: usize, k: usize, seed: u64) -> Vec<T> {
    random(batch * k, seed, 1.0)
        .chunks(k)
        .enumerate()
        .flat_map(|(b, row)| {
            let scale = NORM_ROW_SCALES[b % NORM_ROW_SCALES.len()];
            row.iter().map(move |&v| T::from_f32(v * scale))
        })
        .collect()
}

/// The GPU product of `batch` rows (config `None` = the launcher's pick), poisoned with NaN before.
fn gpu_product<T: Half>(
    gpu: &Gpu,
    w: &W4Weight<T>,
    x: &[T],
    batch: usize,
    config: Option<MmConfig>,
) -> Vec<f32> {
    let xd = gpu.upload(x).unwrap();
    let mut y = poisoned::<T>(gpu, batch * w.n());
    match config {
        None => w4a16(gpu, &xd, batch, w, &mut y).unwrap(),
        Some(c) => w4a16_with(gpu, c, &xd, batch, w, &mut y).unwrap(),
    }
    download_f32(gpu, &y)
}

fn check_layouts<T: Half>(gpu: &Gpu, tol: f64) {
    // 17 row tiles (ragged against every block), 10 chunks of 64 inputs.
    let (n, k) = (272, 640);
    let cases = [
        ("awq g128", via_awq(&levels(n, k, 128, 11, false))),
        ("gptq act-order g64", via_gptq(&levels(n, k, 64, 12, true))),
        (
            "matmul_nbits block32",
            via_matmul_nbits(&levels(n, k, 32, 13, false)),
        ),
        // Group sizes that are no power of two: a division for the group, with the sums scaled after the mma
        // (whole chunks, 320) and inside it (160).
        ("awq g320", via_awq(&levels(n, k, 320, 14, false))),
        ("awq g160", via_awq(&levels(n, k, 160, 15, false))),
    ];
    for (name, l) in &cases {
        assert_eq!(l.g_idx.is_some(), name.contains("act-order"), "{name}");
        let w = W4Weight::<T>::upload(gpu, &W4Tiles::from_levels(l).unwrap()).unwrap();
        for batch in [1, 5, 16, 33, 64, 128, 130] {
            let (xf, xt) = activations::<T>(batch, k, batch as u64);
            let want = w4a16_ref(&xf, batch, l);
            let err = rel_error(&gpu_product(gpu, &w, &xt, batch, None), &want);
            eprintln!(
                "w4a16 {} {name} batch {batch}: rel error {err:.2e}",
                T::SUFFIX
            );
            assert!(
                err < tol,
                "{} {name} batch {batch}: rel error {err} over {tol}",
                T::SUFFIX
            );
            // The warp-specialised kernels gather act-order inputs and read per-slice metadata themselves; those
            // reading x in its own order take only whole-chunk groups without act-order, and refuse the rest.
            for c in CONFIGS
                .into_iter()
                .filter(|c| c.producer && c.runs_on(gpu.arch()))
            {
                if !c.accepts(&w) {
                    let mut y = gpu.alloc::<T>(batch * n).unwrap();
                    let xd = gpu.upload(&xt).unwrap();
                    let e = w4a16_with(gpu, c, &xd, batch, &w, &mut y).unwrap_err();
                    assert!(
                        e.to_string().contains("whole 64-input chunks"),
                        "{name} {c:?}: {e}"
                    );
                    continue;
                }
                let err = rel_error(&gpu_product(gpu, &w, &xt, batch, Some(c)), &want);
                assert!(
                    err < tol,
                    "{} {name} {c:?} batch {batch}: rel error {err} over {tol}",
                    T::SUFFIX
                );
            }
        }
    }
}

#[test]
fn products_match_the_reference_for_every_layout_and_batch() {
    let Some(gpu) = test_gpu("gpu::w4a16::products_match_the_reference_for_every_layout_and_batch")
    else {
        return;
    };
    check_layouts::<f16>(&gpu, F16_REL);
    check_layouts::<bf16>(&gpu, BF16_REL);
}

/// `w4a16_add`: y + the product, through the decode kernels' own write-out (batch 1, 5, 16) and through a temporary
/// for the larger batches' kernels (64, 130), act-order weights (gathered inputs) included.
fn check_add<T: Half>(gpu: &Gpu, tol: f64) {
    let (n, k) = (272, 640);
    let cases = [
        ("awq g128", via_awq(&levels(n, k, 128, 21, false))),
        ("gptq act-order g64", via_gptq(&levels(n, k, 64, 22, true))),
    ];
    for (name, l) in &cases {
        let w = W4Weight::<T>::upload(gpu, &W4Tiles::from_levels(l).unwrap()).unwrap();
        for batch in [1, 5, 16, 64, 130] {
            let (xf, xt) = activations::<T>(batch, k, 40 + batch as u64);
            let (y0f, y0t) = activations::<T>(batch, n, 90 + batch as u64);
            let want: Vec<f32> = w4a16_ref(&xf, batch, l)
                .iter()
                .zip(&y0f)
                .map(|(p, y)| p + y)
                .collect();
            let mut y = gpu.upload(&y0t).unwrap();
            w4a16_add(gpu, &gpu.upload(&xt).unwrap(), batch, &w, &mut y).unwrap();
            let got = download_f32(gpu, &y);
            let err = rel_error(&got, &want);
            assert!(
                err < tol,
                "{} {name} batch {batch}: w4a16_add rel error {err} over {tol}",
                T::SUFFIX
            );
        }
    }
}

#[test]
fn adding_products_matches_the_reference() {
    let Some(gpu) = test_gpu("gpu::w4a16::adding_products_matches_the_reference") else {
        return;
    };
    check_add::<f16>(&gpu, F16_REL);
    check_add::<bf16>(&gpu, BF16_REL);
}

/// The weights the folded decode kernels are checked on: AutoAWQ groups of 128 (folded) and GPTQ act-order groups
/// of 64 (declined: act-order gathers x first), levels from `seed` and `seed + 1`.
fn fold_cases(n: usize, k: usize, seed: u64) -> [(&'static str, W4Levels, bool); 2] {
    [
        ("awq g128", via_awq(&levels(n, k, 128, seed, false)), true),
        (
            "gptq act-order g64",
            via_gptq(&levels(n, k, 64, seed + 1, true)),
            false,
        ),
    ]
}

/// `w4a16_normed` (RMSNorm folded into the decode kernel) against the rmsnorm kernel followed by `w4a16`: the same
/// normalized inputs but rounded at another point (w · (x · p), p a power of two, the rest of the factor applied to
/// the sums: an input may round to its neighbour), so within the product's tolerance; rows of scales 2^-9 to 2^10
/// ([`norm_inputs`]), so that a column's power of two or rest applied to another's shows. Act-order weights and
/// batches past the decode kernels are declined, nothing launched.
fn check_normed<T: Half>(gpu: &Gpu, tol: f64) {
    let (n, k) = (272, 640);
    let (norm_w, _) = upload_as::<T>(gpu, &random(k, 5, 1.0));
    let eps = 1e-5;
    for (name, l, fuses) in &fold_cases(n, k, 21) {
        let w = W4Weight::<T>::upload(gpu, &W4Tiles::from_levels(l).unwrap()).unwrap();
        for batch in [1, 5, 16, 64] {
            let xt = norm_inputs::<T>(batch, k, 60 + batch as u64);
            let x = gpu.upload(&xt).unwrap();
            let mut normed = gpu.alloc::<T>(batch * k).unwrap();
            rmsnorm(gpu, &x, &norm_w, eps, &mut normed).unwrap();
            let mut want = gpu.alloc::<T>(batch * n).unwrap();
            w4a16(gpu, &normed, batch, &w, &mut want).unwrap();
            let mut y = poisoned::<T>(gpu, batch * n);
            let norm = InputNorm {
                weight: &norm_w,
                eps,
            };
            let fused = w4a16_normed(gpu, &x, norm, batch, &w, &mut y).unwrap();
            if !fused {
                assert!(
                    !fuses || batch > 16,
                    "{} {name} batch {batch}: declined",
                    T::SUFFIX
                );
                assert!(
                    download_f32(gpu, &y).iter().all(|v| v.is_nan()),
                    "declined but wrote y"
                );
                continue;
            }
            assert!(
                *fuses,
                "{} {name} batch {batch}: fused an act-order weight",
                T::SUFFIX
            );
            let err = rel_error(&download_f32(gpu, &y), &download_f32(gpu, &want));
            assert!(
                err < tol,
                "{} {name} batch {batch}: w4a16_normed rel error {err} over {tol}",
                T::SUFFIX
            );
        }
    }
}

#[test]
fn normed_products_match_rmsnorm_then_the_product() {
    let Some(gpu) = test_gpu("gpu::w4a16::normed_products_match_rmsnorm_then_the_product") else {
        return;
    };
    check_normed::<f16>(&gpu, F16_REL);
    check_normed::<bf16>(&gpu, BF16_REL);
}

/// The gate_up projection's decode kernel with the norm before it and SwiGLU's gating after it, against rmsnorm,
/// the product and silu_mul one after the other, on [`norm_inputs`]; declined (act untouched) for act-order, fused at
/// least up to batch 8.
fn check_normed_swiglu<T: Half>(gpu: &Gpu, tol: f64) {
    let (half, k) = (272, 640);
    let n = 2 * half;
    let (norm_w, _) = upload_as::<T>(gpu, &random(k, 6, 1.0));
    let eps = 1e-5;
    for (name, l, fuses) in &fold_cases(n, k, 41) {
        let w = W4Weight::<T>::upload(gpu, &W4Tiles::from_levels(l).unwrap()).unwrap();
        for batch in [1, 5, 16, 64] {
            let what = format!("{} {name} batch {batch}", T::SUFFIX);
            let xt = norm_inputs::<T>(batch, k, 70 + batch as u64);
            let x = gpu.upload(&xt).unwrap();
            let mut normed = gpu.alloc::<T>(batch * k).unwrap();
            rmsnorm(gpu, &x, &norm_w, eps, &mut normed).unwrap();
            let mut gate_up = gpu.alloc::<T>(batch * n).unwrap();
            w4a16(gpu, &normed, batch, &w, &mut gate_up).unwrap();
            let mut want = gpu.alloc::<T>(batch * half).unwrap();
            silu_mul(gpu, &gate_up, half, &mut want).unwrap();
            let mut act = poisoned::<T>(gpu, batch * half);
            let norm = InputNorm {
                weight: &norm_w,
                eps,
            };
            let fused = w4a16_normed_swiglu(gpu, &x, norm, batch, &w, &mut act).unwrap();
            if !fused {
                assert!(!fuses || batch > 8, "{what}: declined");
                assert!(
                    download_f32(gpu, &act).iter().all(|v| v.is_nan()),
                    "{what}: declined but wrote act"
                );
                continue;
            }
            assert!(*fuses, "{what}: fused an act-order weight");
            let err = rel_error(&download_f32(gpu, &act), &download_f32(gpu, &want));
            assert!(
                err < tol,
                "{what}: w4a16_normed_swiglu rel error {err} over {tol}"
            );
        }
    }
}

#[test]
fn normed_swiglu_products_match_rmsnorm_the_product_then_silu_mul() {
    let Some(gpu) =
        test_gpu("gpu::w4a16::normed_swiglu_products_match_rmsnorm_the_product_then_silu_mul")
    else {
        return;
    };
    check_normed_swiglu::<f16>(&gpu, F16_REL);
    check_normed_swiglu::<bf16>(&gpu, BF16_REL);
}

fn check_configs<T: Half>(gpu: &Gpu, tol: f64) {
    // 16 chunks, every configuration; then 101 for the split-K kernels at small batches (with 16 warps a row tile
    // and 2 chunks in flight, 5 · 16 chunks and more take their unchecked ring passes before the checked ones).
    let split_k = |c: &MmConfig| c.stages == 0 && !c.producer;
    for (n, k, gs, batches, only_split_k) in [
        (272, 1024, 128, &[1, 9, 64, 128][..], false),
        (48, 6464, 64, &[1, 9][..], true),
    ] {
        let l = levels(n, k, gs, 21, false);
        let w = W4Weight::<T>::upload(gpu, &W4Tiles::from_levels(&l).unwrap()).unwrap();
        for &batch in batches {
            let (xf, xt) = activations::<T>(batch, k, 100 + batch as u64);
            let want = w4a16_ref(&xf, batch, &l);
            for c in CONFIGS
                .into_iter()
                .filter(|c| c.runs_on(gpu.arch()) && (split_k(c) || !only_split_k))
            {
                let err = rel_error(&gpu_product(gpu, &w, &xt, batch, Some(c)), &want);
                assert!(
                    err < tol,
                    "{} {c:?} {n}x{k} batch {batch}: rel error {err} over {tol}",
                    T::SUFFIX
                );
            }
        }
    }
    let n = 272;
    // One chunk a block (k = 64 · cluster, the fewest inputs a cluster split takes): a stage that is the whole run,
    // its first chunk also its last.
    for c in CONFIGS
        .into_iter()
        .filter(|c| c.producer && c.runs_on(gpu.arch()))
    {
        let k = 64 * c.cluster as usize;
        let l = levels(n, k, 64, 22, false);
        let w = W4Weight::<T>::upload(gpu, &W4Tiles::from_levels(&l).unwrap()).unwrap();
        let (xf, xt) = activations::<T>(64, k, 7);
        let err = rel_error(
            &gpu_product(gpu, &w, &xt, 64, Some(c)),
            &w4a16_ref(&xf, 64, &l),
        );
        assert!(
            err < tol,
            "{} {c:?} k {k}: rel error {err} over {tol}",
            T::SUFFIX
        );
    }
}

#[test]
fn every_compiled_configuration_matches_the_reference() {
    let Some(gpu) = test_gpu("gpu::w4a16::every_compiled_configuration_matches_the_reference")
    else {
        return;
    };
    check_configs::<f16>(&gpu, F16_REL);
    check_configs::<bf16>(&gpu, BF16_REL);
}

/// The warp-specialised kernels over enough inputs that every block refills each of its stages at least once (the
/// steady state of real shapes; the small shapes above run a split's chunks in one pass over the stages): 64 chunks
/// and 27 row blocks of 128, so the K splits leave every block 8 chunks or more (3 stages of 2 or 4 of 2 refill at
/// 8), and 16 or more where a stage holds 4.
fn check_refills<T: Half>(gpu: &Gpu, tol: f64) {
    let (n, k) = (3456, 4096);
    let l = levels(n, k, 128, 23, false);
    let w = W4Weight::<T>::upload(gpu, &W4Tiles::from_levels(&l).unwrap()).unwrap();
    for batch in [64, 100] {
        let (xf, xt) = activations::<T>(batch, k, 200 + batch as u64);
        let want = w4a16_ref(&xf, batch, &l);
        for c in CONFIGS
            .into_iter()
            .filter(|c| c.producer && c.runs_on(gpu.arch()))
        {
            let err = rel_error(&gpu_product(gpu, &w, &xt, batch, Some(c)), &want);
            assert!(
                err < tol,
                "{} {c:?} batch {batch}: rel error {err} over {tol}",
                T::SUFFIX
            );
        }
    }
}

#[test]
fn every_wgmma_configuration_matches_the_reference_with_its_stages_refilled() {
    let Some(gpu) = test_gpu(
        "gpu::w4a16::every_wgmma_configuration_matches_the_reference_with_its_stages_refilled",
    ) else {
        return;
    };
    check_refills::<f16>(&gpu, F16_REL);
    check_refills::<bf16>(&gpu, BF16_REL);
}

fn check_dequantize<T: Half>(gpu: &Gpu) {
    for l in [
        via_awq(&levels(48, 256, 128, 31, false)),
        via_gptq(&levels(48, 256, 32, 32, true)),
    ] {
        let tiles = W4Tiles::from_levels(&l).unwrap();
        let w = W4Weight::<T>::upload(gpu, &tiles).unwrap();
        let got: Vec<T> = gpu.download(&dequantize(gpu, &w).unwrap()).unwrap();
        let want = dequantize_ref::<T>(&tiles);
        let bad = got
            .iter()
            .zip(&want)
            .position(|(g, r)| g.to_bits() != r.to_bits());
        assert_eq!(bad, None, "{}: first differing element", T::SUFFIX);
    }
}

#[test]
fn dequantize_is_bit_identical_to_the_cpu_reference() {
    let Some(gpu) = test_gpu("gpu::w4a16::dequantize_is_bit_identical_to_the_cpu_reference") else {
        return;
    };
    check_dequantize::<f16>(&gpu);
    check_dequantize::<bf16>(&gpu);
}

#[test]
fn mismatched_shapes_are_refused() {
    let Some(gpu) = test_gpu("gpu::w4a16::mismatched_shapes_are_refused") else {
        return;
    };
    let w = W4Weight::<bf16>::upload(
        &gpu,
        &W4Tiles::from_levels(&levels(16, 64, 64, 1, false)).unwrap(),
    )
    .unwrap();
    let x = gpu.alloc::<bf16>(2 * 63).unwrap();
    let mut y = gpu.alloc::<bf16>(2 * 16).unwrap();
    let e = w4a16(&gpu, &x, 2, &w, &mut y).unwrap_err();
    assert!(e.to_string().contains("x must be [batch 2, k 64]"), "{e}");
}
