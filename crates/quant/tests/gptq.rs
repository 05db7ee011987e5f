//! GPTQ and RTN properties on seeded data: ragged groups, the RTN error bound, GPTQ = RTN when H is
//! diagonal, GPTQ beating RTN on correlated inputs, act-order's g_idx, block-size independence, the
//! Hessian's running average and the errors.

mod common;

use common::{correlated_inputs, output_error, Normal};
use olive_quant::{
    fake_quantize, gptq, group_params, rtn, GptqOptions, Hessian, QuantError, QuantSpec,
};

fn spec(bits: u8, group_size: Option<usize>, sym: bool) -> QuantSpec {
    QuantSpec {
        bits,
        group_size,
        sym,
    }
}

fn hessian_of(x: &[f32], n: usize) -> Hessian {
    let mut h = Hessian::new(n);
    h.add(x);
    h
}

/// Largest |a − b| relative to max |b|.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let peak = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / peak
}

#[test]
fn rtn_ragged_groups_dequantize_within_half_a_step() {
    let (out, n) = (6, 100);
    let w = Normal::new(1).vec(out * n, 0.1);
    for bits in [2u8, 3, 4, 8] {
        for sym in [false, true] {
            let s = spec(bits, Some(32), sym);
            let q = rtn(&w, out, n, &s).unwrap();
            assert_eq!((q.n_groups(), q.group_size, q.g_idx.clone()), (4, 32, None));
            let deq = q.dequantize();
            assert_eq!(
                deq,
                fake_quantize(&w, out, n, &s).unwrap(),
                "bits {bits} sym {sym}"
            );
            for o in 0..out {
                // The ragged last group (inputs 96..100) has a grid of its own four weights.
                let last = group_params(&w[o * n + 96..o * n + 100], bits, sym);
                assert_eq!((q.scales[o * 4 + 3], q.zeros[o * 4 + 3]), last);
                for i in 0..n {
                    let scale = q.scales[o * 4 + i / 32];
                    let e = (deq[o * n + i] - w[o * n + i]).abs();
                    // half a step, plus the f32 rounding of (q − z)·s
                    let bound = scale / 2.0 + 2.0 * f32::EPSILON * w[o * n + i].abs();
                    assert!(
                        e <= bound,
                        "bits {bits} sym {sym} ({o}, {i}): error {e} > {bound}"
                    );
                }
            }
        }
    }
}

#[test]
fn gptq_with_diagonal_hessian_is_rtn() {
    // x = c·I: H = 2c²/n · I; U is diagonal, so no error is carried to later columns.
    let (out, n) = (12, 64);
    let w = Normal::new(2).vec(out * n, 0.05);
    let mut x = vec![0f32; n * n];
    (0..n).for_each(|i| x[i * n + i] = 0.7);
    let h = hessian_of(&x, n);
    for s in [
        spec(4, Some(16), false),
        spec(4, Some(16), true),
        spec(3, None, false),
        spec(8, Some(24), true),
    ] {
        for act_order in [false, true] {
            let opts = GptqOptions {
                act_order,
                ..GptqOptions::default()
            };
            let g = gptq(&w, out, n, &h, &s, &opts).unwrap().linear;
            let r = rtn(&w, out, n, &s).unwrap();
            assert_eq!(
                (&g.q, &g.scales, &g.zeros, &g.g_idx),
                (&r.q, &r.scales, &r.zeros, &r.g_idx),
                "{s:?} act {act_order}"
            );
        }
    }
}

#[test]
fn gptq_beats_rtn_on_correlated_inputs() {
    let (out, n, tokens) = (32, 96, 512);
    let w = Normal::new(3).vec(out * n, 0.05);
    let x = correlated_inputs(tokens, n, 4);
    let h = hessian_of(&x, n);
    for (s, act_order) in [
        (spec(4, Some(32), false), false),
        (spec(4, Some(32), false), true),
        (spec(4, None, true), false),
        (spec(3, Some(40), false), true), // ragged: 96 = 2·40 + 16
    ] {
        let opts = GptqOptions {
            act_order,
            ..GptqOptions::default()
        };
        let g = gptq(&w, out, n, &h, &s, &opts).unwrap();
        let e_gptq = output_error(&x, &w, &g.linear.dequantize(), n);
        let e_rtn = output_error(&x, &w, &rtn(&w, out, n, &s).unwrap().dequantize(), n);
        eprintln!(
            "{s:?} act {act_order}: GPTQ/RTN output error {:.3}",
            e_gptq / e_rtn
        );
        assert!(
            e_gptq < 0.9 * e_rtn,
            "{s:?} act {act_order}: GPTQ {e_gptq} vs RTN {e_rtn}"
        );
        assert!(g.error.is_finite() && g.error > 0.0);
    }
}

