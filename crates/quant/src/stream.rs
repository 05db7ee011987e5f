//! Layer-streaming quantization of a Hugging Face Llama-family model (llama, mistral, phi3, qwen2) with RTN, AWQ
//! (`awq`, after AutoAWQ) or GPTQ (`gptq`, after AutoGPTQ's layer loop with `true_sequential`): the calibration
//! tokens are embedded (only their embedding rows are read), then one decoder layer at a time is loaded from the
//! memory-mapped checkpoint, run over the calibration sequences, quantized, written out as its own safetensors
//! shard (`writer`) and dropped, and its mapped pages released. Peak memory is one layer's f32 weights (two on a
//! GPU, where the next layer is read meanwhile), the calibration activations and that layer's Hessians, whatever
//! the number of layers. Over several GPUs each layer runs on the GPU of its block (`placement`), AWQ's blocks
//! concurrently (`pipeline`).
//!
//! Inputs of the next layer: GPTQ and RTN (with calibration) pass on the quantized layer's outputs, as AutoGPTQ
//! does; AWQ passes on the floating-point outputs, as AutoAWQ does. A layer's error is
//! ‖y_q − y_fp‖² / ‖y_fp − x‖²: the output error of the quantized layer relative to the layer's own update of the
//! residual stream, on the calibration tokens (RTN without calibration: ‖W_q − W‖² / ‖W‖² over its linears).
//!
//! GPTQ's v_proj uses the attention-weighted Hessian of `value_hessian` (attention sinks), the other linears
//! the Hessian of their inputs.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use olive_kernels::cpu::rmsnorm;
use olive_kernels::cuda::rows::add_assign;
use olive_kernels::cuda::CudaSlice;
use olive_model::quantized::QuantizedLinear;
use olive_model::{Checkpoint, ModelConfig};
use olive_nn::{DecoderLayer, Rope, RopeTables};

use crate::awq::{awq_layer, AwqOptions, InputOf, LayerInputs};
use crate::calibration::{check_calibration, embed};
use crate::device::{attention_context, device_step, mlp_activation, Compute, Device, GroupX};
use crate::error::{QuantError, Result};
use crate::gptq::{gptq, GptqOptions, Hessian};
use crate::grid::QuantSpec;
use crate::head::Tables;
use crate::input::{layer_modules, refuse_quantized_config};
use crate::layout::{fit_gptq_v1_zeros, layer_tensors, quantization_config, resolve_format};
use crate::pipeline::awq_blocks;
use crate::placement::Placement;
use crate::rtn::rtn;
use crate::value_hessian::value_hessian;
use crate::writer::{ModelWriter, OutTensor};

pub use crate::awq::Selected;

/// The quantization algorithm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Round to nearest on the min-max grid; needs no calibration.
    Rtn,
    /// Activation-aware scaling and clipping, then round to nearest.
    Awq(AwqOptions),
    /// GPTQ with calibration Hessians.
    Gptq(GptqOptions),
}

/// The packed layout written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// AWQ → AutoAWQ GEMM when every linear fits it (bits 4, group dividing in_features, out a multiple of 8),
    /// else GPTQ v1; RTN and GPTQ → GPTQ v1.
    Auto,
    /// GPTQ v1 (`quant_method: gptq`, `checkpoint_format: gptq`): bits 2, 3, 4, 8, ragged last group.
    GptqV1,
    /// AutoAWQ GEMM (`quant_method: awq`, `version: gemm`): bits 4, no ragged group, no act-order.
    AwqGemm,
    /// Olive's own (`quant_method: olive`, olive-ai 0.13 QuantLinear / QuantEmbedding): bits 2, 4, 8, groups
    /// dividing in_features, no act-order; the only layout with quantized embeddings.
    Olive,
}

impl Selected {
    /// Every decoder linear.
    pub const ALL: Selected = Selected {
        q: true,
        k: true,
        v: true,
        o: true,
        gate: true,
        up: true,
        down: true,
    };

