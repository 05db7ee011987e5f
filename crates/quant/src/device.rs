//! Where calibration's dense products run: the CPU (`olive_kernels::cpu::matmul`, `gemm`) or CUDA GPUs
//! (cuBLAS f32 through `olive_kernels::cuda::gemm`, fp32 operands and accumulation, no TF32), so the GPU's
//! results equal the CPU's up to the order of f32 additions. One code path serves both devices: the
//! quantizer asks [`Compute`] for x·Wᵀ (layer forwards, AWQ candidates, clip errors) and for the Gram matrices
//! xᵀy of GPTQ's Hessians. On a GPU a whole layer forward runs on the device through `OnDevice` (norms,
//! products, RoPE and attention, SwiGLU, residual adds, all f32; `stream`'s `composed_on_gpu`), as does AWQ's
//! search (`awq::gpu`); GPTQ's factorisation and column loop, RTN and value_hessian's attention weights stay on
//! the CPU. The layer pieces here follow `olive_nn::DecoderLayer`'s attention and MLP blocks (transformers' Llama
//! forward) with their linears computed by [`Compute`], over all calibration windows at once.
//!
//! On a GPU the weights of the layer being calibrated stay on it for the whole layer (`Compute::hold_layer`):
//! a product whose operand lies in a held weight reads the device copy, and every change the quantizer makes to
//! a held weight on the host is copied over at once (`Compute::changed`). With several GPUs (`Device::Gpu`
//! with `count` > 1) the decoder layers are spread in contiguous blocks as pipeline sharding does
//! ([`layer_gpu`]), each layer calibrated by the [`Compute`] of its GPU with the same products in the same
//! order, so the output does not depend on the number of GPUs (`placement`).

use std::borrow::Cow;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use olive_kernels::cpu::rows::{column_abs_mean as column_abs_mean_cpu, gather_rows_ref};
use olive_kernels::cpu::{attention, matmul, rope_apply, silu_mul, AttentionDims, RopeLayout};
use olive_kernels::cuda::attention_windows::{attention_windows_f32, WindowShape};
use olive_kernels::cuda::gemm::{self, Operand};
use olive_kernels::cuda::rmsnorm::rmsnorm_f32_as_cpu;
use olive_kernels::cuda::rows::{add_bias, column_abs_mean, gather_rows};
use olive_kernels::cuda::silu_mul::silu_mul as gpu_silu_mul;
use olive_kernels::cuda::{Gpu, GpuError};
use olive_nn::{DecoderLayer, Linear, RopeTables};

use crate::error::{QuantError, Result};

/// The device calibration runs on (`quantize --device`, and `--num_gpus` for several GPUs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The host CPU.
    #[default]
    Cpu,
    /// CUDA devices 0..count (f32 cuBLAS products; results equal the CPU's within float noise, and do not
    /// depend on `count`): decoder layer l of L runs on GPU l·count/L.
    Gpu {
        /// GPUs the decoder layers are spread over (1: GPU 0 alone).
        count: usize,
    },
}

impl Device {
    /// One GPU, CUDA device 0.
    pub const GPU: Device = Device::Gpu { count: 1 };
}

/// The GPU of decoder layer `layer` of `layers` when they are spread over `gpus` GPUs: contiguous blocks of
/// about layers/gpus layers, layer l on GPU l·gpus/layers (as pipeline sharding places them).
pub fn layer_gpu(layer: usize, layers: usize, gpus: usize) -> usize {
    if layers == 0 || gpus == 0 {
        return 0;
    }
    layer.min(layers - 1) * gpus / layers
}

/// A host weight kept on the device while its layer is calibrated.
#[derive(Debug)]
struct Held {
    /// Address and length (in f32) of the host weight it copies.
    addr: usize,
    len: usize,
    copy: HeldCopy,
}