#[test]
fn act_order_g_idx_follows_decreasing_hessian_diagonal() {
    let (out, n, tokens) = (16, 100, 256);
    let w = Normal::new(5).vec(out * n, 0.05);
    let x = correlated_inputs(tokens, n, 6);
    let h = hessian_of(&x, n);
    let s = spec(4, Some(32), false);
    let opts = GptqOptions {
        act_order: true,
        ..GptqOptions::default()
    };
    let g = gptq(&w, out, n, &h, &s, &opts).unwrap().linear;
    let g_idx = g
        .g_idx
        .clone()
        .expect("act-order with groups permutes g_idx");
    // Σ_t x², the order of diag H, from the inputs directly.
    let diag: Vec<f64> = (0..n)
        .map(|j| {
            x.iter()
                .skip(j)
                .step_by(n)
                .map(|v| f64::from(*v).powi(2))
                .sum()
        })
        .collect();
    let mut perm: Vec<usize> = (0..n).collect();
    perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
    for (i, &p) in perm.iter().enumerate() {
        assert_eq!(
            g_idx[p] as usize,
            i / 32,
            "input {p} at act-order position {i}"
        );
    }
    let mut sizes = vec![0; g.n_groups()];
    g_idx.iter().for_each(|&k| sizes[k as usize] += 1);
    assert_eq!(sizes, [32, 32, 32, 4]);
    assert!(g.q.iter().all(|&l| l < 16));
    // The levels with their g_idx grids are the weight GPTQ optimized: better than RTN on these inputs.
    let e_act = output_error(&x, &w, &g.dequantize(), n);
    let e_rtn = output_error(&x, &w, &rtn(&w, out, n, &s).unwrap().dequantize(), n);
    assert!(e_act < e_rtn, "act-order {e_act} vs RTN {e_rtn}");
    // static groups: grids in input order, so g_idx is trivial (None)
    let opts = GptqOptions {
        static_groups: true,
        ..opts
    };
    assert_eq!(gptq(&w, out, n, &h, &s, &opts).unwrap().linear.g_idx, None);
}

#[test]
fn block_size_does_not_change_the_result() {
    let (out, n, tokens) = (24, 72, 300);
    let w = Normal::new(7).vec(out * n, 0.05);
    let x = correlated_inputs(tokens, n, 8);
    let h = hessian_of(&x, n);
    // Asymmetric groups: a symmetric group grid puts the group's largest |w| exactly on a rounding tie
    // (±maxq/2), so the last bit of an updated weight, which the summation order moves, picks the level.
    // Per channel the grid comes from the weight before any update, so symmetric is checked there.
    for s in [
        spec(4, Some(16), false),
        spec(4, Some(20), false),
        spec(4, None, true),
    ] {
        for (act_order, static_groups) in [(false, false), (true, false), (true, true)] {
            let run = |block_size| {
                let opts = GptqOptions {
                    block_size,
                    act_order,
                    static_groups,
                    ..GptqOptions::default()
                };
                gptq(&w, out, n, &h, &s, &opts).unwrap().linear.dequantize()
            };
            let whole = run(1000);
            for block in [1, 8] {
                let d = rel_diff(&run(block), &whole);
                assert!(
                    d <= 1e-5,
                    "{s:?} act {act_order} static {static_groups} block {block}: {d}"
                );
            }
        }
    }
}

#[test]
fn hessian_is_a_running_average_of_2_xtx() {
    let (n, tokens) = (40, 90);
    let x = Normal::new(9).vec(tokens * n, 1.0);
    let mut h = Hessian::new(n);
    h.add(&x[..10 * n]);
    h.add(&x[10 * n..10 * n]);
    h.add(&x[10 * n..55 * n]);
    h.add(&x[55 * n..]);
    assert_eq!((h.samples(), h.in_features()), (tokens, n));
    for i in 0..n {
        for j in 0..n {
            let want: f64 = (0..tokens)
                .map(|t| f64::from(x[t * n + i]) * f64::from(x[t * n + j]))
                .sum::<f64>()
                * 2.0
                / tokens as f64;
            let got = f64::from(h.matrix()[i * n + j]);
            assert!(
                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "H[{i}, {j}] = {got}, want {want}"
            );
        }
    }
}

