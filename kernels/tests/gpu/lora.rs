//! lora.cu against the f64 references `cpu::lora_forward_ref` / `cpu::lora_backward_ref`: ranks 4–64 (and 5, not
//! a multiple of 16), token counts 1, 7, 33, 70, 130, 1000, input widths off the 64-tile and the 16-byte grid,
//! x and y as column ranges of wider rows (fused projections), bf16 and f16; y, dx, grad_A and grad_B are added to.

use olive_kernels::cpu::{lora_backward_ref, lora_forward_ref, LoraDims};
use olive_kernels::cuda::attention::{Operand, Rows};
use olive_kernels::cuda::lora::{backward, forward, Adapter, LoraGrads};
use olive_kernels::cuda::{bf16, f16, test_gpu, Gpu};

use super::attention::{rounded, widen, Dtype};
use super::common::{random, rel_error};

/// bf16 tensor-core operands: A, B (fp32 masters) and u/g rounded to bf16 (8-bit mantissa) before their
/// products, fp32 accumulation, the sum rounded to bf16.
const BF16_TOL: f64 = 1.5e-2;
/// The same with f16's 11-bit mantissa.
const F16_TOL: f64 = 3e-3;

fn tol<T: Dtype>() -> f64 {
    if T::SUFFIX == "bf16" {
        BF16_TOL
    } else {
        F16_TOL
    }
}

/// One case: dims, x's rows (offset, stride), and where the module's output columns start in a row of `y_width`.
struct Case {
    d: LoraDims,
    x_rows: Rows,
    y_col: usize,
    y_width: usize,
}

