//! AWQ's search kernels (kernels/cuda/awq_search.cu) against their CPU references in olive_quant::awq (the grid of
//! crates/quant/src/grid.rs): the fake quantizations bit for bit, the clip choice and the loss sum against f64 sums
//! on the host; and the whole search on the GPU choosing the CPU's ratios.

use olive_kernels::cuda::awq_search::{
    clip_best, clip_candidates, scaled_fake_quantize, squared_error_sum, ClipGroup, WeightGrid,
    PARTIALS,
};
use std::path::Path;

use olive_kernels::cuda::test_gpu;
use olive_quant::awq::{clamped_fake_quantize, scaled_fake_quantize as cpu_scaled, AwqOptions};
use olive_quant::{quantize_model, Device, Event, Method, QuantSpec};

use super::gpu_support::{options, windows, write_model, Rng, Shape};

/// Relative difference between two f64 sums of the same f32 products added in another order (n ≤ 10⁶ terms:
/// about n·2⁻⁵³ ≈ 1e-10 at worst).
const F64_SUM_REL: f64 = 1e-9;

/// A weight [rows, in] with the cases the grid treats apart: an all-zero row, a row of tiny values (subnormal
/// scales), a row without negatives, outliers.
fn weight(rows: usize, in_features: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    let mut w = rng.vec(rows * in_features, 0.05);
    w[..in_features].fill(0.0);
    for v in &mut w[in_features..2 * in_features] {
        *v *= 1e-38;
    }
    for v in &mut w[2 * in_features..3 * in_features] {
        *v = v.abs();
    }
    for r in 3..rows {
        w[r * in_features + (r * 7) % in_features] = 0.9;
    }
    w
}

fn specs() -> Vec<QuantSpec> {
    vec![
        QuantSpec {
            bits: 4,
            group_size: Some(128),
            sym: false,
        },
        QuantSpec {
            bits: 3,
            group_size: Some(64),
            sym: true,
        },
        QuantSpec {
            bits: 8,
            group_size: None,
            sym: false,
        },
        QuantSpec {
            bits: 2,
            group_size: Some(100),
            sym: false,
        },
    ]
}

fn differing_bits(a: &[f32], b: &[f32]) -> usize {
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count()
}

/// Q(W·s)/s and Q(clamp(W)) − W on the GPU equal the CPU's bit for bit (ragged last groups included).
#[test]
fn awq_fake_quantize_kernels_equal_the_cpu_bit_for_bit() {
    let Some(gpu) = test_gpu("awq_fake_quantize_kernels_equal_the_cpu_bit_for_bit") else {
        return;
    };
    let (rows, in_features) = (48, 300);
    let w = weight(rows, in_features, 7);
    let mut rng = Rng(9);
    let s: Vec<f32> = (0..in_features)
        .map(|_| 0.1 + 5.0 * (rng.next() + 1.0))
        .collect();
    let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
    let dw = gpu.upload(&w).unwrap();
    let ds = gpu.upload(&s).unwrap();
    for spec in specs() {
        let gl = spec.group_len(in_features).min(in_features);
        let grid = WeightGrid {
            rows,
            in_features,
            group_len: gl,
            max_level: spec.max_level(),
            sym: spec.sym,
        };
        let mut cpu = vec![0f32; rows * in_features];
        cpu_scaled(&w, in_features, &s, &inv, &spec, &mut cpu);
        let mut out = gpu.upload(&vec![f32::NAN; rows * in_features]).unwrap();
        scaled_fake_quantize(
            &gpu,
            &dw.slice(..),
            &ds.slice(..),
            &mut out.slice_mut(..),
            &grid,
        )
        .unwrap();
        let got = gpu.download(&out).unwrap();
        assert_eq!(differing_bits(&got, &cpu), 0, "scaled, {spec:?}");

        let (steps, n_grid) = (10, 20);
        for c0 in (0..in_features).step_by(gl) {
            let len = gl.min(in_features - c0);
            let group = ClipGroup {
                c0,
                len,
                steps,
                n_grid,
            };
            let mut d = gpu.upload(&vec![f32::NAN; steps * rows * len]).unwrap();
            clip_candidates(&gpu, &dw.slice(..), &grid, group, &mut d.slice_mut(..)).unwrap();
            let got = gpu.download(&d).unwrap();
            let wg: Vec<f32> = w
                .chunks_exact(in_features)
                .flat_map(|r| r[c0..c0 + len].to_vec())
                .collect();
            let max: Vec<f32> = wg
                .chunks_exact(len)
                .map(|r| r.iter().fold(0f32, |a, v| a.max(v.abs())))
                .collect();
            for step in 0..steps {
                let f = 1.0 - step as f32 / n_grid as f32;
                let mut q = vec![0f32; rows * len];
                clamped_fake_quantize(&wg, &max, f, len, &spec, &mut q);
                q.iter_mut().zip(&wg).for_each(|(q, w)| *q -= w);
                let g = &got[step * rows * len..(step + 1) * rows * len];
                assert_eq!(
                    differing_bits(g, &q),
                    0,
                    "clip step {step}, group {c0}, {spec:?}"
                );
            }
        }
    }
}

