//! LoRA / QLoRA training on a CUDA GPU: the step of [`crate::train::LoraTrainer`] (transformers' Trainer loss
//! normalisation over gradient accumulation, torch's `clip_grad_norm_`, torch.optim.AdamW, the same schedules,
//! PEFT's initial weights) with the decoder's forward and hand-written backward in bf16 (fp32 accumulation) on
//! olive-kernels' CUDA kernels: flash attention with its log-sum-exp kept for the FlashAttention-2 backward, the
//! fused LoRA kernels on fp32 master weights, cross-entropy over f32 logits. The base stays frozen: only input
//! gradients flow through its linears (dy·W through cuBLAS; an int4 weight is dequantized to bf16 for it).

use std::ops::Range;
use std::sync::Arc;

use olive_data::Sample;
use olive_kernels::cpu::{clip_coefficient, AdamW, LoraDims, RopeLayout};
use olive_kernels::cuda::adamw::{adamw, global_norm};
use olive_kernels::cuda::attention::{self, AttentionShape, Grads, Inputs, Operand, Rows};
use olive_kernels::cuda::lora::{self, Adapter, LoraGrads, MAX_RANK};
use olive_kernels::cuda::rope::Positions;
use olive_kernels::cuda::rows::{copy_columns, gather_rows, Block};
use olive_kernels::cuda::w4a16::dequantize;
use olive_kernels::cuda::{
    convert, cross_entropy, gemm, rmsnorm, rope, silu_mul, CudaSlice, Gpu, GpuError,
};
use olive_model::adapter::LoraWeights;

use super::{Act, GpuLinear, GpuTransformer, Weight};
use crate::error::{NnError, Result as NnResult};
use crate::model::Transformer;
use crate::train::lora::{site_of, Site};
use crate::train::loss::targets;
use crate::train::trainer::Flat;
use crate::train::{LoraSpec, LoraTrainer, Result, StepStats, TrainConfig, TrainError};

/// One adapted module on the device: fp32 master weights, gradients and AdamW moments (PEFT layouts: a [r, in],
/// b [out, r]).
struct Module {
    /// Its name, rank, shapes and scale (the weights in it are the initial ones).
    meta: LoraWeights,
    site: Site,
    /// Output columns of the site's fused linear.
    rows: Range<usize>,
    a: CudaSlice<f32>,
    b: CudaSlice<f32>,
    grad_a: CudaSlice<f32>,
    grad_b: CudaSlice<f32>,
    /// m_a, v_a, m_b, v_b.
    moments: [CudaSlice<f32>; 4],
}

impl Module {
    fn dims(&self, tokens: usize) -> LoraDims {
        LoraDims {
            tokens,
            in_features: self.meta.in_features,
            out_features: self.rows.len(),
            rank: self.meta.rank,
            scale: self.meta.scale,
        }
    }

    fn adapter(&self) -> Adapter<'_> {
        Adapter {
            a: &self.a,
            b: &self.b,
        }
    }
}

/// A micro-batch on the device.
struct DeviceBatch {
    /// Rows and tokens per row.
    rows: usize,
    seq: usize,
    ids: Vec<u32>,
    /// attention_mask: [rows · seq].
    mask: CudaSlice<u8>,
    /// The token each position predicts (labels shifted left within its row), −100 where none: [rows · seq].
    labels: CudaSlice<i32>,
}

impl DeviceBatch {
    fn tokens(&self) -> usize {
        self.rows * self.seq
    }
}

/// What a layer's backward reads (all [tokens, ·] bf16 unless noted).
struct Saved {
    /// The layer's input: [tokens, hidden].
    x: CudaSlice<Act>,
    n1: CudaSlice<Act>,
    /// q and k rotated, v: [tokens, q + 2·kv].
    qkv: CudaSlice<Act>,
    /// [tokens, q]
    attn: CudaSlice<Act>,
    /// Attention's log-sum-exp: [rows, heads, seq] f32.
    lse: CudaSlice<f32>,
    /// After the attention residual: [tokens, hidden].
    mid: CudaSlice<Act>,
    n2: CudaSlice<Act>,
    /// [tokens, 2·intermediate]
    gate_up: CudaSlice<Act>,
    /// [tokens, intermediate]
    act: CudaSlice<Act>,
    /// Each of the layer's modules' x·Aᵀ: [tokens, rank] f32.
    u: Vec<Option<CudaSlice<f32>>>,
}

