//! Where calibration's dense products run: the CPU (`olive_kernels::cpu::matmul`, `gemm`) or a CUDA GPU
//! (cuBLAS f32 through `olive_kernels::cuda::gemm`, fp32 operands and accumulation, no TF32), so the GPU's
//! results equal the CPU's up to the order of f32 additions. One code path serves both devices: the
//! quantizer asks [`Compute`] for x·Wᵀ (layer forwards, AWQ candidates, clip errors) and for the Gram matrices
//! xᵀy of GPTQ's Hessians, and runs the MLP's SwiGLU between its products on the device; everything else
//! (norms, RoPE, attention, grids and fake quantization, GPTQ's factorisation and column loop) stays on the
//! CPU. The layer pieces here follow `olive_nn::DecoderLayer`'s attention and MLP blocks (transformers' Llama
//! forward) with their linears computed by [`Compute`], over all calibration windows at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use olive_kernels::cpu::{attention, matmul, rope_apply, silu_mul, AttentionDims, RopeLayout};
use olive_kernels::cuda::gemm::{self, Operand};
use olive_kernels::cuda::silu_mul as gpu_silu;
use olive_kernels::cuda::{Gpu, GpuError};
use olive_nn::{DecoderLayer, Linear, RopeTables};

use crate::error::{QuantError, Result};

/// The device calibration runs on (`quantize --device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The host CPU.
    #[default]
    Cpu,
    /// CUDA device 0 (f32 cuBLAS products; results equal the CPU's within float noise).
    Gpu,
}

/// The products of one run, on the device chosen, and the time spent in them.
#[derive(Debug)]
pub struct Compute {
    /// The GPU (cuBLAS f32); `None`: the host CPU (`olive_kernels::cpu::matmul`).
    gpu: Option<Arc<Gpu>>,
    /// Nanoseconds spent in products so far (transfers included).
    busy_ns: AtomicU64,
}

impl Compute {
    /// Products on the CPU.
    pub fn cpu() -> Self {
        Compute {
            gpu: None,
            busy_ns: AtomicU64::new(0),
        }
    }

    /// Opens the device (device 0 for [`Device::Gpu`]; a clear error where there is none).
    pub fn open(device: Device) -> Result<Self> {
        let gpu = match device {
            Device::Cpu => None,
            Device::Gpu => Some(Gpu::get(0)?),
        };
        Ok(Compute {
            gpu,
            busy_ns: AtomicU64::new(0),
        })
    }

    /// Where the products run: "cpu" or the GPU's name.
    pub fn name(&self) -> &str {
        self.gpu.as_ref().map_or("cpu", |g| g.name())
    }

    /// Seconds spent in products so far, uploads and downloads included.
    pub fn busy_seconds(&self) -> f64 {
        self.busy_ns.load(Ordering::Relaxed) as f64 * 1e-9
    }

    fn timed<R>(&self, f: impl FnOnce() -> R) -> R {
        let t0 = Instant::now();
        let r = f();
        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
        r
    }

    /// out[m, n] = a[m, k] · b[n, k]ᵀ.
    pub(crate) fn matmul(
        &self,
        a: &[f32],
        b: &[f32],
        out: &mut [f32],
        (m, k, n): (usize, usize, usize),
    ) -> Result<()> {
        self.timed(|| {
            let Some(gpu) = &self.gpu else {
                matmul(a, b, out, m, k, n);
                return Ok(());
            };
            let (da, db) = (gpu.upload(&a[..m * k])?, gpu.upload(&b[..n * k])?);
            let mut dc = gpu.alloc::<f32>(m * n)?;
            gemm::linear(gpu, &da, &db, &mut dc, (m, n, k), false)?;
            gpu.stream()
                .memcpy_dtoh(&dc, &mut out[..m * n])
                .map_err(GpuError::from)?;
            Ok(())
        })
    }