/// The clip choice (the first step of the smallest Σ e·d) and the loss sum equal the host's f64 sums, up to
/// summation order.
#[test]
fn awq_clip_choice_and_loss_sum_match_host_sums() {
    let Some(gpu) = test_gpu("awq_clip_choice_and_loss_sum_match_host_sums") else {
        return;
    };
    let (rows, in_features, steps, n_grid) = (64, 256, 10, 20);
    let (c0, len) = (128, 128);
    let w = weight(rows, in_features, 3);
    let mut rng = Rng(5);
    let e = rng.vec(steps * rows * len, 1.0);
    let d = rng.vec(steps * rows * len, 1.0);
    let grid = WeightGrid {
        rows,
        in_features,
        group_len: 128,
        max_level: 15,
        sym: false,
    };
    let group = ClipGroup {
        c0,
        len,
        steps,
        n_grid,
    };
    let (de, dd, dw) = (
        gpu.upload(&e).unwrap(),
        gpu.upload(&d).unwrap(),
        gpu.upload(&w).unwrap(),
    );
    let mut best = gpu.upload(&vec![f32::NAN; rows]).unwrap();
    clip_best(
        &gpu,
        (&de.slice(..), &dd.slice(..)),
        &dw.slice(..),
        &grid,
        group,
        &mut best.slice_mut(..),
    )
    .unwrap();
    let got = gpu.download(&best).unwrap();
    for r in 0..rows {
        let org = w[r * in_features + c0..r * in_features + c0 + len]
            .iter()
            .fold(0f32, |a, v| a.max(v.abs()));
        let errs: Vec<f64> = (0..steps)
            .map(|i| {
                let b = (i * rows + r) * len;
                (0..len)
                    .map(|j| f64::from(e[b + j]) * f64::from(d[b + j]))
                    .sum()
            })
            .collect();
        let (mut be, mut bi) = (f64::INFINITY, None);
        for (i, &x) in errs.iter().enumerate() {
            if x < be {
                (be, bi) = (x, Some(i));
            }
        }
        let want = bi.map_or(org, |i| org * (1.0 - i as f32 / n_grid as f32));
        if got[r] != want {
            // Only a tie within the sums' rounding may choose another step.
            let i = (0..steps).find(|&i| org * (1.0 - i as f32 / n_grid as f32) == got[r]);
            let tie = i.is_some_and(|i| (errs[i] - be).abs() <= F64_SUM_REL * be.abs());
            assert!(tie, "row {r}: gpu {} cpu {want}, errors {errs:?}", got[r]);
        }
    }
    let n = 1_000_003;
    let (a, b) = (rng.vec(n, 1.0), rng.vec(n, 1.0));
    let want: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum();
    let (da, db) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
    let mut partial = gpu.alloc::<f64>(PARTIALS).unwrap();
    let mut out = gpu.upload(&[f64::NAN]).unwrap();
    squared_error_sum(
        &gpu,
        &da.slice(..),
        &db.slice(..),
        &mut partial,
        &mut out.slice_mut(..),
    )
    .unwrap();
    let got = gpu.download(&out).unwrap()[0];
    assert!(
        (got - want).abs() <= F64_SUM_REL * want,
        "loss sum {got} vs {want}"
    );
}