#[derive(Debug)]
enum HeldCopy {
    /// On the GPU.
    Gpu(CudaSlice<f32>),
    /// The checking CPU compute of the unit tests: a host snapshot every product compares its operands with,
    /// so a change to a held weight that is not reported to [`Compute::changed`] fails the test on the CPU.
    #[cfg(test)]
    Snapshot(Vec<f32>),
}

/// Where `host` lies in a held weight: (index of the held weight, offset in f32).
fn find(held: &[Held], host: &[f32]) -> Option<(usize, usize)> {
    let (addr, len) = (host.as_ptr() as usize, host.len());
    if len == 0 {
        return None;
    }
    let size = std::mem::size_of::<f32>();
    held.iter()
        .position(|h| addr >= h.addr && addr + len * size <= h.addr + h.len * size)
        .map(|i| (i, (addr - held[i].addr) / size))
}

/// The products of one layer's calibration on one device, and the time spent in them.
#[derive(Debug)]
pub struct Compute {
    /// The GPU (cuBLAS f32); `None`: the host CPU (`olive_kernels::cpu::matmul`).
    gpu: Option<Arc<Gpu>>,
    /// "cpu", or "cuda:<ordinal> <name>".
    label: String,
    /// Nanoseconds spent in products so far (transfers included).
    busy_ns: AtomicU64,
    /// The weights kept on the device (`hold_layer` .. `release`).
    held: Mutex<Vec<Held>>,
    /// The checking CPU compute of the unit tests ([`HeldCopy::Snapshot`]).
    #[cfg(test)]
    checking: bool,
}

impl Compute {
    fn new(gpu: Option<Arc<Gpu>>, label: String) -> Self {
        Compute {
            gpu,
            label,
            busy_ns: AtomicU64::new(0),
            held: Mutex::new(Vec::new()),
            #[cfg(test)]
            checking: false,
        }
    }

    /// Products on the CPU.
    pub fn cpu() -> Self {
        Self::new(None, "cpu".into())
    }

    /// Products on CUDA device `ordinal` (a clear error where there is none).
    pub fn gpu(ordinal: usize) -> Result<Self> {
        let gpu = Gpu::get(ordinal)?;
        let label = format!("cuda:{ordinal} {}", gpu.name());
        Ok(Self::new(Some(gpu), label))
    }

    /// A CPU compute that keeps snapshots of held weights and checks, at every product, that a held operand
    /// still equals its snapshot (what a GPU's held copy would hold); named "checking:<ordinal>".
    #[cfg(test)]
    pub(crate) fn checking(ordinal: usize) -> Self {
        Compute {
            checking: true,
            ..Self::new(None, format!("checking:{ordinal}"))
        }
    }

    /// Where the products run: "cpu" or "cuda:<ordinal> <GPU name>".
    pub fn name(&self) -> &str {
        &self.label
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

    fn held(&self) -> MutexGuard<'_, Vec<Held>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The GPU, made current on this thread (cuBLAS runs on the current device's context).
    fn bound(&self) -> Result<Option<&Gpu>> {
        match &self.gpu {
            Some(gpu) => {
                gpu.context().bind_to_thread().map_err(GpuError::from)?;
                Ok(Some(gpu))
            }
            None => Ok(None),
        }
    }

    /// Keeps the weights of `layer`'s four linears on the device until [`Compute::release`] (replacing what
    /// was held): its products then read them there. Nothing on the CPU.
    pub(crate) fn hold_layer(&self, layer: &DecoderLayer) -> Result<()> {
        let weights: [&[f32]; 4] = [
            &layer.qkv_proj.weight,
            &layer.o_proj.weight,
            &layer.gate_up_proj.weight,
            &layer.down_proj.weight,
        ];
        self.timed(|| {
            let mut held = self.held();
            held.clear();
            for w in weights {
                let copy = match self.bound()? {
                    Some(gpu) => HeldCopy::Gpu(gpu.upload(w)?),
                    #[cfg(test)]
                    None if self.checking => HeldCopy::Snapshot(w.to_vec()),
                    None => continue,
                };
                held.push(Held {
                    addr: w.as_ptr() as usize,
                    len: w.len(),
                    copy,
                });
            }
            Ok(())
        })
    }