    /// out: [tokens, out_features] = x: [tokens, in_features] · Wᵀ + b of a dense linear.
    pub(crate) fn linear(&self, l: &Linear, x: &[f32], out: &mut [f32]) -> Result<()> {
        if self.gpu.is_none() {
            self.timed(|| l.forward(x, out));
            return Ok(());
        }
        let tokens = x.len() / l.in_features.max(1);
        self.matmul(x, &l.weight, out, (tokens, l.in_features, l.out_features))?;
        if let Some(bias) = &l.bias {
            for row in out.chunks_exact_mut(l.out_features) {
                row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
            }
        }
        Ok(())
    }

    /// xᵀ·y ([n, n]) for x, y: [rows, n] on the GPU; `None` on the CPU, whose Hessian update multiplies
    /// only the lower triangle in place (`Hessian::add_product`, timed through [`Compute::timed_cpu`]).
    pub(crate) fn gram(&self, x: &[f32], y: &[f32], n: usize) -> Result<Option<Vec<f32>>> {
        let Some(gpu) = &self.gpu else {
            return Ok(None);
        };
        self.timed(|| self.gram_on(gpu, x, y, n)).map(Some)
    }

    /// A product done on the CPU outside this type, counted as product time.
    pub(crate) fn timed_cpu<R>(&self, f: impl FnOnce() -> R) -> R {
        self.timed(f)
    }

    fn gram_on(&self, gpu: &Gpu, x: &[f32], y: &[f32], n: usize) -> Result<Vec<f32>> {
        let rows = x.len() / n.max(1);
        let dx = gpu.upload(x)?;
        let dy = if std::ptr::eq(x, y) {
            None
        } else {
            Some(gpu.upload(y)?)
        };
        let mut dg = gpu.alloc::<f32>(n * n)?;
        let a = Operand {
            data: &dx,
            transposed: true,
        };
        let b = Operand {
            data: dy.as_ref().unwrap_or(&dx),
            transposed: false,
        };
        gemm::matmul(gpu, a, b, &mut dg, (n, n, rows), 1.0, 0.0)?;
        Ok(gpu.download(&dg)?)
    }
}

/// The attention block up to o_proj's input for whole windows of `seq_len` tokens, each starting at
/// position 0: out [tokens, heads · head_dim] from `normed` ([tokens, hidden], input_layernorm's output).
/// q/k/v for every token in one product, then per window RoPE and causal (sliding-window) attention.
pub(crate) fn attention_context(
    compute: &Compute,
    layer: &DecoderLayer,
    normed: &[f32],
    seq_len: usize,
    rope: &RopeTables,
    out: &mut [f32],
) -> Result<()> {
    let d = layer.dims;
    let (q, kv) = (d.q_width(), d.kv_width());
    let width = q + 2 * kv;
    let tokens = normed.len() / d.hidden.max(1);
    if seq_len == 0 || tokens % seq_len != 0 || out.len() != tokens * q || rope.len() < seq_len {
        return Err(QuantError::Shape {
            what: "attention input",
            shape: format!("[windows · {seq_len}, {}]", d.hidden),
            expected: tokens.div_ceil(seq_len.max(1)) * seq_len * d.hidden,
            got: normed.len(),
        });
    }
    let mut qkv = vec![0f32; tokens * width]; // [tokens, q + 2·kv]
    compute.linear(&layer.qkv_proj, normed, &mut qkv)?;
    // q and k heads sit side by side at the start of each row: rotate them together.
    let layout = RopeLayout {
        row_stride: width,
        heads: d.heads + d.kv_heads,
        head_dim: d.head_dim,
        rotary_dim: d.rotary_dim,
    };
    let dims = AttentionDims {
        heads: d.heads,
        kv_heads: d.kv_heads,
        head_dim: d.head_dim,
        q_stride: width,
    };
    let scale = (d.head_dim as f32).powf(-0.5);
    let (cos, sin) = (rope.cos(), rope.sin());
    let table = cos.len() / rope.len().max(1) * seq_len;
    let mut k = vec![0f32; seq_len * kv]; // [seq_len, kv]
    let mut v = vec![0f32; seq_len * kv]; // [seq_len, kv]
    for (w, o) in qkv
        .chunks_exact_mut(seq_len * width)
        .zip(out.chunks_exact_mut(seq_len * q))
    {
        rope_apply(w, layout, &cos[..table], &sin[..table]);
        for ((row, k), v) in w
            .chunks_exact(width)
            .zip(k.chunks_exact_mut(kv))
            .zip(v.chunks_exact_mut(kv))
        {
            k.copy_from_slice(&row[q..q + kv]);
            v.copy_from_slice(&row[q + kv..]);
        }
        attention(w, &k, &v, dims, d.sliding_window, scale, o);
    }
    Ok(())
}