fn rms(v: &[f32]) -> f32 {
    (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt() as f32
}

fn check<T: Dtype>(gpu: &Gpu, c: &Case, seed: u64) {
    let d = c.d;
    let (n_in, n_out, r, tokens) = (d.in_features, d.out_features, d.rank, d.tokens);
    let what = format!(
        "{} tokens {tokens} in {n_in} out {n_out} rank {r}",
        T::SUFFIX
    );
    let x_len = c.x_rows.offset + tokens * c.x_rows.stride;
    let (x_h, x_all) = rounded::<T>(x_len, seed);
    let x_f: Vec<f32> = (0..tokens)
        .flat_map(|t| x_all[c.x_rows.offset + t * c.x_rows.stride..][..n_in].to_vec())
        .collect();
    let a = random(r * n_in, seed + 1, 1.0 / (n_in as f32).sqrt());
    let b = random(n_out * r, seed + 2, 0.5);
    let (u_ref, delta) = lora_forward_ref(&x_f, &a, &b, d);
    // y: [tokens, y_width], the module's columns from y_col, values of delta's size.
    let y_rows = Rows {
        offset: c.y_col,
        stride: c.y_width,
    };
    let y0: Vec<T> = random(tokens * c.y_width, seed + 3, rms(&delta))
        .into_iter()
        .map(T::from_f32)
        .collect();
    let (x_d, a_d, b_d) = (
        gpu.upload(&x_h).unwrap(),
        gpu.upload(&a).unwrap(),
        gpu.upload(&b).unwrap(),
    );
    let w = Adapter { a: &a_d, b: &b_d };
    let x = Operand {
        data: &x_d,
        rows: c.x_rows,
    };
    let mut y_d = gpu.upload(&y0).unwrap();
    let mut u_d = gpu.upload(&vec![f32::NAN; tokens * r]).unwrap();
    forward(gpu, &d, x, w, (&mut y_d, y_rows), &mut u_d).unwrap();
    let e = rel_error(&gpu.download(&u_d).unwrap(), &u_ref);
    assert!(e <= tol::<T>(), "{what}: u error {e}");
    let y = widen(gpu, &y_d);
    let (mut got, mut want) = (Vec::new(), Vec::new());
    for t in 0..tokens {
        for col in 0..c.y_width {
            let (i, before) = (t * c.y_width + col, y0[t * c.y_width + col]);
            if (c.y_col..c.y_col + n_out).contains(&col) {
                got.push(y[i]);
                want.push(before.to_f32() + delta[t * n_out + col - c.y_col]);
            } else {
                assert_eq!(
                    y[i].to_bits(),
                    before.to_f32().to_bits(),
                    "{what}: y[{t}, {col}] outside the module changed"
                );
            }
        }
    }
    let e = rel_error(&got, &want);
    assert!(e <= tol::<T>(), "{what}: y error {e}");

    // Backward: dy in the same layout as y; dx packed; every gradient starts from values it must add to.
    let (dy_h, dy_all) = rounded::<T>(tokens * c.y_width, seed + 4);
    let dy_f: Vec<f32> = (0..tokens)
        .flat_map(|t| dy_all[t * c.y_width + c.y_col..][..n_out].to_vec())
        .collect();
    let want = lora_backward_ref(&x_f, &dy_f, &a, &b, d);
    let ga0 = random(r * n_in, seed + 5, rms(&want.grad_a));
    let gb0 = random(n_out * r, seed + 6, rms(&want.grad_b));
    let dx0: Vec<T> = random(tokens * n_in, seed + 7, rms(&want.dx))
        .into_iter()
        .map(T::from_f32)
        .collect();
    let dy_d = gpu.upload(&dy_h).unwrap();
    let (mut ga, mut gb, mut dx) = (
        gpu.upload(&ga0).unwrap(),
        gpu.upload(&gb0).unwrap(),
        gpu.upload(&dx0).unwrap(),
    );
    backward(
        gpu,
        &d,
        x,
        Operand {
            data: &dy_d,
            rows: y_rows,
        },
        &u_d,
        w,
        LoraGrads {
            grad_a: &mut ga,
            grad_b: &mut gb,
            dx: Some((&mut dx, Rows::packed(n_in))),
        },
    )
    .unwrap();
    let plus = |base: &[f32], add: &[f32]| -> Vec<f32> {
        base.iter().zip(add).map(|(a, b)| a + b).collect()
    };
    let dx0: Vec<f32> = dx0.iter().map(|v| v.to_f32()).collect();
    for (name, got, want) in [
        (
            "grad_A",
            gpu.download(&ga).unwrap(),
            plus(&ga0, &want.grad_a),
        ),
        (
            "grad_B",
            gpu.download(&gb).unwrap(),
            plus(&gb0, &want.grad_b),
        ),
        ("dx", widen(gpu, &dx), plus(&dx0, &want.dx)),
    ] {
        let e = rel_error(&got, &want);
        assert!(e <= tol::<T>(), "{what}: {name} error {e}");
    }
}

#[test]
fn forward_and_backward_match_reference() {
    let Some(gpu) = test_gpu("gpu::lora::forward_and_backward_match_reference") else {
        return;
    };
    let dims = |tokens, in_features, out_features, rank| LoraDims {
        tokens,
        in_features,
        out_features,
        rank,
        scale: 16.0 / rank as f32,
    };
    let cases = [
        // decode, y a column range of a fused row
        Case {
            d: dims(1, 64, 96, 4),
            x_rows: Rows::packed(64),
            y_col: 32,
            y_width: 160,
        },
        // SmolLM2's k_proj, x inside wider 16-byte-aligned rows
        Case {
            d: dims(7, 576, 192, 8),
            x_rows: Rows {
                offset: 8,
                stride: 600,
            },
            y_col: 576,
            y_width: 960,
        },
        // input off the tile and off the 16-byte grid
        Case {
            d: dims(130, 1000, 300, 16),
            x_rows: Rows {
                offset: 1,
                stride: 1003,
            },
            y_col: 0,
            y_width: 300,
        },
        // rank not a multiple of 16
        Case {
            d: dims(70, 128, 200, 5),
            x_rows: Rows::packed(128),
            y_col: 8,
            y_width: 208,
        },
        // wide output: split into slices
        Case {
            d: dims(33, 256, 14336, 32),
            x_rows: Rows::packed(256),
            y_col: 0,
            y_width: 14336,
        },
        // many tokens, the largest rank
        Case {
            d: dims(1000, 3072, 1024, 64),
            x_rows: Rows::packed(3072),
            y_col: 0,
            y_width: 1024,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        check::<bf16>(&gpu, c, 40 + 10 * i as u64);
        check::<f16>(&gpu, c, 45 + 10 * i as u64);
    }
}

#[test]
fn refuses_a_rank_over_64_and_mismatched_weights() {
    let Some(gpu) = test_gpu("gpu::lora::refuses_a_rank_over_64_and_mismatched_weights") else {
        return;
    };
    let x = gpu.upload(&[bf16::ONE; 4 * 8]).unwrap();
    let mut y = gpu.upload(&[bf16::ONE; 4 * 8]).unwrap();
    let a = gpu.upload(&vec![0.5f32; 65 * 8]).unwrap();
    let b = gpu.upload(&vec![0.5f32; 8 * 65]).unwrap();
    let mut u = gpu.upload(&vec![0f32; 4 * 65]).unwrap();
    let mut d = LoraDims {
        tokens: 4,
        in_features: 8,
        out_features: 8,
        rank: 65,
        scale: 1.0,
    };
    let x_op = Operand {
        data: &x,
        rows: Rows::packed(8),
    };
    let err = forward(
        &gpu,
        &d,
        x_op,
        Adapter { a: &a, b: &b },
        (&mut y, Rows::packed(8)),
        &mut u,
    )
    .unwrap_err();
    assert!(err.to_string().contains("rank 65"), "{err}");
    d.rank = 64;
    let err = forward(
        &gpu,
        &d,
        x_op,
        Adapter { a: &a, b: &b },
        (&mut y, Rows::packed(8)),
        &mut u,
    )
    .unwrap_err();
    assert!(err.to_string().contains("expected [64, 8]"), "{err}");
}