    /// The host values of `w` (a held weight or part of one) changed: copies them to the device. Every change
    /// to a held weight must be reported before its next product.
    pub(crate) fn changed(&self, w: &[f32]) -> Result<()> {
        let mut held = self.held();
        let Some((i, offset)) = find(&held, w) else {
            return Ok(());
        };
        let range: Range<usize> = offset..offset + w.len();
        match &mut held[i].copy {
            HeldCopy::Gpu(device) => {
                if let Some(gpu) = self.bound()? {
                    self.timed(|| {
                        gpu.stream()
                            .memcpy_htod(w, &mut device.slice_mut(range))
                            .map_err(GpuError::from)
                    })?;
                }
            }
            #[cfg(test)]
            HeldCopy::Snapshot(s) => s[range].copy_from_slice(w),
        }
        Ok(())
    }

    /// Drops the held weights (before their layer is dropped: they are found by the host weights' addresses).
    pub(crate) fn release(&self) {
        self.held().clear();
    }

    /// A device view of `host`: its held copy, else a fresh upload kept in `tmp`.
    fn view<'a>(
        gpu: &Gpu,
        held: &'a [Held],
        host: &[f32],
        tmp: &'a mut Option<CudaSlice<f32>>,
    ) -> Result<CudaView<'a, f32>> {
        if let Some((i, offset)) = find(held, host) {
            #[allow(irrefutable_let_patterns)]
            if let HeldCopy::Gpu(d) = &held[i].copy {
                return Ok(d.slice(offset..offset + host.len()));
            }
        }
        Ok(tmp.insert(gpu.upload(host)?).slice(..))
    }

    /// The checking compute's test: each operand lying in a held weight equals its snapshot.
    #[cfg(test)]
    fn check(&self, operands: &[&[f32]]) {
        let held = self.held();
        for host in operands {
            if let Some((i, offset)) = find(&held, host) {
                if let HeldCopy::Snapshot(s) = &held[i].copy {
                    let same = s[offset..offset + host.len()]
                        .iter()
                        .zip(host.iter())
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "a held weight changed without Compute::changed");
                }
            }
        }
    }

    #[cfg(not(test))]
    fn check(&self, _operands: &[&[f32]]) {}

    /// out[m, n] = a[m, k] · b[n, k]ᵀ.
    pub(crate) fn matmul(
        &self,
        a: &[f32],
        b: &[f32],
        out: &mut [f32],
        (m, k, n): (usize, usize, usize),
    ) -> Result<()> {
        let (a, b) = (&a[..m * k], &b[..n * k]);
        self.timed(|| {
            let Some(gpu) = self.bound()? else {
                self.check(&[a, b]);
                matmul(a, b, out, m, k, n);
                return Ok(());
            };
            let held = self.held();
            let (mut ta, mut tb) = (None, None);
            let da = Self::view(gpu, &held, a, &mut ta)?;
            let db = Self::view(gpu, &held, b, &mut tb)?;
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
            self.check(&[&l.weight]);
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
        if self.gpu.is_none() {
            return Ok(None);
        }
        self.timed(|| match self.bound()? {
            Some(gpu) => gram_on(gpu, x, y, n).map(Some),
            None => Ok(None),
        })
    }

    /// A product done on the CPU outside this type, counted as product time.
    pub(crate) fn timed_cpu<R>(&self, f: impl FnOnce() -> R) -> R {
        self.timed(f)
    }
}

/// The GPU of a [`Compute`] and the device copies of the layer it holds, for work that runs on the device from
/// start to end (AWQ's scale and clip search, `awq::gpu`).
pub(crate) struct OnDevice<'a> {
    /// The GPU, current on this thread.
    pub(crate) gpu: &'a Gpu,
    held: MutexGuard<'a, Vec<Held>>,
}

