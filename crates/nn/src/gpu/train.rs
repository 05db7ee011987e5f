//! LoRA / QLoRA training on a CUDA GPU: the step of [`crate::train::LoraTrainer`] (transformers' Trainer loss
//! normalisation over gradient accumulation, torch's `clip_grad_norm_`, torch.optim.AdamW, the same schedules,
//! PEFT's initial weights) with the decoder's forward and hand-written backward in bf16 (fp32 accumulation) on
//! olive-kernels' CUDA kernels: flash attention with its log-sum-exp kept for the FlashAttention-2 backward, the
//! fused LoRA kernels on fp32 master weights, cross-entropy over f32 logits. The base stays frozen: only input
//! gradients flow through its linears (dy·W through cuBLAS; an int4 weight is dequantized to bf16 for it).
//!
//! Data-parallel over several GPUs ([`GpuLoraTrainer::distribute`]): each rank runs its share of the global batch,
//! the loss is normalised by the label tokens of the whole global batch, and the LoRA gradients are summed over the
//! ranks by NCCL in buckets of layers, each queued as soon as its layers' backward is done (on the communicator's
//! stream, overlapping the backward of the layers below), so every rank takes the same optimizer step.

use std::ops::Range;
use std::sync::Arc;

use olive_data::Sample;
use olive_dist::nccl::{Comm, CommError};
use olive_kernels::cpu::{clip_coefficient, AdamW, LoraDims};
use olive_kernels::cuda::adamw::{adamw, global_norm};
use olive_kernels::cuda::lora::{Adapter, MAX_RANK};
use olive_kernels::cuda::rows::gather_rows;
use olive_kernels::cuda::{convert, cross_entropy, gemm, rmsnorm, CudaSlice, Gpu, GpuError};
use olive_model::adapter::LoraWeights;

use super::{Act, GpuTransformer};
use crate::error::{NnError, Result as NnResult};
use crate::model::Transformer;
use crate::train::lora::{mix, site_of, Dropout, Site};
use crate::train::loss::targets;
use crate::train::trainer::Flat;
use crate::train::{LoraSpec, LoraTrainer, Result, StepStats, TrainConfig, TrainError};

mod layer;

/// The size at which a bucket of gradients is all-reduced, as torch DDP's `bucket_cap_mb` (25 MiB): a bucket a
/// layer would pay NCCL's launch and synchronisation many times over for LoRA's small gradients.
const BUCKET_BYTES: usize = 25 << 20;

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
    /// The other ranks of a data-parallel run.
    comm: Option<Comm>,
}

fn device_error(e: GpuError) -> TrainError {
    TrainError::Nn(NnError::from(e))
}

fn comm_error(e: CommError) -> TrainError {
    match e {
        CommError::Gpu(e) => device_error(e),
        other => TrainError::Distributed(other.to_string()),
    }
}