    /// The projections named (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`,
    /// Phi-3's `qkv_proj` = q/k/v and `gate_up_proj` = gate/up); `lm_head` and `embed_tokens`
    /// too (returned as flags: quantize the lm_head, the embeddings).
    pub fn from_names(names: &[String]) -> Result<(Self, bool, bool)> {
        let mut s = Selected::NONE;
        let (mut lm_head, mut embeds) = (false, false);
        for name in names {
            match name.as_str() {
                "q_proj" => s.q = true,
                "k_proj" => s.k = true,
                "v_proj" => s.v = true,
                "qkv_proj" => (s.q, s.k, s.v) = (true, true, true),
                "o_proj" => s.o = true,
                "gate_proj" => s.gate = true,
                "up_proj" => s.up = true,
                "gate_up_proj" => (s.gate, s.up) = (true, true),
                "down_proj" => s.down = true,
                "lm_head" => lm_head = true,
                "embed_tokens" => embeds = true,
                other => {
                    return Err(QuantError::Unsupported(format!(
                        "modules: unknown module `{other}`; expected q_proj, k_proj, v_proj, qkv_proj, o_proj, \
                         gate_proj, up_proj, gate_up_proj, down_proj, lm_head, embed_tokens"
                    )))
                }
            }
        }
        if s == Selected::NONE && !lm_head && !embeds {
            return Err(QuantError::Unsupported(
                "modules: empty; name at least one decoder linear, lm_head or embed_tokens".into(),
            ));
        }
        Ok((s, lm_head, embeds))
    }

    const NONE: Selected = Selected {
        q: false,
        k: false,
        v: false,
        o: false,
        gate: false,
        up: false,
        down: false,
    };
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantizeOptions {
    pub method: Method,
    pub spec: QuantSpec,
    /// The decoder linears quantized (the others are written in their original dtype).
    pub modules: Selected,
    /// Quantize the lm_head too (`head`; GPTQ v1 or Olive layout, a tied model untied).
    pub lm_head: bool,
    /// Quantize the embeddings (RTN; Olive layout only).
    pub embeds: bool,
    pub format: OutputFormat,
    /// Where calibration's products run (the CPU, or CUDA GPUs within float noise of it).
    pub device: Device,
}

/// How a layer's error was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorMetric {
    /// ‖y_q − y_fp‖² / ‖y_fp − x‖² on the calibration tokens.
    Output,
    /// ‖W_q − W‖² / ‖W‖² (RTN without calibration).
    Weight,
}

/// One finished layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    pub index: usize,
    pub layers: usize,
    pub seconds: f64,
    pub error: f64,
    pub metric: ErrorMetric,
}

/// What the quantizer tells its caller while it runs; the callback returns false to stop (the run then fails
/// with [`QuantError::Cancelled`] and leaves no output).
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    Log(&'a str),
    Layer(&'a LayerReport),
}

/// The finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub output: PathBuf,
    /// The layout written (never `Auto`).
    pub format: OutputFormat,
    pub layers: usize,
    pub quantized_linears: usize,
    pub seconds: f64,
    pub mean_error: f64,
    pub metric: ErrorMetric,
}

/// Which fused buffer of [`DecoderLayer`] a module's rows live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Qkv,
    O,
    GateUp,
    Down,
}

/// One linear as the checkpoint names it.
#[derive(Debug, Clone)]
pub(crate) struct Module {
    /// `model.layers.{i}.self_attn.q_proj`
    pub(crate) name: String,
    pub(crate) slot: Slot,
    pub(crate) rows: Range<usize>,
    pub(crate) in_features: usize,
    pub(crate) quantized: bool,
}

const SLOTS: [Slot; 4] = [Slot::Qkv, Slot::O, Slot::GateUp, Slot::Down];