impl OnDevice<'_> {
    /// The held device copy of `host` (a held weight or part of one); `None` when it is not held.
    pub(crate) fn weight(&self, host: &[f32]) -> Option<CudaView<'_, f32>> {
        let (i, offset) = find(&self.held, host)?;
        #[allow(irrefutable_let_patterns)]
        if let HeldCopy::Gpu(d) = &self.held[i].copy {
            return Some(d.slice(offset..offset + host.len()));
        }
        None
    }

    /// [`OnDevice::weight`], writable: whoever writes it must leave it equal to `host` again (the held copy is
    /// what every later product reads).
    pub(crate) fn weight_mut(&mut self, host: &[f32]) -> Option<CudaViewMut<'_, f32>> {
        let (i, offset) = find(&self.held, host)?;
        #[allow(irrefutable_let_patterns)]
        if let HeldCopy::Gpu(d) = &mut self.held[i].copy {
            return Some(d.slice_mut(offset..offset + host.len()));
        }
        None
    }

    /// out: [tokens, out_features] = x · Wᵀ + b on the device, W read from its held copy (else uploaded).
    pub(crate) fn linear(
        &self,
        l: &Linear,
        x: &CudaSlice<f32>,
        tokens: usize,
    ) -> Result<CudaSlice<f32>> {
        let gpu = self.gpu;
        let mut out = gpu.alloc::<f32>(tokens * l.out_features)?;
        let shape = (tokens, l.out_features, l.in_features);
        match self.weight(&l.weight) {
            Some(w) => gemm::linear(gpu, x, &w, &mut out, shape, false)?,
            None => gemm::linear(gpu, x, &gpu.upload(&l.weight)?, &mut out, shape, false)?,
        }
        if let Some(b) = &l.bias {
            add_bias(gpu, &mut out, &gpu.upload(b)?)?;
        }
        Ok(out)
    }

    /// The MLP block up to down_proj's input on the device: silu(gate) · up ([tokens, intermediate]) of x
    /// ([tokens, hidden]), as the host's [`mlp_activation`].
    pub(crate) fn mlp_activation(
        &self,
        layer: &DecoderLayer,
        x: &CudaSlice<f32>,
        tokens: usize,
    ) -> Result<CudaSlice<f32>> {
        let inter = layer.dims.intermediate;
        let gate_up = self.linear(&layer.gate_up_proj, x, tokens)?; // [tokens, 2·intermediate]
        let mut act = self.gpu.alloc::<f32>(tokens * inter)?;
        gpu_silu_mul(self.gpu, &gate_up, inter, &mut act)?;
        Ok(act)
    }

    /// out: [rows, weight.len()] = rmsnorm(x) on the device, bit for bit as the host's `rmsnorm` (GPTQ's
    /// error feedback turns a last-bit difference in a norm into different levels).
    pub(crate) fn rmsnorm(
        &self,
        x: &CudaSlice<f32>,
        weight: &[f32],
        eps: f32,
    ) -> Result<CudaSlice<f32>> {
        let mut out = self.gpu.alloc::<f32>(x.len())?;
        rmsnorm_f32_as_cpu(self.gpu, x, &self.gpu.upload(weight)?, eps, &mut out)?;
        Ok(out)
    }

    /// A window's cos and sin tables ([`window_tables`]) on the device.
    pub(crate) fn window_tables(
        &self,
        rope: &RopeTables,
        seq_len: usize,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
        let (cos, sin) = window_tables(rope, seq_len);
        Ok((self.gpu.upload(cos)?, self.gpu.upload(sin)?))
    }

    /// [`attend_windows`] on the device in f32: qkv_proj's output qkv ([windows · seq_len, q + 2·kv]) to the
    /// attention context [windows · seq_len, heads · head_dim], `rope` from [`OnDevice::window_tables`].
    pub(crate) fn attend_windows(
        &self,
        layer: &DecoderLayer,
        qkv: &CudaSlice<f32>,
        seq_len: usize,
        rope: &(CudaSlice<f32>, CudaSlice<f32>),
    ) -> Result<CudaSlice<f32>> {
        let d = layer.dims;
        let tokens = qkv.len() / (d.q_width() + 2 * d.kv_width()).max(1);
        let shape = WindowShape {
            windows: tokens / seq_len.max(1),
            seq: seq_len,
            heads: d.heads,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
            rotary_dim: d.rotary_dim,
            window: d.sliding_window,
            scale: (d.head_dim as f32).powf(-0.5),
        };
        let mut ctx = self.gpu.alloc::<f32>(tokens * d.q_width())?;
        attention_windows_f32(self.gpu, &shape, qkv, (&rope.0, &rope.1), &mut ctx)?;
        Ok(ctx)
    }
}