#[test]
fn dead_inputs_quantize_to_zero() {
    let (out, n, tokens) = (8, 48, 128);
    let w = Normal::new(10).vec(out * n, 0.05);
    let mut x = correlated_inputs(tokens, n, 11);
    x.iter_mut().skip(5).step_by(n).for_each(|v| *v = 0.0); // input 5 never fires
    let h = hessian_of(&x, n);
    for act_order in [false, true] {
        let opts = GptqOptions {
            act_order,
            ..GptqOptions::default()
        };
        let g = gptq(&w, out, n, &h, &spec(4, Some(16), false), &opts).unwrap();
        let deq = g.linear.dequantize();
        assert!(deq.iter().all(|v| v.is_finite()));
        assert!((0..out).all(|o| deq[o * n + 5] == 0.0), "act {act_order}");
    }
}

#[test]
fn bad_inputs_are_named_errors() {
    let (out, n) = (4, 32);
    let w = Normal::new(12).vec(out * n, 0.05);
    let h = hessian_of(&correlated_inputs(64, n, 13), n);
    let s = spec(4, Some(16), false);
    let o = GptqOptions::default();
    let mut bad = w.clone();
    bad[37] = f32::NAN;
    assert!(matches!(
        gptq(&bad, out, n, &h, &s, &o),
        Err(QuantError::NonFinite { row: 1, col: 5, .. })
    ));
    assert!(matches!(
        rtn(&bad, out, n, &s),
        Err(QuantError::NonFinite { row: 1, col: 5, .. })
    ));
    assert!(matches!(
        gptq(&w[1..], out, n, &h, &s, &o),
        Err(QuantError::Shape { .. })
    ));
    assert!(matches!(
        fake_quantize(&w, out, 0, &s),
        Err(QuantError::Shape { .. })
    ));
    assert!(matches!(
        gptq(&w, out * 2, n / 2, &h, &s, &o),
        Err(QuantError::HessianSize {
            hessian: 32,
            in_features: 16
        })
    ));
    assert!(matches!(
        gptq(&w, out, n, &Hessian::new(n), &s, &o),
        Err(QuantError::NoSamples(32))
    ));
    assert!(matches!(
        gptq(&w, out, n, &h, &spec(5, None, false), &o),
        Err(QuantError::Bits(5))
    ));
    assert!(matches!(
        rtn(&w, out, n, &spec(4, Some(0), false)),
        Err(QuantError::GroupSize)
    ));
    let zero_block = GptqOptions { block_size: 0, ..o };
    assert!(matches!(
        gptq(&w, out, n, &h, &s, &zero_block),
        Err(QuantError::BadOption {
            field: "block_size",
            ..
        })
    ));
    let bad_damp = GptqOptions {
        damp_percent: f32::NAN,
        ..o
    };
    let msg = gptq(&w, out, n, &h, &s, &bad_damp).unwrap_err().to_string();
    assert!(msg.contains("damp_percent"), "{msg}");
}

#[test]
fn one_solver_quantizes_stacked_rows_like_separate_calls() {
    let (n, tokens) = (64, 200);
    let x = correlated_inputs(tokens, n, 14);
    let h = hessian_of(&x, n);
    let opts = GptqOptions {
        act_order: true,
        ..GptqOptions::default()
    };
    let s = spec(4, Some(16), false);
    let (q, k) = (
        Normal::new(15).vec(24 * n, 0.05),
        Normal::new(16).vec(8 * n, 0.05),
    );
    let solver = olive_quant::GptqSolver::new(&h, &opts).unwrap();
    let stacked: Vec<f32> = q.iter().chain(&k).copied().collect();
    let both = solver.quantize(&stacked, 32, n, &s).unwrap().linear;
    let owned = olive_quant::GptqSolver::from_hessian(h.clone(), &opts).unwrap();
    let q_alone = owned.quantize(&q, 24, n, &s).unwrap().linear;
    let k_alone = gptq(&k, 8, n, &h, &s, &opts).unwrap().linear;
    assert_eq!(both.rows(0, 24).dequantize(), q_alone.dequantize());
    assert_eq!(both.rows(24, 32).dequantize(), k_alone.dequantize());
    assert_eq!(both.g_idx, q_alone.g_idx);
}