/// LoRA adapters being trained on a frozen [`GpuTransformer`].
pub struct GpuLoraTrainer {
    /// The CPU trainer: settings, batch checks and the initial adapters (its own weights are not trained).
    cpu: LoraTrainer,
    model: GpuTransformer,
    /// Sorted by layer, then projection.
    modules: Vec<Module>,
    /// Indices into `modules` of each layer's.
    by_layer: Vec<Range<usize>>,
    steps: usize,
}

fn device_error(e: GpuError) -> TrainError {
    TrainError::Nn(NnError::from(e))
}

impl GpuLoraTrainer {
    /// Fresh adapters as [`LoraTrainer::new`] makes them, trained on `gpu`. LoRA dropout is refused (the GPU step
    /// has no dropout masks), and so is a rank above the kernels' [`MAX_RANK`].
    pub fn new(
        model: Transformer,
        spec: &LoraSpec,
        cfg: TrainConfig,
        gpu: Arc<Gpu>,
    ) -> Result<Self> {
        if spec.dropout != 0.0 {
            return Err(TrainError::Setting {
                field: "dropout",
                expected: format!(
                    "0 on the GPU (found {}): GPU training has no LoRA dropout; train on the CPU for it",
                    spec.dropout
                ),
            });
        }
        if spec.r > MAX_RANK {
            return Err(TrainError::Setting {
                field: "r",
                expected: format!("at most {MAX_RANK} on the GPU (found {})", spec.r),
            });
        }
        let gpu_model = GpuTransformer::from_cpu(&model, gpu)?;
        let cpu = LoraTrainer::new(model, spec, cfg)?;
        let config = cpu.model().config().clone();
        let dev = gpu_model.gpu().clone();
        let mut weights = cpu.adapter();
        weights.sort_by_key(|w| w.module);
        let modules = weights
            .into_iter()
            .map(|w| {
                let (site, rows) = site_of(w.module.projection, &config);
                let zeros = |n: usize| dev.alloc::<f32>(n);
                Ok(Module {
                    site,
                    rows,
                    a: dev.upload(&w.a)?,
                    b: dev.upload(&w.b)?,
                    grad_a: zeros(w.a.len())?,
                    grad_b: zeros(w.b.len())?,
                    moments: [
                        zeros(w.a.len())?,
                        zeros(w.a.len())?,
                        zeros(w.b.len())?,
                        zeros(w.b.len())?,
                    ],
                    meta: w,
                })
            })
            .collect::<std::result::Result<Vec<_>, GpuError>>()
            .map_err(device_error)?;
        let by_layer = (0..config.num_hidden_layers)
            .map(|i| {
                let start = modules.partition_point(|m| m.meta.module.layer < i);
                let end = modules.partition_point(|m| m.meta.module.layer <= i);
                start..end
            })
            .collect();
        Ok(GpuLoraTrainer {
            cpu,
            model: gpu_model,
            modules,
            by_layer,
            steps: 0,
        })
    }

    /// The LoRA settings (for adapter_config.json).
    pub fn spec(&self) -> &LoraSpec {
        self.cpu.spec()
    }

    pub fn config(&self) -> &TrainConfig {
        self.cpu.config()
    }

    /// Optimizer steps done.
    pub fn steps_done(&self) -> usize {
        self.steps
    }

    /// The trained adapters as PEFT stores them (downloaded from the device).
    pub fn adapter(&self) -> Result<Vec<LoraWeights>> {
        let gpu = self.model.gpu();
        self.modules
            .iter()
            .map(|m| {
                Ok(LoraWeights {
                    a: gpu.download(&m.a).map_err(device_error)?,
                    b: gpu.download(&m.b).map_err(device_error)?,
                    ..m.meta.clone()
                })
            })
            .collect()
    }