/// The MLP block up to down_proj's input: out [tokens, intermediate] = silu(gate) · up of `normed`
/// ([tokens, hidden], post_attention_layernorm's output).
pub(crate) fn mlp_activation(
    compute: &Compute,
    layer: &DecoderLayer,
    normed: &[f32],
    out: &mut [f32],
) -> Result<()> {
    compute.mlp(layer, normed, Some(out), None)
}

impl Compute {
    /// The MLP block of `normed` ([tokens, hidden]): act = silu(gate) · up ([tokens, intermediate]) into `act`
    /// and down_proj(act) ([tokens, hidden]) into `down`, each when given. On the GPU the activations stay on
    /// the device between the products (f32 `silu_mul` kernel) unless a linear has a bias.
    pub(crate) fn mlp(
        &self,
        layer: &DecoderLayer,
        normed: &[f32],
        act: Option<&mut [f32]>,
        down: Option<&mut [f32]>,
    ) -> Result<()> {
        let (gu, dn) = (&layer.gate_up_proj, &layer.down_proj);
        let (inter, hidden) = (layer.dims.intermediate, layer.dims.hidden);
        let tokens = normed.len() / hidden.max(1);
        match &self.gpu {
            Some(gpu) if gu.bias.is_none() && dn.bias.is_none() => self.timed(|| {
                let (dx, dw) = (gpu.upload(normed)?, gpu.upload(&gu.weight)?);
                let mut dgu = gpu.alloc::<f32>(tokens * 2 * inter)?; // [tokens, 2·intermediate]
                gemm::linear(gpu, &dx, &dw, &mut dgu, (tokens, 2 * inter, hidden), false)?;
                drop((dx, dw));
                let mut dact = gpu.alloc::<f32>(tokens * inter)?; // [tokens, intermediate]
                gpu_silu::silu_mul(gpu, &dgu, inter, &mut dact)?;
                drop(dgu);
                if let Some(act) = act {
                    gpu.stream()
                        .memcpy_dtoh(&dact, &mut act[..tokens * inter])
                        .map_err(GpuError::from)?;
                }
                if let Some(down) = down {
                    let dw = gpu.upload(&dn.weight)?;
                    let mut dy = gpu.alloc::<f32>(tokens * hidden)?; // [tokens, hidden]
                    gemm::linear(gpu, &dact, &dw, &mut dy, (tokens, hidden, inter), false)?;
                    gpu.stream()
                        .memcpy_dtoh(&dy, &mut down[..tokens * hidden])
                        .map_err(GpuError::from)?;
                }
                Ok(())
            }),
            _ => {
                let mut gate_up = vec![0f32; tokens * 2 * inter]; // [tokens, 2·intermediate]
                self.linear(gu, normed, &mut gate_up)?;
                let mut own = Vec::new();
                let act = match act {
                    Some(a) => a,
                    None => {
                        own.resize(tokens * inter, 0f32);
                        &mut own[..]
                    }
                };
                silu_mul(&gate_up, act, inter);
                match down {
                    Some(down) => self.linear(dn, act, down),
                    None => Ok(()),
                }
            }
        }
    }
}