/// Textbook GPTQ in f64 (H⁻¹ by Cholesky, its upper factor U, one column at a time, grids from the
/// updated weights at each group start): the f32 implementation is checked against it on an
/// ill-conditioned Hessian.
fn gptq_f64(w: &[f32], out: usize, n: usize, x: &[f32], gs: usize, damp_percent: f64) -> Vec<f32> {
    let tokens = x.len() / n;
    let mut h = vec![0f64; n * n];
    for t in 0..tokens {
        let xt = &x[t * n..(t + 1) * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] += 2.0 * f64::from(xt[i]) * f64::from(xt[j]) / tokens as f64;
            }
        }
    }
    let damp = damp_percent * (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
    (0..n).for_each(|i| h[i * n + i] += damp);
    let chol = |a: &[f64]| {
        let mut l = vec![0f64; n * n];
        for j in 0..n {
            let d = (a[j * n + j] - (0..j).map(|k| l[j * n + k].powi(2)).sum::<f64>()).sqrt();
            l[j * n + j] = d;
            for i in j + 1..n {
                let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
                l[i * n + j] = (a[i * n + j] - s) / d;
            }
        }
        l
    };
    // H⁻¹ = L⁻ᵀ·L⁻¹ with L = chol(H), then U = chol(H⁻¹)ᵀ.
    let l = chol(&h);
    let mut linv = vec![0f64; n * n];
    for j in 0..n {
        linv[j * n + j] = 1.0 / l[j * n + j];
        for i in j + 1..n {
            let s: f64 = (j..i).map(|k| l[i * n + k] * linv[k * n + j]).sum();
            linv[i * n + j] = -s / l[i * n + i];
        }
    }
    let hinv: Vec<f64> = (0..n * n)
        .map(|idx| {
            let (i, j) = (idx / n, idx % n);
            (i.max(j)..n)
                .map(|k| linv[k * n + i] * linv[k * n + j])
                .sum()
        })
        .collect();
    let lu = chol(&hinv); // U = luᵀ
    let u = |i: usize, j: usize| lu[j * n + i];
    let mut wq = vec![0f32; out * n];
    for o in 0..out {
        let mut row: Vec<f64> = w[o * n..(o + 1) * n]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let (mut scale, mut zero) = (0f64, 0f64);
        for j in 0..n {
            if j % gs == 0 {
                let g = &row[j..(j + gs).min(n)];
                let lo = g.iter().fold(0f64, |m, &v| m.min(v));
                let hi = g.iter().fold(0f64, |m, &v| m.max(v));
                scale = (hi - lo) / 15.0;
                zero = (-lo / scale).round_ties_even();
            }
            let q = ((row[j] / scale).round_ties_even() + zero).clamp(0.0, 15.0);
            let deq = (q - zero) * scale;
            let e = (row[j] - deq) / u(j, j);
            row.iter_mut()
                .enumerate()
                .skip(j + 1)
                .for_each(|(k, r)| *r -= e * u(j, k));
            wq[o * n + j] = deq as f32;
        }
    }
    wq
}

#[test]
fn f32_gptq_holds_up_on_an_ill_conditioned_hessian() {
    // Column scales e^(2.5·N(0,1)): H's diagonal spans ~6 orders of magnitude, as LLM activations with
    // outlier features do.
    let (out, n, tokens) = (48, 320, 800);
    let mut rng = Normal::new(17);
    let scales: Vec<f32> = (0..n).map(|_| (2.5 * rng.sample()).exp()).collect();
    let mut x = correlated_inputs(tokens, n, 18);
    x.iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v *= scales[i % n]);
    let w = Normal::new(19).vec(out * n, 0.05);
    let s = spec(4, Some(64), false);
    let ours = gptq(&w, out, n, &hessian_of(&x, n), &s, &GptqOptions::default()).unwrap();
    let e_ours = output_error(&x, &w, &ours.linear.dequantize(), n);
    let e_ref = output_error(&x, &w, &gptq_f64(&w, out, n, &x, 64, 0.01), n);
    let e_rtn = output_error(&x, &w, &rtn(&w, out, n, &s).unwrap().dequantize(), n);
    eprintln!(
        "output error: f32 GPTQ / f64 GPTQ {:.4}, f64 GPTQ / RTN {:.3}",
        e_ours / e_ref,
        e_ref / e_rtn
    );
    assert!(
        (e_ours / e_ref - 1.0).abs() < 0.01,
        "f32 {e_ours} vs f64 {e_ref}"
    );
}