impl Compute {
    /// Runs `f` on the GPU with the held weights (its time counted as product time); `None` on the CPU. `f` must
    /// not call this compute's other methods (they wait for the held weights `f` has).
    pub(crate) fn on_device<R>(
        &self,
        f: impl FnOnce(&mut OnDevice<'_>) -> Result<R>,
    ) -> Result<Option<R>> {
        if self.gpu.is_none() {
            return Ok(None);
        }
        self.timed(|| {
            let Some(gpu) = self.bound()? else {
                return Ok(None);
            };
            let mut dev = OnDevice {
                gpu,
                held: self.held(),
            };
            let r = f(&mut dev)?;
            gpu.synchronize()?;
            Ok(Some(r))
        })
    }
}

/// xᵀ·y ([n, n]) for x, y: [rows, n] on `gpu`.
fn gram_on(gpu: &Gpu, x: &[f32], y: &[f32], n: usize) -> Result<Vec<f32>> {
    let dx = gpu.upload(x)?;
    let dy = if std::ptr::eq(x, y) {
        None
    } else {
        Some(gpu.upload(y)?)
    };
    gram_of(gpu, &dx, dy.as_ref().unwrap_or(&dx), n)
}

/// xᵀ·y ([n, n], on the host) for x, y: [rows, n] already on `gpu`.
fn gram_of(gpu: &Gpu, x: &CudaSlice<f32>, y: &CudaSlice<f32>, n: usize) -> Result<Vec<f32>> {
    let rows = x.len() / n.max(1);
    let mut dg = gpu.alloc::<f32>(n * n)?;
    let a = Operand {
        data: x,
        transposed: true,
    };
    let b = Operand {
        data: y,
        transposed: false,
    };
    gemm::matmul(gpu, a, b, &mut dg, (n, n, rows), 1.0, 0.0)?;
    Ok(gpu.download(&dg)?)
}

/// A linear group's input x ([tokens, width]) as a calibration hook sees it: in host memory (the CPU forward), or
/// on the GPU where the layer's forward left it. What a hook reads of it (AWQ's column means and row subsets,
/// GPTQ's xᵀx) is then computed there, and only that comes back.
pub(crate) enum GroupX<'a> {
    Host(&'a [f32]),
    Device(&'a CudaSlice<f32>),
}

impl GroupX<'_> {
    /// Elements of x.
    pub(crate) fn len(&self) -> usize {
        match self {
            GroupX::Host(x) => x.len(),
            GroupX::Device(x) => x.len(),
        }
    }

    /// x in host memory (a download from the GPU).
    pub(crate) fn to_host(&self, compute: &Compute) -> Result<Cow<'_, [f32]>> {
        match self {
            GroupX::Host(x) => Ok(Cow::Borrowed(x)),
            GroupX::Device(x) => Ok(Cow::Owned(device_step(compute, |dev| {
                Ok(dev.gpu.download(x)?)
            })?)),
        }
    }

