//! One decoder layer of the GPU trainer: the forward pass of transformers' LlamaDecoderLayer over padded rows with
//! LoRA (and its dropout) on the fused linears, keeping what the backward reads, and the backward pass (frozen
//! weights: input gradients only, plus the LoRA gradients), as the CPU trainer's `train::layer` computes them.

use olive_kernels::cpu::RopeLayout;
use olive_kernels::cuda::attention::{self, AttentionShape, Grads, Inputs, Operand, Rows};
use olive_kernels::cuda::dropout::{dropout, DropoutMask};
use olive_kernels::cuda::lora::{self, Adapter, LoraGrads};
use olive_kernels::cuda::rope::Positions;
use olive_kernels::cuda::rows::copy_columns;
use olive_kernels::cuda::w4a16::dequantize;
use olive_kernels::cuda::{convert, gemm, rmsnorm, rope, silu_mul, CudaSlice, Gpu, GpuError};

use super::{DeviceBatch, GpuLoraTrainer, Module, Saved};
use crate::error::Result as NnResult;
use crate::gpu::{Act, GpuLinear, Weight};
use crate::train::lora::{mix, Dropout, Site};

/// dx: [tokens, in] = dy·W of the frozen linear `lin` plus the input gradients of `modules` (the first's global
/// index `first`) at `site`; adds their weight gradients. x: [tokens, in] is the linear's input, dy: [tokens,
/// out], u the modules' forward products; with dropout, the forward's masks apply to x and to x's gradient.
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    gpu: &Gpu,
    lin: &GpuLinear,
    (modules, first): (&mut [Module], usize),
    dropout: Option<Dropout>,
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
        let dropped = masked(gpu, x, dropout, first + k)?;
        // Dropout is linear in its input: its gradient is the same mask on g·A, added after.
        let mut dx_lora = match dropped {
            Some(_) => Some(gpu.alloc::<Act>(tokens * n_in)?),
            None => None,
        };
        lora::backward(
            gpu,
            &d,
            Operand {
                data: dropped.as_ref().unwrap_or(x),
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
                dx: Some((dx_lora.as_mut().unwrap_or(&mut dx), Rows::packed(n_in))),
            },
        )?;
        if let (Some(g), Some(d)) = (dx_lora, dropout) {
            dropout_mask(gpu, &g, d, first + k, &mut dx, true)?;
        }
    }
    Ok(dx)
}

/// out (+)= dropout of x with module `index`'s mask in the forward of `d` (the CPU trainer's stream: mix(key,
/// index)).
fn dropout_mask(
    gpu: &Gpu,
    x: &CudaSlice<Act>,
    d: Dropout,
    index: usize,
    out: &mut CudaSlice<Act>,
    accumulate: bool,
) -> NnResult<()> {
    let mask = DropoutMask {
        p: d.p,
        key: mix(&[d.key, index as u64]),
    };
    Ok(dropout(gpu, x, mask, out, accumulate)?)
}

/// dropout(x) for module `index`, or None without dropout.
fn masked(
    gpu: &Gpu,
    x: &CudaSlice<Act>,
    d: Option<Dropout>,
    index: usize,
) -> NnResult<Option<CudaSlice<Act>>> {
    let Some(d) = d.filter(|d| d.p > 0.0) else {
        return Ok(None);
    };
    let mut out = gpu.alloc::<Act>(x.len())?;
    dropout_mask(gpu, x, d, index, &mut out, false)?;
    Ok(Some(out))
}