impl GpuLoraTrainer {
    /// Fresh adapters as [`LoraTrainer::new`] makes them, trained on `gpu` (LoRA dropout draws the CPU trainer's
    /// masks); a rank above the kernels' [`MAX_RANK`] is refused.
    pub fn new(
        model: Transformer,
        spec: &LoraSpec,
        cfg: TrainConfig,
        gpu: Arc<Gpu>,
    ) -> Result<Self> {
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
            comm: None,
        })
    }

    /// Trains as one rank of `comm`'s data-parallel group: rank 0's initial adapters are given to every rank, and
    /// from here on each [`GpuLoraTrainer::train_step`] takes this rank's rows of the global batch. `comm` must be
    /// on this trainer's GPU.
    pub fn distribute(&mut self, comm: Comm) -> Result<()> {
        if !Arc::ptr_eq(comm.gpu(), self.model.gpu()) {
            return Err(TrainError::Distributed(format!(
                "the communicator is on {:?}, the trainer on {:?}",
                comm.gpu(),
                self.model.gpu()
            )));
        }
        for m in &mut self.modules {
            comm.broadcast_from_leader(&mut m.a).map_err(comm_error)?;
            comm.broadcast_from_leader(&mut m.b).map_err(comm_error)?;
        }
        self.comm = Some(comm);
        Ok(())
    }

    /// The sums of `values` over the ranks (the values themselves when training alone).
    pub fn sum_over_ranks(&self, values: &[f64]) -> Result<Vec<f64>> {
        match &self.comm {
            Some(comm) => comm.sum_host(values).map_err(comm_error),
            None => Ok(values.to_vec()),
        }
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
    /// [`LoraTrainer::train_step`]. In a data-parallel run `micro_batches` are this rank's rows of each
    /// micro-batch, every rank takes the same number of micro-batches, and the loss and tokens reported are the
    /// global batch's.
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
            h = self.layer_forward(i, &b, h, None)?.0;
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
        let local: usize = flats.iter().map(|f| targets(&f.labels, f.seq).len()).sum();
        let n = match &self.comm {
            Some(comm) => comm.sum_host(&[local as f64]).map_err(comm_error)?[0] as usize,
            None => local,
        };
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
        let last = flats.len() - 1;
        for (micro, flat) in flats.iter().enumerate() {
            loss += self.forward_backward(flat, micro, inv_n, micro == last)?;
        }
        let tokens = flats.iter().map(|f| f.ids.len()).sum::<usize>();
        let Some(comm) = &self.comm else {
            return Ok((loss / n as f64, tokens));
        };
        comm.wait().map_err(comm_error)?;
        let sums = comm.sum_host(&[loss, tokens as f64]).map_err(comm_error)?;
        Ok((sums[0] / n as f64, sums[1] as usize))
    }

    /// Queues the sum over the ranks of the LoRA gradients of `layers` as one bucket.
    fn reduce_layers(&mut self, layers: Range<usize>) -> Result<()> {
        let Some(comm) = &self.comm else {
            return Ok(());
        };
        let modules = self.by_layer[layers.start].start..self.by_layer[layers.end - 1].end;
        let mut grads: Vec<&mut CudaSlice<f32>> = self.modules[modules]
            .iter_mut()
            .flat_map(|m| [&mut m.grad_a, &mut m.grad_b])
            .collect();
        comm.all_reduce_sum(&mut grads).map_err(comm_error)
    }

    /// Bytes of layer `i`'s LoRA gradients.
    fn gradient_bytes(&self, i: usize) -> usize {
        let floats: usize = self.modules[self.by_layer[i].clone()]
            .iter()
            .map(|m| m.grad_a.len() + m.grad_b.len())
            .sum();
        floats * std::mem::size_of::<f32>()
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
    /// loss. With gradient checkpointing only each layer's input is kept (the last layer's activations too). With
    /// `reduce` (the step's last micro-batch, in a data-parallel run) the gradients are summed over the ranks in
    /// buckets of layers of about [`BUCKET_BYTES`], each queued as soon as its layers' backward is done.
    fn forward_backward(
        &mut self,
        flat: &Flat,
        micro: usize,
        inv_n: f32,
        reduce: bool,
    ) -> Result<f64> {
        let b = self.upload(flat)?;
        let (p, seed) = (self.cpu.spec().dropout, self.cpu.config().seed);
        // Alone, the CPU trainer's masks; in a group, each rank draws masks of its own.
        let key = match &self.comm {
            None => mix(&[seed, self.steps as u64, micro as u64]),
            Some(c) => mix(&[seed, self.steps as u64, micro as u64, c.rank() as u64]),
        };
        let dropout = (p > 0.0).then_some(Dropout { p, key });
        let layers = self.by_layer.len();
        let recompute = |i: usize| self.cpu.config().gradient_checkpointing && i + 1 != layers;
        let mut saved: Vec<Option<Saved>> = Vec::with_capacity(layers);
        let mut inputs: Vec<Option<CudaSlice<Act>>> = Vec::with_capacity(layers);
        let mut h = self.embed(&b)?;
        for i in 0..layers {
            let (out, s) = self.layer_forward(i, &b, h, dropout)?;
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
        let reduce = reduce && self.comm.is_some();
        // The bucket being filled: layers i.. up to bucket_end, and its bytes.
        let (mut bucket_end, mut bucket_bytes) = (layers, 0);
        for i in (0..layers).rev() {
            let s = match (saved[i].take(), inputs[i].take()) {
                (Some(s), _) => s,
                (None, Some(x)) => self.layer_forward(i, &b, x, dropout)?.1,
                (None, None) => unreachable!("every layer keeps its input or its activations"),
            };
            dh = self.layer_backward(i, &b, &s, dh, dropout)?;
            if reduce {
                bucket_bytes += self.gradient_bytes(i);
                if bucket_bytes >= BUCKET_BYTES || i == 0 {
                    self.reduce_layers(i..bucket_end)?;
                    (bucket_end, bucket_bytes) = (i, 0);
                }
            }
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
}

fn sum(losses: &[f32]) -> f64 {
    losses.iter().map(|&l| l as f64).sum()
}