    /// The rows `ids` of x: [ids.len(), width].
    pub(crate) fn rows(&self, compute: &Compute, width: usize, ids: &[u32]) -> Result<Vec<f32>> {
        match self {
            GroupX::Host(x) => Ok(gather_rows_ref(x, ids, width)),
            GroupX::Device(x) => device_step(compute, |dev| {
                let mut out = dev.gpu.alloc::<f32>(ids.len() * width)?;
                gather_rows(dev.gpu, x, width, ids, &mut out)?;
                Ok(dev.gpu.download(&out)?)
            }),
        }
    }

    /// Mean |x| per column (AWQ's x_mean), the same bits either way.
    pub(crate) fn column_abs_mean(&self, compute: &Compute, width: usize) -> Result<Vec<f32>> {
        match self {
            GroupX::Host(x) => Ok(column_abs_mean_cpu(x, width)),
            GroupX::Device(x) => device_step(compute, |dev| {
                Ok(dev.gpu.download(&column_abs_mean(dev.gpu, x, width)?)?)
            }),
        }
    }

    /// xᵀ·x ([n, n]) where x is on the GPU; `None` for a host x.
    pub(crate) fn gram(&self, compute: &Compute, n: usize) -> Result<Option<Vec<f32>>> {
        match self {
            GroupX::Host(_) => Ok(None),
            GroupX::Device(x) => device_step(compute, |dev| gram_of(dev.gpu, x, x, n)).map(Some),
        }
    }
}

/// [`Compute::on_device`] for a step of work already on the GPU.
pub(crate) fn device_step<R>(
    compute: &Compute,
    f: impl FnOnce(&mut OnDevice<'_>) -> Result<R>,
) -> Result<R> {
    compute
        .on_device(f)?
        .ok_or_else(|| QuantError::Unsupported("internal: the layer's GPU went away".into()))
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
    if seq_len == 0
        || !tokens.is_multiple_of(seq_len)
        || out.len() != tokens * q
        || rope.len() < seq_len
    {
        return Err(QuantError::Shape {
            what: "attention input",
            shape: format!("[windows · {seq_len}, {}]", d.hidden),
            expected: tokens.div_ceil(seq_len.max(1)) * seq_len * d.hidden,
            got: normed.len(),
        });
    }
    let mut qkv = vec![0f32; tokens * width]; // [tokens, q + 2·kv]
    compute.linear(&layer.qkv_proj, normed, &mut qkv)?;
    attend_windows(layer, &mut qkv, seq_len, rope, out);
    Ok(())
}

/// RoPE and causal (sliding-window) attention per window of `seq_len` tokens from qkv_proj's output
/// (qkv: [windows · seq_len, q + 2·kv], rotated in place) into out: [windows · seq_len, heads · head_dim].
pub(crate) fn attend_windows(
    layer: &DecoderLayer,
    qkv: &mut [f32],
    seq_len: usize,
    rope: &RopeTables,
    out: &mut [f32],
) {
    let d = layer.dims;
    let (q, kv) = (d.q_width(), d.kv_width());
    let width = q + 2 * kv;
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
    let (cos, sin) = window_tables(rope, seq_len);
    let mut k = vec![0f32; seq_len * kv]; // [seq_len, kv]
    let mut v = vec![0f32; seq_len * kv]; // [seq_len, kv]
    for (w, o) in qkv
        .chunks_exact_mut(seq_len * width)
        .zip(out.chunks_exact_mut(seq_len * q))
    {
        rope_apply(w, layout, cos, sin);
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
}

/// The cos and sin rows of positions 0..seq_len (a window's) from `rope`.
pub(crate) fn window_tables(rope: &RopeTables, seq_len: usize) -> (&[f32], &[f32]) {
    let table = rope.cos().len() / rope.len().max(1) * seq_len;
    (&rope.cos()[..table], &rope.sin()[..table])
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
    /// and down_proj(act) ([tokens, hidden]) into `down`, each when given.
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