/// Quantizes the model folder `input` into the new folder `output` (see the module doc).
/// `calibration`: token windows of one length (AWQ and GPTQ need at least one; RTN runs without, and
/// measures output errors when given some).
pub fn quantize_model(
    input: &Path,
    output: &Path,
    options: &QuantizeOptions,
    calibration: &[Vec<u32>],
    events: &mut dyn FnMut(Event<'_>) -> bool,
) -> Result<Summary> {
    let open = |layers| Placement::open(options.device, layers);
    quantize_placed(input, output, options, calibration, events, &open)
}

/// [`quantize_model`] on the devices `open(layers)` gives.
pub(crate) fn quantize_placed(
    input: &Path,
    output: &Path,
    options: &QuantizeOptions,
    calibration: &[Vec<u32>],
    events: &mut dyn FnMut(Event<'_>) -> bool,
    open: &dyn Fn(usize) -> Result<Placement>,
) -> Result<Summary> {
    let start = Instant::now();
    let spec = options.spec;
    spec.validate()?;
    if let Method::Gptq(g) = &options.method {
        g.validate()?;
    }
    let config = ModelConfig::from_folder(input)?;
    refuse_quantized_config(input)?;
    let ckpt = Checkpoint::open(input)?;
    if let Some(name) = ckpt.names().find(|n| n.ends_with(".qweight")) {
        return Err(QuantError::AlreadyQuantized {
            path: ckpt.file_of(name).unwrap_or(input).to_path_buf(),
            what: format!("tensor `{name}`"),
        });
    }
    let layers = config.num_hidden_layers;
    let plan: Vec<Vec<Module>> = (0..layers)
        .map(|i| layer_modules(&ckpt, &config, i, options.modules))
        .collect::<Result<_>>()?;
    let extra = Tables::plan(&ckpt, &config, options.lm_head, options.embeds)?;
    let format = resolve_format(options, &plan, &extra, events)?;
    let seq_len = check_calibration(&options.method, calibration, config.vocab_size)?;
    let placement = open(layers)?;
    if !events(Event::Log(&format!("devices: {}", placement.describe()))) {
        return Err(QuantError::Cancelled);
    }

    let writer = Mutex::new(ModelWriter::create(output, layers + 1)?);
    let rope = Rope::new(&config);
    let tables = rope.tables(0, seq_len.max(1));
    // hidden: [sequences · seq_len, hidden], the current layer's input.
    let mut hidden = embed(&ckpt, &config, calibration)?;
    let run = Run {
        options,
        ckpt: &ckpt,
        plan: &plan,
        format,
        seq_len,
        rope: &tables,
        layers,
        metric: if calibration.is_empty() {
            ErrorMetric::Weight
        } else {
            ErrorMetric::Output
        },
        writer: &writer,
    };
    let metric = run.metric;
    let (errors, mut quantized_linears) =
        if matches!(options.method, Method::Awq(_)) && placement.devices() > 1 {
            let done = awq_blocks(&run, &placement, &config, hidden, events)?;
            hidden = done.hidden;
            (done.errors, done.quantized)
        } else {
            let (mut errors, mut quantized) = (Vec::with_capacity(layers), 0);
            placement.for_each_layer(
                &ckpt,
                &config,
                0..layers,
                &mut |i, layer, names, compute| {
                    let (n, error) = run.layer(i, layer, names, compute, &mut hidden, events)?;
                    quantized += n;
                    errors.push(error);
                    Ok(())
                },
            )?;
            (errors, quantized)
        };
    let mut writer = writer
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let fit = |q: &mut QuantizedLinear| {
        if format == OutputFormat::GptqV1 {
            fit_gptq_v1_zeros(q);
        }
    };
    let tabled = extra.quantize(
        &ckpt,
        &config,
        &spec,
        &options.method,
        &hidden,
        format,
        &fit,
        events,
    )?;
    drop(hidden);
    quantized_linears += tabled.quantized;
    let mut rest: Vec<OutTensor<'_>> = tabled.tensors;
    let copied: Vec<OutTensor<'_>> = ckpt
        .names()
        .filter(|n| !n.starts_with("model.layers."))
        .filter(|n| !tabled.replaced.iter().any(|r| r == n))
        .map(|n| {
            let raw = ckpt.raw(n)?;
            Ok(OutTensor {
                name: n.to_string(),
                dtype: raw.dtype,
                shape: raw.shape.to_vec(),
                bytes: raw.bytes.into(),
            })
        })
        .collect::<Result<_>>()?;
    rest.extend(copied);
    writer.write_shard(layers, &rest, &mut |n| ckpt.release(n))?;
    drop(rest);
    let tied = config.tie_word_embeddings && tabled.edits.is_empty();
    let qc = quantization_config(options, format, &plan, &extra, tied);
    let output = writer.finish(input, qc, &tabled.edits)?;
    Ok(Summary {
        output,
        format,
        layers,
        quantized_linears,
        seconds: start.elapsed().as_secs_f64(),
        mean_error: errors.iter().sum::<f64>() / errors.len().max(1) as f64,
        metric,
    })
}

/// Wall seconds of each named phase of a layer's run, in first-seen order (for the layer's log line).
#[derive(Default)]
struct Phases(Vec<(&'static str, f64)>);

impl Phases {
    fn time<R>(&mut self, name: &'static str, f: impl FnOnce() -> R) -> R {
        let t0 = Instant::now();
        let r = f();
        self.add(name, t0.elapsed().as_secs_f64());
        r
    }

    fn add(&mut self, name: &'static str, seconds: f64) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some((_, s)) => *s += seconds,
            None => self.0.push((name, seconds)),
        }
    }

    /// Adds `other`'s phases to these.
    fn merge(&mut self, other: Phases) {
        for (name, seconds) in other.0 {
            self.add(name, seconds);
        }
    }

    fn total(&self) -> f64 {
        self.0.iter().map(|(_, s)| s).sum()
    }

    fn describe(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(|(n, s)| format!("{n} {s:.2}")).collect();
        parts.join(", ")
    }
}

/// What every decoder layer of a run shares.
pub(crate) struct Run<'a> {
    options: &'a QuantizeOptions,
    pub(crate) ckpt: &'a Checkpoint,
    plan: &'a [Vec<Module>],
    format: OutputFormat,
    seq_len: usize,
    rope: &'a RopeTables,
    layers: usize,
    metric: ErrorMetric,
    writer: &'a Mutex<ModelWriter>,
}

impl Run<'_> {
    fn layer_run<'b>(&'b self, i: usize, compute: &'b Compute) -> LayerRun<'b> {
        LayerRun {
            modules: &self.plan[i],
            spec: &self.options.spec,
            format: self.format,
            seq_len: self.seq_len,
            rope: self.rope,
            compute,
        }
    }

    /// Calibrates, quantizes and writes decoder layer `i` (`names`: its checkpoint tensors) on `compute`, its
    /// input `hidden` becoming the next layer's; reports the layer through `events`. Returns the linears
    /// quantized and the layer's error.
    pub(crate) fn layer(
        &self,
        i: usize,
        layer: &mut DecoderLayer,
        names: &[String],
        compute: &Compute,
        hidden: &mut Vec<f32>,
        events: &mut dyn FnMut(Event<'_>) -> bool,
    ) -> Result<(usize, f64)> {
        let t0 = Instant::now();
        let busy0 = compute.busy_seconds();
        let run = self.layer_run(i, compute);
        let mut phases = Phases::default();
        let (linears, error) = match &self.options.method {
            Method::Rtn => run.rtn(layer, hidden, &mut phases)?,
            Method::Gptq(g) => run.gptq(layer, hidden, g, &mut phases)?,
            Method::Awq(a) => run.awq(layer, hidden, a, &mut phases, events)?,
        };
        let spec = &self.options.spec;
        phases.time("pack and write", || -> Result<()> {
            let tensors = layer_tensors(
                self.ckpt,
                layer,
                run.modules,
                &linears,
                names,
                (self.format, spec.sym),
            )?;
            self.writer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .write_shard(i, &tensors, &mut |n| self.ckpt.release(n))?;
            Ok(())
        })?;
        let line = format!(
            "layer {i}: {:.2} s ({}), of which {:.2} s in calibration products on {}",
            t0.elapsed().as_secs_f64(),
            phases.describe(),
            compute.busy_seconds() - busy0,
            compute.name()
        );
        if !events(Event::Log(&line)) {
            return Err(QuantError::Cancelled);
        }
        let report = LayerReport {
            index: i,
            layers: self.layers,
            seconds: t0.elapsed().as_secs_f64(),
            error,
            metric: self.metric,
        };
        if !events(Event::Layer(&report)) {
            return Err(QuantError::Cancelled);
        }
        Ok((linears.len(), error))
    }

    /// The floating-point output of decoder layer `i` on `hidden` (what AWQ passes to the next layer), computed
    /// as the layer's calibration computes it.
    pub(crate) fn forward(
        &self,
        i: usize,
        layer: &mut DecoderLayer,
        compute: &Compute,
        hidden: &[f32],
    ) -> Result<Vec<f32>> {
        self.layer_run(i, compute).composed(layer, hidden, None)
    }
}

/// One layer's quantization settings.
struct LayerRun<'a> {
    modules: &'a [Module],
    spec: &'a QuantSpec,
    format: OutputFormat,
    seq_len: usize,
    rope: &'a RopeTables,
    compute: &'a Compute,
}

/// The quantized linears of a layer, by index into its modules.
pub(crate) type Quantized = Vec<(usize, QuantizedLinear)>;

/// Sees a linear group's input ([tokens, in]) before the group runs; may change the layer's weights.
type BeforeGroup<'a> = dyn FnMut(&mut DecoderLayer, Slot, &GroupX<'_>) -> Result<()> + 'a;