/// Fraction of clipped weights whose count may differ between the devices: a row's clip choice can flip between
/// two shrink steps whose errors tie within the float noise of G = XᵀX (cuBLAS vs the CPU's order of additions).
const CLIPPED_REL: f64 = 1e-2;
/// A scaling group's ratio may differ between the devices only where the CPU's next-best loss lies within this
/// of the best one: the products differ by ~1e-7 relative, and the loss is a mean of squared differences of outputs
/// about 1e-2 apart, so each loss carries ~1e-5 relative noise.
const RATIO_TIE_REL: f64 = 1e-4;

/// What AWQ logs for one layer: the scaling groups' (name, ratio), their next-best loss margins, the weights clipped.
#[derive(Debug)]
struct Choices {
    ratios: Vec<String>,
    margins: Vec<f64>,
    clipped: usize,
}

/// The text between `start` and the next `]` of `line`.
fn list<'a>(line: &'a str, start: &str) -> &'a str {
    let rest = line
        .split(start)
        .nth(1)
        .unwrap_or_else(|| panic!("no {start:?} in {line:?}"));
    rest.split(']').next().unwrap_or("")
}

/// Each layer's choices, from AWQ's log lines ("AWQ ..: best ratios [..], next-best loss margins [..], N weights
/// clipped").
fn awq_choices(device: Device, fp: &Path, out: &Path, cal: &[Vec<u32>]) -> Vec<Choices> {
    let mut layers = Vec::new();
    let method = Method::Awq(AwqOptions::default());
    quantize_model(fp, out, &options(method, device), cal, &mut |e| {
        if let Event::Log(l) = e {
            if l.starts_with("AWQ ") {
                let ratios = list(l, "best ratios [(");
                let margins = list(l, "margins [");
                let clipped = l.rsplit(", ").next().and_then(|c| c.split(' ').next());
                layers.push(Choices {
                    ratios: ratios.split("), (").map(String::from).collect(),
                    margins: margins.split(", ").map(|m| m.parse().unwrap()).collect(),
                    clipped: clipped
                        .and_then(|c| c.parse().ok())
                        .expect("a clipped count"),
                });
            }
        }
        true
    })
    .unwrap();
    layers
}

/// The whole search on the GPU (scale grid and clip search on the device) chooses the CPU's ratio in every scaling
/// group of every layer, but where the CPU's two best losses tie within float noise, and clips the same weights up
/// to ties.
#[test]
fn awq_search_on_the_gpu_chooses_the_cpu_ratios() {
    let Some(gpu) = test_gpu("awq_search_on_the_gpu_chooses_the_cpu_ratios") else {
        return;
    };
    let s = Shape {
        hidden: 512,
        heads: 8,
        kv_heads: 8,
        inter: 1024,
        layers: 3,
        vocab: 256,
    };
    let dir = tempfile::tempdir().unwrap();
    let fp = dir.path().join("fp");
    write_model(&fp, s);
    let cal = windows(8, 128, s.vocab, 3);
    let cpu = awq_choices(Device::Cpu, &fp, &dir.path().join("cpu"), &cal);
    let on_gpu = awq_choices(Device::GPU, &fp, &dir.path().join("gpu"), &cal);
    eprintln!("AWQ choices on {}: cpu {cpu:?}, gpu {on_gpu:?}", gpu.name());
    assert_eq!(cpu.len(), s.layers);
    assert_eq!(on_gpu.len(), s.layers);
    for (l, (c, g)) in cpu.iter().zip(&on_gpu).enumerate() {
        assert_eq!(
            c.ratios.len(),
            4,
            "layer {l}: attention, o, mlp, down searched"
        );
        for (i, (rc, rg)) in c.ratios.iter().zip(&g.ratios).enumerate() {
            assert!(
                rc == rg || c.margins[i] <= RATIO_TIE_REL,
                "layer {l}: cpu {rc} gpu {rg}, cpu margin {:.1e}",
                c.margins[i]
            );
        }
        let rel = (c.clipped as f64 - g.clipped as f64).abs() / c.clipped.max(1) as f64;
        assert!(
            rel <= CLIPPED_REL,
            "layer {l}: clipped cpu {} gpu {}",
            c.clipped,
            g.clipped
        );
    }
}