    /// One optimizer step over the micro-batches of a gradient-accumulation step, as
    /// [`LoraTrainer::train_step`].
    pub fn train_step(&mut self, micro_batches: &[Vec<Sample>]) -> Result<StepStats> {
        let (loss, tokens) = self.accumulate(micro_batches)?;
        let gpu = self.model.gpu().clone();
        let grads: Vec<&CudaSlice<f32>> = self
            .modules
            .iter()
            .flat_map(|m| [&m.grad_a, &m.grad_b])
            .collect();
        let grad_norm = global_norm(&gpu, &grads).map_err(device_error)?;
        let cfg = self.cpu.config().clone();
        let coef = if cfg.max_grad_norm > 0.0 {
            clip_coefficient(grad_norm, cfg.max_grad_norm)
        } else {
            1.0
        };
        let learning_rate = cfg.learning_rate_at(self.steps);
        let step = AdamW {
            lr: learning_rate,
            beta1: cfg.adam_beta1,
            beta2: cfg.adam_beta2,
            eps: cfg.adam_epsilon,
            weight_decay: cfg.weight_decay,
        }
        .at_step((self.steps + 1) as i32);
        for m in &mut self.modules {
            let [ma, va, mb, vb] = &mut m.moments;
            adamw(&gpu, &mut m.a, &m.grad_a, ma, va, &step, coef).map_err(device_error)?;
            adamw(&gpu, &mut m.b, &m.grad_b, mb, vb, &step, coef).map_err(device_error)?;
        }
        self.steps += 1;
        Ok(StepStats {
            step: self.steps,
            loss: loss as f32,
            learning_rate,
            grad_norm: grad_norm as f32,
            tokens,
        })
    }

    /// Mean cross-entropy of `batch` over its label tokens, as [`LoraTrainer::eval_loss`].
    pub fn eval_loss(&self, batch: &[Sample]) -> Result<f32> {
        let flat = self.cpu.flatten(batch)?;
        let n = targets(&flat.labels, flat.seq).len();
        if n == 0 {
            return Err(TrainError::Batch("no label token to evaluate".into()));
        }
        let b = self.upload(&flat)?;
        let mut h = self.embed(&b)?;
        for i in 0..self.by_layer.len() {
            h = self.layer_forward(i, &b, h)?.0;
        }
        let (loss, _) = self.head(&h, &b, None)?;
        Ok((loss / n as f64) as f32)
    }

    /// Zeroes the gradients and adds those of every micro-batch; the step's mean loss and its input tokens.
    fn accumulate(&mut self, micro_batches: &[Vec<Sample>]) -> Result<(f64, usize)> {
        if micro_batches.is_empty() {
            return Err(TrainError::Batch(
                "a step needs at least one micro-batch".into(),
            ));
        }
        let flats = micro_batches
            .iter()
            .map(|b| self.cpu.flatten(b))
            .collect::<Result<Vec<_>>>()?;
        let n: usize = flats.iter().map(|f| targets(&f.labels, f.seq).len()).sum();
        if n == 0 {
            return Err(TrainError::Batch(
                "no label token in the step (every label after the first of a row is -100)".into(),
            ));
        }
        let stream = self.model.gpu().stream().clone();
        for m in &mut self.modules {
            stream
                .memset_zeros(&mut m.grad_a)
                .map_err(GpuError::from)
                .map_err(device_error)?;
            stream
                .memset_zeros(&mut m.grad_b)
                .map_err(GpuError::from)
                .map_err(device_error)?;
        }
        let inv_n = 1.0 / n as f32;
        let mut loss = 0.0;
        for flat in &flats {
            loss += self.forward_backward(flat, inv_n)?;
        }
        let tokens = flats.iter().map(|f| f.ids.len()).sum();
        Ok((loss / n as f64, tokens))
    }

    fn upload(&self, flat: &Flat) -> NnResult<DeviceBatch> {
        let gpu = self.model.gpu();
        let mut labels = vec![-100i32; flat.ids.len()];
        for t in targets(&flat.labels, flat.seq) {
            // Checked below the vocabulary size by `flatten`.
            labels[t.row] = t.token as i32;
        }
        Ok(DeviceBatch {
            rows: flat.ids.len() / flat.seq,
            seq: flat.seq,
            ids: flat.ids.clone(),
            mask: gpu.upload(&flat.mask)?,
            labels: gpu.upload(&labels)?,
        })
    }