impl GpuLoraTrainer {
    /// y (rows of `width`) += every module of layer `layer` at `site` applied to dropout(x), x: [tokens, in];
    /// keeps their u.
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
        dropout: Option<Dropout>,
    ) -> NnResult<()> {
        let gpu = &**self.model.gpu();
        let range = self.by_layer[layer].clone();
        for (k, m) in self.modules[range.clone()].iter().enumerate() {
            if m.site != site {
                continue;
            }
            let d = m.dims(tokens);
            let mut uk = gpu.alloc::<f32>(tokens * d.rank)?;
            let dropped = masked(gpu, x, dropout, range.start + k)?;
            let xo = Operand {
                data: dropped.as_ref().unwrap_or(x),
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
    pub(super) fn layer_forward(
        &self,
        i: usize,
        b: &DeviceBatch,
        x: CudaSlice<Act>,
        dropout: Option<Dropout>,
    ) -> NnResult<(CudaSlice<Act>, Saved)> {
        let gpu = &**self.model.gpu();
        let d = self.model.dims;
        let layer = &self.model.layers[i];
        let (t, eps) = (b.tokens(), d.rms_norm_eps);
        let (q_w, kv_w) = (d.q_width(), d.kv_width());
        let qkv_w = q_w + 2 * kv_w;
        let mut u = vec![None; self.by_layer[i].len()];
        let mut n1 = gpu.alloc::<Act>(t * d.hidden)?; // [t, hidden]
        rmsnorm::rmsnorm(gpu, &x, &layer.input_layernorm, eps, &mut n1)?;
        let mut qkv = gpu.alloc::<Act>(t * qkv_w)?; // [t, q + 2·kv]
        layer.qkv_proj.forward(gpu, &n1, t, &mut qkv, false)?;
        self.lora_forward(i, Site::Qkv, &n1, &mut qkv, qkv_w, t, &mut u, dropout)?;
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
        layer.o_proj.forward(gpu, &attn, t, &mut mid, true)?;
        self.lora_forward(i, Site::O, &attn, &mut mid, d.hidden, t, &mut u, dropout)?;
        let mut n2 = gpu.alloc::<Act>(t * d.hidden)?;
        rmsnorm::rmsnorm(gpu, &mid, &layer.post_attention_layernorm, eps, &mut n2)?;
        let mut gate_up = gpu.alloc::<Act>(t * 2 * d.intermediate)?; // [t, 2·inter]
        layer
            .gate_up_proj
            .forward(gpu, &n2, t, &mut gate_up, false)?;
        self.lora_forward(
            i,
            Site::GateUp,
            &n2,
            &mut gate_up,
            2 * d.intermediate,
            t,
            &mut u,
            dropout,
        )?;
        let mut act = gpu.alloc::<Act>(t * d.intermediate)?; // [t, inter]
        silu_mul::silu_mul(gpu, &gate_up, d.intermediate, &mut act)?;
        let mut out = mid.try_clone().map_err(GpuError::from)?; // [t, hidden]
        layer.down_proj.forward(gpu, &act, t, &mut out, true)?;
        self.lora_forward(i, Site::Down, &act, &mut out, d.hidden, t, &mut u, dropout)?;
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
    pub(super) fn layer_backward(
        &mut self,
        i: usize,
        b: &DeviceBatch,
        s: &Saved,
        dy: CudaSlice<Act>,
        dropout: Option<Dropout>,
    ) -> NnResult<CudaSlice<Act>> {
        let gpu = self.model.gpu().clone();
        let gpu = &*gpu;
        let d = self.model.dims;
        let layer = &self.model.layers[i];
        let (shape, layout) = (self.attention_shape(b), self.rope_layout());
        let first = self.by_layer[i].start;
        let modules = &mut self.modules[self.by_layer[i].clone()];
        let (t, eps) = (b.tokens(), d.rms_norm_eps);
        let (q_w, kv_w) = (d.q_width(), d.kv_width());
        let qkv_w = q_w + 2 * kv_w;
        // MLP block: out = mid + down(silu(gate)·up)(rmsnorm(mid)).
        let d_act = linear_backward(
            gpu,
            &layer.down_proj,
            (&mut *modules, first),
            dropout,
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
            (&mut *modules, first),
            dropout,
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
            (&mut *modules, first),
            dropout,
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
                    Rows {
                        offset,
                        stride: qkv_w,
                    },
                ),
                (&g, Rows::packed(width)),
                t,
                width,
            )?;
        }
        drop((dq, dk, dv));
        let d_n1 = linear_backward(
            gpu,
            &layer.qkv_proj,
            (&mut *modules, first),
            dropout,
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