/// A [`BeforeGroup`] that times its own work into the phases it is given.
type TimedBeforeGroup<'a> =
    dyn FnMut(&mut DecoderLayer, Slot, &GroupX<'_>, &mut Phases) -> Result<()> + 'a;

impl LayerRun<'_> {
    fn rtn(
        &self,
        layer: &mut DecoderLayer,
        hidden: &mut Vec<f32>,
        phases: &mut Phases,
    ) -> Result<(Quantized, f64)> {
        if hidden.is_empty() {
            let (mut diff, mut norm) = (0f64, 0f64);
            let mut out = Vec::new();
            for slot in SLOTS {
                let before = slot_linear(layer, slot).weight.to_vec();
                let k = slot_in_features(layer, slot);
                for (i, q) in self.quantize_slot(layer, slot, None)? {
                    let rows = self.modules[i].rows.clone();
                    let w = &before[rows.start * k..rows.end * k];
                    for (a, b) in q.dequantize().iter().zip(w) {
                        diff += f64::from(a - b).powi(2);
                        norm += f64::from(*b).powi(2);
                    }
                    out.push((i, q));
                }
            }
            return Ok((out, diff / norm.max(f64::MIN_POSITIVE)));
        }
        let y_fp = phases.time("forward", || self.composed(layer, hidden, None))?;
        let out = phases.time("quantize", || self.quantize_slots(layer))?;
        let y_q = phases.time("forward", || self.composed(layer, hidden, None))?;
        let error = relative_error(&y_q, &y_fp, hidden);
        *hidden = y_q;
        Ok((out, error))
    }

    fn gptq(
        &self,
        layer: &mut DecoderLayer,
        hidden: &mut Vec<f32>,
        opts: &GptqOptions,
        phases: &mut Phases,
    ) -> Result<(Quantized, f64)> {
        let mut out = Vec::new();
        let y_fp;
        if opts.true_sequential {
            y_fp = phases.time("forward", || self.composed(layer, hidden, None))?;
            // Each group's Hessian comes from inputs computed with the earlier groups already quantized.
            let y_q =
                self.composed_timed(layer, hidden, phases, &mut |layer, slot, x, phases| {
                    let (h, hv) = self.hessians(layer, slot, x, phases)?;
                    let q = phases.time("quantize", || {
                        self.quantize_slot(layer, slot, Some((&h, hv.as_ref(), opts)))
                    })?;
                    out.extend(q);
                    Ok(())
                })?;
            let error = relative_error(&y_q, &y_fp, hidden);
            *hidden = y_q;
            return Ok((out, error));
        }
        let mut hessians: Vec<(Slot, Hessian, Option<Hessian>)> = Vec::new();
        y_fp = self.composed_timed(layer, hidden, phases, &mut |layer, slot, x, phases| {
            let (h, hv) = self.hessians(layer, slot, x, phases)?;
            hessians.push((slot, h, hv));
            Ok(())
        })?;
        phases.time("quantize", || -> Result<()> {
            for (slot, h, hv) in &hessians {
                out.extend(self.quantize_slot(layer, *slot, Some((h, hv.as_ref(), opts)))?);
            }
            Ok(())
        })?;
        let y_q = phases.time("forward", || self.composed(layer, hidden, None))?;
        let error = relative_error(&y_q, &y_fp, hidden);
        *hidden = y_q;
        Ok((out, error))
    }

    /// The GPTQ Hessian of a slot's input x ([tokens, in]) and, for the attention slot with a separate v_proj,
    /// v_proj's attention-weighted one (`value_hessian`; a fused qkv_proj keeps x's), timed as the phases
    /// "hessians" and "value hessian".
    fn hessians(
        &self,
        layer: &mut DecoderLayer,
        slot: Slot,
        x: &GroupX<'_>,
        phases: &mut Phases,
    ) -> Result<(Hessian, Option<Hessian>)> {
        let mut h = Hessian::new(slot_in_features(layer, slot));
        phases.time("hessians", || h.add_group(self.compute, x))?;
        let separate_v = self
            .modules
            .iter()
            .any(|m| m.slot == Slot::Qkv && m.quantized && is_v_proj(m));
        let hv = (slot == Slot::Qkv && separate_v)
            .then(|| {
                phases.time("value hessian", || {
                    let x = x.to_host(self.compute)?;
                    value_hessian(self.compute, layer, &x, self.seq_len, self.rope)
                })
            })
            .transpose()?;
        Ok((h, hv))
    }

    fn awq(
        &self,
        layer: &mut DecoderLayer,
        hidden: &mut Vec<f32>,
        opts: &AwqOptions,
        phases: &mut Phases,
        events: &mut dyn FnMut(Event<'_>) -> bool,
    ) -> Result<(Quantized, f64)> {
        let mut inputs = LayerInputs::new(layer.dims, self.seq_len, opts);
        let y_fp = self.composed_timed(layer, hidden, phases, &mut |_, slot, x, phases| {
            let group = match slot {
                Slot::Qkv => InputOf::Qkv,
                Slot::O => InputOf::O,
                Slot::GateUp => InputOf::GateUp,
                Slot::Down => InputOf::Down,
            };
            phases.time("input statistics", || {
                inputs.record_from(self.compute, group, x)
            })
        })?;
        let sel = self.selected();
        let stats = awq_layer(
            self.compute,
            layer,
            self.rope,
            &mut inputs,
            self.spec,
            sel,
            opts,
        )?;
        drop(inputs);
        phases.add("scale search", stats.search_seconds);
        phases.add("clip search", stats.clip_seconds);
        let line = format!(
            "AWQ {}: best ratios {:?}, next-best loss margins [{}], {} weights clipped",
            self.modules.first().map_or("", |m| m.name.as_str()),
            stats.ratios,
            stats
                .margins
                .iter()
                .map(|m| format!("{m:.1e}"))
                .collect::<Vec<_>>()
                .join(", "),
            stats.clipped
        );
        if !events(Event::Log(&line)) {
            return Err(QuantError::Cancelled);
        }
        let out = phases.time("quantize", || self.quantize_slots(layer))?;
        let y_q = phases.time("forward", || self.composed(layer, hidden, None))?;
        let error = relative_error(&y_q, &y_fp, hidden);
        // AutoAWQ feeds the next layer with the floating-point outputs.
        *hidden = y_fp;
        Ok((out, error))
    }

    fn selected(&self) -> Selected {
        let mut s = Selected::NONE;
        let d = |m: &Module| m.quantized;
        for m in self.modules {
            let short = m.name.rsplit('.').next().unwrap_or("");
            match short {
                "q_proj" => s.q = d(m),
                "k_proj" => s.k = d(m),
                "v_proj" => s.v = d(m),
                "qkv_proj" => (s.q, s.k, s.v) = (d(m), d(m), d(m)),
                "o_proj" => s.o = d(m),
                "gate_proj" => s.gate = d(m),
                "up_proj" => s.up = d(m),
                "gate_up_proj" => (s.gate, s.up) = (d(m), d(m)),
                "down_proj" => s.down = d(m),
                _ => {}
            }
        }
        s
    }

    /// Every slot's selected modules quantized with RTN (`quantize_slot`).
    fn quantize_slots(&self, layer: &mut DecoderLayer) -> Result<Quantized> {
        let mut out = Vec::new();
        for slot in SLOTS {
            out.extend(self.quantize_slot(layer, slot, None)?);
        }
        Ok(out)
    }

    /// Quantizes the selected modules of `slot` (RTN, or GPTQ with a Hessian) and puts their dequantized weights
    /// back into the layer, so later forwards see the quantized layer.
    fn quantize_slot(
        &self,
        layer: &mut DecoderLayer,
        slot: Slot,
        gptq_with: Option<(&Hessian, Option<&Hessian>, &GptqOptions)>,
    ) -> Result<Quantized> {
        // The selected modules of the slot, merged into runs of adjacent rows: one GPTQ call per run shares the
        // Hessian's factorisation (rows are independent given H, so splitting afterwards changes nothing).
        // v_proj with its own (attention-weighted) Hessian runs alone.
        let mut runs: Vec<(Range<usize>, Vec<usize>, bool)> = Vec::new();
        for (i, m) in self.modules.iter().enumerate() {
            if m.slot != slot || !m.quantized {
                continue;
            }
            let own = is_v_proj(m) && matches!(gptq_with, Some((_, Some(_), _)));
            match runs.last_mut() {
                Some((r, members, o)) if r.end == m.rows.start && *o == own => {
                    r.end = m.rows.end;
                    members.push(i);
                }
                _ => runs.push((m.rows.clone(), vec![i], own)),
            }
        }
        let in_features = slot_in_features(layer, slot);
        let mut out = Vec::new();
        for (span, members, own) in runs {
            let w = slot_rows(layer, slot, span.clone());
            let mut q = match gptq_with {
                None => rtn(w, span.len(), in_features, self.spec)?,
                Some((h, hv, o)) => {
                    let h = if own { hv.unwrap_or(h) } else { h };
                    gptq(w, span.len(), in_features, h, self.spec, o)?.linear
                }
            };
            if self.format == OutputFormat::GptqV1 {
                fit_gptq_v1_zeros(&mut q);
            }
            q.dequantize_into(slot_rows_mut(layer, slot, span.clone()));
            self.compute.changed(slot_rows(layer, slot, span.clone()))?;
            for i in members {
                let r = &self.modules[i].rows;
                out.push((i, q.rows(r.start - span.start, r.end - span.start)));
            }
        }
        Ok(out)
    }

    /// The layer computed group by group over every calibration sequence, `before(layer, slot, x)` seeing each
    /// linear group's input x ([tokens, in]) before the group runs (and free to change its weights); returns the
    /// layer's output [tokens, hidden]. On a GPU the activations stay on the device (`composed_on_gpu`).
    fn composed(
        &self,
        layer: &mut DecoderLayer,
        hidden: &[f32],
        mut before: Option<&mut BeforeGroup<'_>>,
    ) -> Result<Vec<f32>> {
        if let Some(y) = self.composed_on_gpu(layer, hidden, &mut before)? {
            return Ok(y);
        }
        let mut before = |layer: &mut DecoderLayer, slot: Slot, x: &[f32]| match before.as_mut() {
            Some(f) => f(layer, slot, &GroupX::Host(x)),
            None => Ok(()),
        };
        let d = layer.dims;
        let tokens = hidden.len() / d.hidden;
        let mut x1 = vec![0f32; hidden.len()]; // [tokens, hidden]
        rmsnorm(hidden, &layer.input_layernorm, d.rms_norm_eps, &mut x1);
        before(layer, Slot::Qkv, &x1)?;
        let mut x2 = vec![0f32; tokens * d.q_width()]; // [tokens, heads · head_dim]
        attention_context(self.compute, layer, &x1, self.seq_len, self.rope, &mut x2)?;
        drop(x1);
        before(layer, Slot::O, &x2)?;
        let mut h2 = vec![0f32; hidden.len()]; // [tokens, hidden]
        self.compute.linear(&layer.o_proj, &x2, &mut h2)?;
        drop(x2);
        for (a, b) in h2.iter_mut().zip(hidden) {
            *a += b;
        }
        let mut x3 = vec![0f32; hidden.len()]; // [tokens, hidden]
        rmsnorm(
            &h2,
            &layer.post_attention_layernorm,
            d.rms_norm_eps,
            &mut x3,
        );
        before(layer, Slot::GateUp, &x3)?;
        let mut x4 = vec![0f32; tokens * d.intermediate]; // [tokens, intermediate]
        mlp_activation(self.compute, layer, &x3, &mut x4)?;
        drop(x3);
        before(layer, Slot::Down, &x4)?;
        let mut y = vec![0f32; hidden.len()]; // [tokens, hidden]
        self.compute.linear(&layer.down_proj, &x4, &mut y)?;
        for (a, b) in y.iter_mut().zip(&h2) {
            *a += b;
        }
        Ok(y)
    }

    /// [`LayerRun::composed`] with `before`, which times its work into the phases it is given; the rest is counted
    /// as "forward".
    fn composed_timed(
        &self,
        layer: &mut DecoderLayer,
        hidden: &[f32],
        phases: &mut Phases,
        before: &mut TimedBeforeGroup<'_>,
    ) -> Result<Vec<f32>> {
        let t0 = Instant::now();
        let mut inner = Phases::default();
        let y = self.composed(
            layer,
            hidden,
            Some(&mut |layer, slot, x| before(layer, slot, x, &mut inner)),
        )?;
        phases.add("forward", t0.elapsed().as_secs_f64() - inner.total());
        phases.merge(inner);
        Ok(y)
    }

    /// [`LayerRun::composed`] on a GPU, every activation kept on the device: only `hidden` goes up and the
    /// output comes down; `before` sees each group's input where it is, on the device, and brings back what it
    /// needs of it (each step takes the held weights anew, so `before` may change them). `None` on the CPU.
    fn composed_on_gpu(
        &self,
        layer: &mut DecoderLayer,
        hidden: &[f32],
        before: &mut Option<&mut BeforeGroup<'_>>,
    ) -> Result<Option<Vec<f32>>> {
        let compute = self.compute;
        let Some(h0) = compute.on_device(|dev| Ok(dev.gpu.upload(hidden)?))? else {
            return Ok(None);
        };
        let mut show = |layer: &mut DecoderLayer, slot: Slot, x: &CudaSlice<f32>| -> Result<()> {
            match before.as_mut() {
                Some(f) => f(layer, slot, &GroupX::Device(x)),
                None => Ok(()),
            }
        };
        let d = layer.dims;
        let tokens = hidden.len() / d.hidden.max(1);
        let (seq_len, rope) = (self.seq_len, self.rope);
        let x1 = device_step(compute, |dev| {
            dev.rmsnorm(&h0, &layer.input_layernorm, d.rms_norm_eps)
        })?;
        show(layer, Slot::Qkv, &x1)?;
        let ctx = device_step(compute, |dev| {
            let qkv = dev.linear(&layer.qkv_proj, &x1, tokens)?; // [tokens, q + 2·kv]
            dev.attend_windows(layer, &qkv, seq_len, &dev.window_tables(rope, seq_len)?)
        })?; // [tokens, heads · head_dim]
        drop(x1);
        show(layer, Slot::O, &ctx)?;
        let h2 = device_step(compute, |dev| {
            let mut h2 = dev.linear(&layer.o_proj, &ctx, tokens)?;
            add_assign(dev.gpu, &mut h2, &h0)?;
            Ok(h2)
        })?; // [tokens, hidden]
        drop((ctx, h0));
        let x3 = device_step(compute, |dev| {
            dev.rmsnorm(&h2, &layer.post_attention_layernorm, d.rms_norm_eps)
        })?;
        show(layer, Slot::GateUp, &x3)?;
        let act = device_step(compute, |dev| dev.mlp_activation(layer, &x3, tokens))?; // [tokens, intermediate]
        drop(x3);
        show(layer, Slot::Down, &act)?;
        let y = device_step(compute, |dev| {
            let mut y = dev.linear(&layer.down_proj, &act, tokens)?; // [tokens, hidden]
            add_assign(dev.gpu, &mut y, &h2)?;
            Ok(dev.gpu.download(&y)?)
        })?;
        Ok(Some(y))
    }
}

/// A separate v_proj (not a fused qkv_proj).
fn is_v_proj(m: &Module) -> bool {
    m.name.ends_with(".v_proj")
}

/// ‖y_q − y_fp‖² / ‖y_fp − x‖².
fn relative_error(y_q: &[f32], y_fp: &[f32], x: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for ((q, f), x) in y_q.iter().zip(y_fp).zip(x) {
        num += f64::from(q - f).powi(2);
        den += f64::from(f - x).powi(2);
    }
    num / den.max(f64::MIN_POSITIVE)
}

pub(crate) fn slot_linear(layer: &DecoderLayer, slot: Slot) -> &olive_nn::Linear {
    match slot {
        Slot::Qkv => &layer.qkv_proj,
        Slot::O => &layer.o_proj,
        Slot::GateUp => &layer.gate_up_proj,
        Slot::Down => &layer.down_proj,
    }
}

fn slot_in_features(layer: &DecoderLayer, slot: Slot) -> usize {
    slot_linear(layer, slot).in_features
}

/// Rows of a slot's weight: [rows.len(), in].
pub(crate) fn slot_rows(layer: &DecoderLayer, slot: Slot, rows: Range<usize>) -> &[f32] {
    let l = slot_linear(layer, slot);
    &l.weight[rows.start * l.in_features..rows.end * l.in_features]
}

fn slot_rows_mut(layer: &mut DecoderLayer, slot: Slot, rows: Range<usize>) -> &mut [f32] {
    let l = match slot {
        Slot::Qkv => &mut layer.qkv_proj,
        Slot::O => &mut layer.o_proj,
        Slot::GateUp => &mut layer.gate_up_proj,
        Slot::Down => &mut layer.down_proj,
    };
    let k = l.in_features;
    &mut l.weight[rows.start * k..rows.end * k]
}