    /// The embeddings of the batch's tokens: [tokens, hidden].
    fn embed(&self, b: &DeviceBatch) -> NnResult<CudaSlice<Act>> {
        let gpu = self.model.gpu();
        let hidden = self.model.dims.hidden;
        let mut h = gpu.alloc::<Act>(b.tokens() * hidden)?;
        gather_rows(gpu, &self.model.embed_tokens, hidden, &b.ids, &mut h)?;
        Ok(h)
    }

    /// Forward and backward of one micro-batch; adds its LoRA gradients (scaled by inv_n) and returns its summed
    /// loss. With gradient checkpointing only each layer's input is kept (the last layer's activations too).
    fn forward_backward(&mut self, flat: &Flat, inv_n: f32) -> Result<f64> {
        let b = self.upload(flat)?;
        let layers = self.by_layer.len();
        let recompute = |i: usize| self.cpu.config().gradient_checkpointing && i + 1 != layers;
        let mut saved: Vec<Option<Saved>> = Vec::with_capacity(layers);
        let mut inputs: Vec<Option<CudaSlice<Act>>> = Vec::with_capacity(layers);
        let mut h = self.embed(&b)?;
        for i in 0..layers {
            let (out, s) = self.layer_forward(i, &b, h)?;
            if recompute(i) {
                inputs.push(Some(s.x));
                saved.push(None);
            } else {
                inputs.push(None);
                saved.push(Some(s));
            }
            h = out;
        }
        let (loss, dh) = self.head(&h, &b, Some(inv_n))?;
        drop(h);
        let mut dh = dh.expect("head returns a gradient when given inv_n");
        for i in (0..layers).rev() {
            let s = match (saved[i].take(), inputs[i].take()) {
                (Some(s), _) => s,
                (None, Some(x)) => self.layer_forward(i, &b, x)?.1,
                (None, None) => unreachable!("every layer keeps its input or its activations"),
            };
            dh = self.layer_backward(i, &b, &s, dh)?;
        }
        Ok(loss)
    }

    /// Final norm, lm_head (f32 logits) and cross-entropy: the summed loss and, with `inv_n`, the gradient of
    /// (loss · inv_n) with respect to the last layer's output.
    fn head(
        &self,
        h: &CudaSlice<Act>,
        b: &DeviceBatch,
        inv_n: Option<f32>,
    ) -> NnResult<(f64, Option<CudaSlice<Act>>)> {
        let gpu = &**self.model.gpu();
        let m = &self.model;
        let (t, hidden, vocab) = (b.tokens(), m.dims.hidden, m.config.vocab_size);
        let eps = m.dims.rms_norm_eps;
        let mut normed = gpu.alloc::<Act>(t * hidden)?; // [t, hidden]
        rmsnorm::rmsnorm(gpu, h, &m.norm, eps, &mut normed)?;
        let head = m.lm_head.as_ref().unwrap_or(&m.embed_tokens); // [vocab, hidden]
        let mut logits = gpu.alloc::<f32>(t * vocab)?; // [t, vocab]
        gemm::linear_f32_out(gpu, &normed, head, &mut logits, (t, vocab, hidden))?;
        let Some(inv_n) = inv_n else {
            let losses = cross_entropy::cross_entropy(gpu, &logits, &b.labels, vocab)?;
            return Ok((sum(&gpu.download(&losses)?), None));
        };
        let losses =
            cross_entropy::cross_entropy_backward(gpu, &mut logits, &b.labels, vocab, inv_n)?;
        let d_logits = convert::from_f32::<Act>(gpu, &logits)?; // [t, vocab]
        drop(logits);
        let mut d_normed = gpu.alloc::<Act>(t * hidden)?;
        gemm::matmul(
            gpu,
            gemm::Operand {
                data: &d_logits,
                transposed: false,
            },
            gemm::Operand {
                data: head,
                transposed: false,
            },
            &mut d_normed,
            (t, hidden, vocab),
            1.0,
            0.0,
        )?;
        let mut dh = gpu.alloc::<Act>(t * hidden)?;
        rmsnorm::rmsnorm_backward(gpu, h, &m.norm, eps, &d_normed, &mut dh, false)?;
        Ok((sum(&gpu.download(&losses)?), Some(dh)))
    }

