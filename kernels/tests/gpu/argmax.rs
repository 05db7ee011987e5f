//! argmax.cu against `cpu::argmax`, row by row, exactly: vocabularies from 1 to Qwen2's 151936 logits, ties (the
//! first wins), NaNs (passed over; a NaN first logit gives 0) and rows of -inf.

use olive_kernels::cpu::argmax;
use olive_kernels::cuda::argmax::argmax_rows;
use olive_kernels::cuda::test_gpu;

use super::common::random;

#[test]
fn argmax_rows_matches_the_cpu() {
    let Some(gpu) = test_gpu("gpu::argmax::argmax_rows_matches_the_cpu") else {
        return;
    };
    for (rows, n) in [
        (1, 1),
        (3, 7),
        (2, 1000),
        (1, 32000),
        (4, 49152),
        (1, 151936),
    ] {
        let mut x = random(rows * n, n as u64, 4.0);
        // Row 0's maximum twice (the first of them wins), row 1 from a NaN, the last row's middle a NaN above all.
        let top = x[..n].iter().cloned().fold(f32::MIN, f32::max) + 1.0;
        x[n / 3] = top;
        x[n - 1] = top;
        if rows > 1 {
            x[n] = f32::NAN;
        }
        x[(rows - 1) * n + n / 2] = f32::NAN;
        let dev = gpu.upload(&x).unwrap();
        let mut out = gpu.alloc::<u32>(rows).unwrap();
        argmax_rows(&gpu, &dev.slice(..), n, &mut out).unwrap();
        let want: Vec<u32> = x.chunks(n).map(argmax).collect();
        assert_eq!(gpu.download(&out).unwrap(), want, "{rows} rows of {n}");
    }
    // Rows of -inf (and NaN): the first index.
    let x = [
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::NEG_INFINITY,
    ];
    let dev = gpu.upload(&x).unwrap();
    let mut out = gpu.alloc::<u32>(2).unwrap();
    argmax_rows(&gpu, &dev.slice(..), 2, &mut out).unwrap();
    assert_eq!(gpu.download(&out).unwrap(), vec![0, 0]);
    let err = argmax_rows(&gpu, &dev.slice(..), 3, &mut out).unwrap_err();
    assert!(err.to_string().contains("not 2 rows of 3"), "{err}");
}
