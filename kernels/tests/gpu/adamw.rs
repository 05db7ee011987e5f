//! adamw.cu against kernels/src/cpu/adamw.rs: three AdamW steps (bias correction changing with t, weight decay,
//! one step with a clipping coefficient on the grads) over a buffer with a tail past the 4-wide packs, params and
//! both moments compared; the global gradient norm over several buffers against the CPU's f64 sum.

use olive_kernels::cpu::{adamw_update, sum_squares, AdamW};
use olive_kernels::cuda::adamw::{adamw, global_norm};
use olive_kernels::cuda::test_gpu;

use super::common::{random, rel_error};

/// The same f32 formula per element; the device may contract a multiply-add (FMA) and rounds sqrt and division
/// correctly as the CPU does: differences of an ulp or two per step.
const ADAMW_REL: f64 = 1e-6;
/// f64 sums of exact f32 squares in another order.
const NORM_REL: f64 = 1e-12;

#[test]
fn adamw_steps_match_the_cpu() {
    let Some(gpu) = test_gpu("gpu::adamw::adamw_steps_match_the_cpu") else {
        return;
    };
    let n = 1_000_003;
    let opt = AdamW {
        lr: 2e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut p = random(n, 700, 1.0);
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let mut dp = gpu.upload(&p).unwrap();
    let (mut dm, mut dv) = (gpu.upload(&m).unwrap(), gpu.upload(&v).unwrap());
    for (t, scale) in [(1, 1.0f32), (2, 0.37), (3, 1.0)] {
        let g = random(n, 700 + t as u64, 0.1);
        let step = opt.at_step(t);
        adamw(
            &gpu,
            &mut dp,
            &gpu.upload(&g).unwrap(),
            &mut dm,
            &mut dv,
            &step,
            scale,
        )
        .unwrap();
        let scaled: Vec<f32> = g.iter().map(|x| x * scale).collect();
        adamw_update(&mut p, &scaled, &mut m, &mut v, &step);
    }
    let (ep, em, ev) = (
        rel_error(&gpu.download(&dp).unwrap(), &p),
        rel_error(&gpu.download(&dm).unwrap(), &m),
        rel_error(&gpu.download(&dv).unwrap(), &v),
    );
    eprintln!("adamw f32 n={n}: p {ep:.2e}, m {em:.2e}, v {ev:.2e} (tol {ADAMW_REL:.0e})");
    assert!(ep <= ADAMW_REL && em <= ADAMW_REL && ev <= ADAMW_REL);
}

#[test]
fn global_norm_matches_the_cpu() {
    let Some(gpu) = test_gpu("gpu::adamw::global_norm_matches_the_cpu") else {
        return;
    };
    let grads: Vec<Vec<f32>> = [1_000_003usize, 17, 4096]
        .iter()
        .enumerate()
        .map(|(i, &n)| random(n, 800 + i as u64, 0.5))
        .collect();
    let dev: Vec<_> = grads.iter().map(|g| gpu.upload(g).unwrap()).collect();
    let got = global_norm(&gpu, &dev.iter().collect::<Vec<_>>()).unwrap();
    let want = grads.iter().map(|g| sum_squares(g)).sum::<f64>().sqrt();
    let e = (got - want).abs() / want;
    eprintln!("global_norm: {got} vs {want}, rel {e:.2e} (tol {NORM_REL:.0e})");
    assert!(e <= NORM_REL);
}