    /// y (rows of `width`) += every module of layer `layer` at `site` applied to x: [tokens, in]; keeps their u.
    #[allow(clippy::too_many_arguments)]
    fn lora_forward(
        &self,
        layer: usize,
        site: Site,
        x: &CudaSlice<Act>,
        y: &mut CudaSlice<Act>,
        width: usize,
        tokens: usize,
        u: &mut [Option<CudaSlice<f32>>],
    ) -> NnResult<()> {
        let gpu = &**self.model.gpu();
        let range = self.by_layer[layer].clone();
        for (k, m) in self.modules[range].iter().enumerate() {
            if m.site != site {
                continue;
            }
            let d = m.dims(tokens);
            let mut uk = gpu.alloc::<f32>(tokens * d.rank)?;
            let xo = Operand {
                data: x,
                rows: Rows::packed(d.in_features),
            };
            let yr = Rows {
                offset: m.rows.start,
                stride: width,
            };
            lora::forward(gpu, &d, xo, m.adapter(), (&mut *y, yr), &mut uk)?;
            u[k] = Some(uk);
        }
        Ok(())
    }
}

fn sum(losses: &[f32]) -> f64 {
    losses.iter().map(|&l| l as f64).sum()
}

/// dx: [tokens, in] = dy·W of the frozen linear `lin` plus the input gradients of `modules` at `site`; adds their
/// weight gradients. x: [tokens, in] is the linear's input, dy: [tokens, out], u the modules' forward products.
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    gpu: &Gpu,
    lin: &GpuLinear,
    modules: &mut [Module],
    site: Site,
    x: &CudaSlice<Act>,
    u: &[Option<CudaSlice<f32>>],
    dy: &CudaSlice<Act>,
    tokens: usize,
) -> NnResult<CudaSlice<Act>> {
    let (n_in, n_out) = (lin.in_features, lin.out_features);
    let mut dx = gpu.alloc::<Act>(tokens * n_in)?; // [tokens, in]
    let dense;
    let w = match &lin.weight {
        Weight::Dense(w) => w,
        Weight::Int4(q) => {
            dense = dequantize(gpu, q)?; // [out, in]
            &dense
        }
    };
    let plain = |data| gemm::Operand {
        data,
        transposed: false,
    };
    gemm::matmul(
        gpu,
        plain(dy),
        plain(w),
        &mut dx,
        (tokens, n_in, n_out),
        1.0,
        0.0,
    )?;
    for (k, m) in modules.iter_mut().enumerate() {
        if m.site != site {
            continue;
        }
        let d = m.dims(tokens);
        let uk = u[k]
            .as_ref()
            .expect("the forward keeps u for every module of its site");
        let dy_rows = Rows {
            offset: m.rows.start,
            stride: n_out,
        };
        lora::backward(
            gpu,
            &d,
            Operand {
                data: x,
                rows: Rows::packed(n_in),
            },
            Operand {
                data: dy,
                rows: dy_rows,
            },
            uk,
            Adapter { a: &m.a, b: &m.b },
            LoraGrads {
                grad_a: &mut m.grad_a,
                grad_b: &mut m.grad_b,
                dx: Some((&mut dx, Rows::packed(n_in))),
            },
        )?;
    }
    Ok(dx)
}

impl GpuLoraTrainer {
    fn rope_layout(&self) -> RopeLayout {
        let d = self.model.dims;
        RopeLayout {
            row_stride: d.q_width() + 2 * d.kv_width(),
            heads: d.heads + d.kv_heads,
            head_dim: d.head_dim,
            rotary_dim: d.rotary_dim,
        }
    }

    fn attention_shape(&self, b: &DeviceBatch) -> AttentionShape {
        let d = self.model.dims;
        AttentionShape {
            batch: b.rows,
            tokens: b.seq,
            kv_len: b.seq,
            heads: d.heads,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
            window: d.sliding_window,
            scale: 1.0 / (d.head_dim as f32).sqrt(),
        }
    }

    /// Runs layer `i` with its adapters on x: [tokens, hidden]; its output and what its backward reads.
    fn layer_forward(
        &self,
        i: usize,
        b: &DeviceBatch,
        x: CudaSlice<Act>,
    ) -> NnResult<(CudaSlice<Act>, Saved)> {
        let gpu = &**self.model.gpu();
        let d = self.model.dims;
        let layer = &self.model.layers[i];
        let (t, eps) = (b.tokens(), d.rms_norm_eps);
        let (q_w, kv_w) = (d.q_width(), d.kv_width());
        let qkv_w = q_w + 2 * kv_w;
        let mut u = vec![None; self.by_layer[i].len()];
        let mut scratch = gpu.alloc::<Act>(t * d.hidden)?; // an int4 product before it is added
        let mut n1 = gpu.alloc::<Act>(t * d.hidden)?; // [t, hidden]
        rmsnorm::rmsnorm(gpu, &x, &layer.input_layernorm, eps, &mut n1)?;
        let mut qkv = gpu.alloc::<Act>(t * qkv_w)?; // [t, q + 2·kv]
        layer
            .qkv_proj
            .forward(gpu, &n1, t, &mut qkv, false, &mut scratch)?;
        self.lora_forward(i, Site::Qkv, &n1, &mut qkv, qkv_w, t, &mut u)?;
        let positions = Positions {
            seq: b.seq,
            offset: 0,
        };
        rope::rope(
            gpu,
            &mut qkv,
            self.rope_layout(),
            &self.model.freqs,
            positions,
        )?;
        let shape = self.attention_shape(b);
        let mut attn = gpu.alloc::<Act>(t * q_w)?; // [t, q]
        let mut lse = gpu.alloc::<f32>(t * d.heads)?; // [rows, heads, seq]
        let inputs = qkv_inputs(&qkv, &b.mask, q_w, kv_w);
        attention::forward(
            gpu,
            &shape,
            &inputs,
            (&mut attn, Rows::packed(q_w)),
            Some(&mut lse),
        )?;
        let mut mid = x.try_clone().map_err(GpuError::from)?; // [t, hidden]
        layer
            .o_proj
            .forward(gpu, &attn, t, &mut mid, true, &mut scratch)?;
        self.lora_forward(i, Site::O, &attn, &mut mid, d.hidden, t, &mut u)?;
        let mut n2 = gpu.alloc::<Act>(t * d.hidden)?;
        rmsnorm::rmsnorm(gpu, &mid, &layer.post_attention_layernorm, eps, &mut n2)?;
        let mut gate_up = gpu.alloc::<Act>(t * 2 * d.intermediate)?; // [t, 2·inter]
        layer
            .gate_up_proj
            .forward(gpu, &n2, t, &mut gate_up, false, &mut scratch)?;
        self.lora_forward(
            i,
            Site::GateUp,
            &n2,
            &mut gate_up,
            2 * d.intermediate,
            t,
            &mut u,
        )?;
        let mut act = gpu.alloc::<Act>(t * d.intermediate)?; // [t, inter]
        silu_mul::silu_mul(gpu, &gate_up, d.intermediate, &mut act)?;
        let mut out = mid.try_clone().map_err(GpuError::from)?; // [t, hidden]
        layer
            .down_proj
            .forward(gpu, &act, t, &mut out, true, &mut scratch)?;
        self.lora_forward(i, Site::Down, &act, &mut out, d.hidden, t, &mut u)?;
        let saved = Saved {
            x,
            n1,
            qkv,
            attn,
            lse,
            mid,
            n2,
            gate_up,
            act,
            u,
        };
        Ok((out, saved))
    }

    /// The gradient of layer i's input from dy (its output's), both [tokens, hidden]; adds the LoRA gradients of
    /// its modules on the way.
    fn layer_backward(
        &mut self,
        i: usize,
        b: &DeviceBatch,
        s: &Saved,
        dy: CudaSlice<Act>,
    ) -> NnResult<CudaSlice<Act>> {
        let gpu = self.model.gpu().clone();
        let gpu = &*gpu;
        let d = self.model.dims;
        let layer = &self.model.layers[i];
        let (shape, layout) = (self.attention_shape(b), self.rope_layout());
        let modules = &mut self.modules[self.by_layer[i].clone()];
        let (t, eps) = (b.tokens(), d.rms_norm_eps);
        let (q_w, kv_w) = (d.q_width(), d.kv_width());
        let qkv_w = q_w + 2 * kv_w;
        // MLP block: out = mid + down(silu(gate)·up)(rmsnorm(mid)).
        let d_act = linear_backward(
            gpu,
            &layer.down_proj,
            modules,
            Site::Down,
            &s.act,
            &s.u,
            &dy,
            t,
        )?;
        let mut d_gate_up = gpu.alloc::<Act>(t * 2 * d.intermediate)?;
        silu_mul::silu_mul_backward(gpu, &s.gate_up, &d_act, d.intermediate, &mut d_gate_up)?;
        drop(d_act);
        let d_n2 = linear_backward(
            gpu,
            &layer.gate_up_proj,
            modules,
            Site::GateUp,
            &s.n2,
            &s.u,
            &d_gate_up,
            t,
        )?;
        drop(d_gate_up);
        let mut d_mid = dy;
        rmsnorm::rmsnorm_backward(
            gpu,
            &s.mid,
            &layer.post_attention_layernorm,
            eps,
            &d_n2,
            &mut d_mid,
            true,
        )?;
        drop(d_n2);
        // Attention block: mid = x + o_proj(attention(rope(qkv(rmsnorm(x))))).
        let d_attn = linear_backward(
            gpu,
            &layer.o_proj,
            modules,
            Site::O,
            &s.attn,
            &s.u,
            &d_mid,
            t,
        )?;
        // f32 gradients of q, k, v: [t, q], [t, kv], [t, kv].
        let (mut dq, mut dk, mut dv) = (
            gpu.alloc::<f32>(t * q_w)?,
            gpu.alloc::<f32>(t * kv_w)?,
            gpu.alloc::<f32>(t * kv_w)?,
        );
        let grads = Grads {
            dq: (&mut dq, Rows::packed(q_w)),
            dk: (&mut dk, Rows::packed(kv_w)),
            dv: (&mut dv, Rows::packed(kv_w)),
        };
        attention::backward(
            gpu,
            &shape,
            &qkv_inputs(&s.qkv, &b.mask, q_w, kv_w),
            Operand {
                data: &s.attn,
                rows: Rows::packed(q_w),
            },
            Operand {
                data: &d_attn,
                rows: Rows::packed(q_w),
            },
            &s.lse,
            grads,
        )?;
        drop(d_attn);
        let positions = Positions {
            seq: b.seq,
            offset: 0,
        };
        for (g, heads, width) in [(&mut dq, d.heads, q_w), (&mut dk, d.kv_heads, kv_w)] {
            let l = RopeLayout {
                row_stride: width,
                heads,
                ..layout
            };
            rope::rope_backward(gpu, g, l, &self.model.freqs, positions)?;
        }
        let mut d_qkv = gpu.alloc::<Act>(t * qkv_w)?; // [t, q + 2·kv]
        for (g, offset, width) in [(&dq, 0, q_w), (&dk, q_w, kv_w), (&dv, q_w + kv_w, kv_w)] {
            let g = convert::from_f32::<Act>(gpu, g)?;
            copy_columns(
                gpu,
                (
                    &mut d_qkv,
                    Block {
                        offset,
                        stride: qkv_w,
                    },
                ),
                (
                    &g,
                    Block {
                        offset: 0,
                        stride: width,
                    },
                ),
                t,
                width,
            )?;
        }
        drop((dq, dk, dv));
        let d_n1 = linear_backward(
            gpu,
            &layer.qkv_proj,
            modules,
            Site::Qkv,
            &s.n1,
            &s.u,
            &d_qkv,
            t,
        )?;
        drop(d_qkv);
        let mut dx = d_mid;
        rmsnorm::rmsnorm_backward(gpu, &s.x, &layer.input_layernorm, eps, &d_n1, &mut dx, true)?;
        Ok(dx)
    }
}

/// q, k and v as column ranges of the fused qkv rows, with the batch's key mask.
fn qkv_inputs<'a>(
    qkv: &'a CudaSlice<Act>,
    mask: &'a CudaSlice<u8>,
    q_w: usize,
    kv_w: usize,
) -> Inputs<'a, Act> {
    let stride = q_w + 2 * kv_w;
    let at = |offset| Operand {
        data: qkv,
        rows: Rows { offset, stride },
    };
    Inputs {
        q: at(0),
        k: at(q_w),
        v: at(q_w + kv_w),
        key_mask: Some(mask),
    }
}
