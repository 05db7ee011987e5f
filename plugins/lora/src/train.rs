//! The fine-tuning run shared by `LoRA` and `QLoRA`, as Olive's LoRA pass drives transformers' Trainer: the dataset
//! prepared through olive-data, rows drawn in a seeded order reshuffled every epoch, one `LoraTrainer` step per
//! `gradient_accumulation_steps` micro-batches, evaluation on the held-out rows, then the PEFT adapter folder and the
//! loss curve written into the pass's output folder.

use std::path::PathBuf;
use std::time::Instant;

use olive_data::{prepare, ModelTokenizer, Rng, Sample, IGNORE_INDEX};
use std::sync::Arc;

use olive_kernels::cuda::Gpu;
use olive_model::adapter::{write_adapter, LoraSaveConfig, LoraWeights, Projection};
use olive_model::ModelConfig;
use olive_nn::gpu::train::GpuLoraTrainer;
use olive_nn::train::{LoraSpec, LoraTrainer, StepStats, TrainError};
use olive_nn::{QuantizedWeights, Transformer};
use olive_pass_sdk::{kinds, Context, Error, Model};
use serde_json::json;

use crate::config::LoraConfig;
use crate::curve::{self, CurvePoint};
use crate::ranks::Rank;

/// The adapter folder inside the pass's output folder.
pub const ADAPTER_DIR: &str = "adapter";
/// The loss curve files inside the pass's output folder.
pub const LOSS_CSV: &str = "loss.csv";
pub const LOSS_PNG: &str = "loss.png";

/// The GPU to train on for device `gpu` (CUDA device `ordinal`: the first, or a data-parallel rank's own), None
/// for `cpu`; refuses other devices, and `gpu` where there is no usable CUDA device.
pub fn check_device(ctx: &Context<'_>, ordinal: usize) -> Result<Option<Arc<Gpu>>, Error> {
    match ctx.device().as_str() {
        "cpu" => Ok(None),
        "gpu" => Gpu::get(ordinal)
            .map(Some)
            .map_err(|e| Error::Failed(format!("device gpu: {e}"))),
        other => Err(Error::InvalidConfig(format!(
            "device {other}: LoRA and QLoRA train on the cpu or a CUDA gpu"
        ))),
    }
}

/// The trainer of the pass's device.
enum Trainer {
    Cpu(Box<LoraTrainer>),
    Gpu(Box<GpuLoraTrainer>),
}

impl Trainer {
    fn train_step(&mut self, micro: &[Vec<Sample>]) -> Result<StepStats, TrainError> {
        match self {
            Trainer::Cpu(t) => t.train_step(micro),
            Trainer::Gpu(t) => t.train_step(micro),
        }
    }

    fn eval_loss(&self, rows: &[Sample]) -> Result<f32, TrainError> {
        match self {
            Trainer::Cpu(t) => t.eval_loss(rows),
            Trainer::Gpu(t) => t.eval_loss(rows),
        }
    }

    /// Sums over the data-parallel ranks (the values themselves on one device).
    fn sum_over_ranks(&self, values: &[f64]) -> Result<Vec<f64>, TrainError> {
        match self {
            Trainer::Cpu(_) => Ok(values.to_vec()),
            Trainer::Gpu(t) => t.sum_over_ranks(values),
        }
    }

    fn adapter(&self) -> Result<Vec<LoraWeights>, TrainError> {
        match self {
            Trainer::Cpu(t) => Ok(t.adapter()),
            Trainer::Gpu(t) => t.adapter(),
        }
    }
}

/// Checks `targets` against the architecture's linears before anything heavy is loaded (PEFT's matching: a name,
/// a `.`-separated suffix such as `self_attn.q_proj`, or `all-linear`).
pub fn check_targets(hf: &ModelConfig, targets: &[String]) -> Result<(), Error> {
    let known = Projection::of(hf.architecture);
    for t in targets.iter().filter(|t| *t != "all-linear") {
        let found = known.iter().any(|p| {
            let key = format!("{}.{}", p.block().hf_name(), p.name());
            key == *t || key.ends_with(&format!(".{t}")) || p.name() == t
        });
        if !found {
            let names: Vec<&str> = known.iter().map(|p| p.name()).collect();
            return Err(Error::InvalidConfig(format!(
                "target_modules: `{t}` is not a linear layer of this {} model; its linears are {} \
                 (or give all-linear)",
                hf.architecture.model_type(),
                names.join(", ")
            )));
        }
    }
    Ok(())
}

fn trainer_error(e: TrainError) -> Error {
    match e {
        TrainError::UnknownTarget { .. } | TrainError::Setting { .. } => {
            Error::InvalidConfig(e.to_string())
        }
        other => Error::Failed(other.to_string()),
    }
}

/// Label tokens a row contributes to the loss (labels shifted by one, padding ignored).
fn label_tokens(rows: &[Sample]) -> usize {
    rows.iter()
        .map(|r| {
            r.labels
                .iter()
                .skip(1)
                .filter(|&&l| l != IGNORE_INDEX)
                .count()
        })
        .sum()
}

/// Mean loss over `rows`, in batches of `batch` rows, weighted by their label tokens; in a data-parallel run each
/// rank evaluates every world_size-th batch and the sums are added over the ranks.
fn eval_loss(
    trainer: &Trainer,
    rows: &[Sample],
    batch: usize,
    rank: Option<&Rank>,
) -> Result<f32, Error> {
    let (me, ranks) = rank.map_or((0, 1), |r| (r.world().rank, r.world().world_size));
    let (mut sum, mut count) = (0f64, 0f64);
    for chunk in rows.chunks(batch.max(1)).skip(me).step_by(ranks) {
        let n = label_tokens(chunk);
        if n == 0 {
            continue;
        }
        let loss = trainer.eval_loss(chunk).map_err(trainer_error)?;
        sum += loss as f64 * n as f64;
        count += n as f64;
    }
    if rank.is_some() {
        let sums = trainer
            .sum_over_ranks(&[sum, count])
            .map_err(trainer_error)?;
        (sum, count) = (sums[0], sums[1]);
    }
    if count == 0.0 {
        return Err(Error::InvalidConfig(
            "the held-out rows have no label tokens to evaluate".into(),
        ));
    }
    Ok((sum / count) as f32)
}

/// Rows in a seeded order, reshuffled at every epoch, drawn `batch` at a time.
struct RowStream<'a> {
    rows: &'a [Sample],
    order: Vec<usize>,
    next: usize,
    rng: Rng,
}

impl<'a> RowStream<'a> {
    fn new(rows: &'a [Sample], seed: u64) -> Self {
        let mut stream = RowStream {
            rows,
            order: (0..rows.len()).collect(),
            next: 0,
            rng: Rng::new(seed),
        };
        stream.rng.shuffle(&mut stream.order);
        stream
    }

    fn take(&mut self, batch: usize) -> Vec<Sample> {
        (0..batch)
            .map(|_| {
                if self.next == self.order.len() {
                    self.rng.shuffle(&mut self.order);
                    self.next = 0;
                }
                self.next += 1;
                self.rows[self.order[self.next - 1]].clone()
            })
            .collect()
    }
}

/// Trains LoRA adapters with the input model's tokenizer over the weights in the folder `weights_dir` gives (the
/// input model's folder, or its quantized copy for QLoRA; called once the config and the data have been checked),
/// and writes `adapter/`, `loss.csv` and `loss.png` into the output folder. The model returned is the input model
/// with the adapter (`hf+adapter`).
pub fn run(
    model: &Model,
    cfg: &LoraConfig,
    ctx: &Context<'_>,
    title: &str,
    weights_dir: impl FnOnce() -> Result<PathBuf, Error>,
) -> Result<Model, Error> {
    let layout = Rank::layout()?;
    if layout.is_some() && ctx.device() != "gpu" {
        return Err(Error::InvalidConfig(format!(
            "data-parallel training (WORLD_SIZE > 1) runs on device gpu, not {}",
            ctx.device()
        )));
    }
    let gpu = check_device(ctx, layout.as_ref().map_or(0, |w| w.local_rank))?;
    cfg.check()?;
    let args = &cfg.training_args;
    let base = &model.path;
    let hf = ModelConfig::from_folder(base).map_err(|e| Error::UnsupportedModel(e.to_string()))?;
    let targets = cfg.targets(hf.architecture);
    check_targets(&hf, &targets)?;
    let tok = ModelTokenizer::load(base).map_err(|e| Error::UnsupportedModel(e.to_string()))?;
    let data =
        prepare(&cfg.train_data_config, &tok).map_err(|e| Error::InvalidConfig(e.to_string()))?;
    // The rows are token ids now: free the tokenizer before the weights load.
    drop(tok);
    if data.train.is_empty() {
        return Err(Error::InvalidConfig(format!(
            "dataset is empty: no training rows from {}",
            cfg.train_data_config.data_files.join(", ")
        )));
    }
    // Every rank joins before the weights load, so a missing rank fails the run early.
    let (rank, mut comm) = match (layout, &gpu) {
        (Some(world), Some(gpu)) => {
            let (rank, comm) = Rank::join(world, gpu)?;
            (Some(rank), Some(comm))
        }
        _ => (None, None),
    };
    let ranks = rank.as_ref().map_or(1, |r| r.world().world_size);
    let total = args.total_steps(data.train.len(), ranks)?;
    let train_config = args.train_config(total)?;
    ctx.info(&format!(
        "{title}: {} training rows, {} held-out rows of {} tokens; {total} steps of {} x {} rows{}",
        data.train.len(),
        data.eval.len(),
        cfg.train_data_config.max_seq_len,
        args.gradient_accumulation_steps,
        args.per_device_train_batch_size * ranks,
        match &rank {
            Some(r) => format!(
                " over {ranks} GPUs ({} a GPU); this is rank {}",
                args.per_device_train_batch_size,
                r.world().rank
            ),
            None => String::new(),
        }
    ));
    ctx.check_cancelled()?;
    let weights_dir = weights_dir()?;
    // A quantized base stays compact: int4 through the CPU int4 kernels (each backward tile of rows dequantized
    // when used), or packed for the GPU trainer, which uploads each linear from it.
    let mode = match gpu {
        None => QuantizedWeights::Int4Training,
        Some(_) => QuantizedWeights::Packed,
    };
    let transformer = Transformer::load_with(&weights_dir, mode)
        .map_err(|e| Error::UnsupportedModel(e.to_string()))?;
    ctx.info(&format!(
        "base linears: {:.1} MiB in memory",
        transformer.linear_weight_bytes() as f64 / (1 << 20) as f64
    ));
    let spec = LoraSpec {
        r: cfg.r,
        alpha: cfg.alpha as f32,
        dropout: cfg.lora_dropout as f32,
        target_modules: targets,
        use_rslora: cfg.use_rslora,
    };
    let mut trainer = match gpu {
        None => Trainer::Cpu(Box::new(
            LoraTrainer::new(transformer, &spec, train_config).map_err(trainer_error)?,
        )),
        Some(gpu) => {
            ctx.info(&format!("training on {} (bf16)", gpu.name()));
            let mut trainer = GpuLoraTrainer::new(transformer, &spec, train_config, gpu)
                .map_err(trainer_error)?;
            if let Some(comm) = comm.take() {
                trainer.distribute(comm).map_err(trainer_error)?;
            }
            Trainer::Gpu(Box::new(trainer))
        }
    };
    let every = args.eval_every(total);
    let base_eval = if data.eval.is_empty() {
        None
    } else {
        let loss = eval_loss(
            &trainer,
            &data.eval,
            args.per_device_eval_batch_size,
            rank.as_ref(),
        )?;
        ctx.info(&format!("evaluation loss before training: {loss:.4}"));
        Some(loss)
    };
    let mut stream = RowStream::new(&data.train, args.seed);
    let mut points = Vec::with_capacity(total);
    let started = Instant::now();
    let (mut tokens_done, mut train_seconds) = (0usize, 0f64);
    for step in 1..=total {
        ctx.check_cancelled()?;
        let per_device = args.per_device_train_batch_size;
        let micro: Vec<Vec<Sample>> = (0..args.gradient_accumulation_steps)
            .map(|_| {
                let rows = stream.take(per_device * ranks);
                match &rank {
                    Some(r) => r.shard(rows, per_device),
                    None => rows,
                }
            })
            .collect();
        let t0 = Instant::now();
        let stats = trainer.train_step(&micro).map_err(trainer_error)?;
        let seconds = t0.elapsed().as_secs_f32().max(1e-9);
        tokens_done += stats.tokens;
        train_seconds += seconds as f64;
        if !stats.loss.is_finite() {
            return Err(Error::Failed(format!(
                "step {step}: the loss is {} (learning rate {}); lower training_args.learning_rate",
                stats.loss, stats.learning_rate
            )));
        }
        let eval = if !data.eval.is_empty() && (step % every == 0 || step == total) {
            Some(eval_loss(
                &trainer,
                &data.eval,
                args.per_device_eval_batch_size,
                rank.as_ref(),
            )?)
        } else {
            None
        };
        let point = CurvePoint {
            step,
            loss: stats.loss,
            learning_rate: stats.learning_rate,
            grad_norm: stats.grad_norm,
            tokens_per_second: stats.tokens as f32 / seconds,
            eval_loss: eval,
        };
        let line = format!(
            "loss {:.4} · {:.0} tok/s{}",
            point.loss,
            point.tokens_per_second,
            eval.map(|e| format!(" · eval {e:.4}")).unwrap_or_default()
        );
        ctx.progress(step as u64, total as u64, &line);
        let full = format!(
            "step {step}/{total}: {line} · lr {:.3e} · grad norm {:.3}",
            point.learning_rate, point.grad_norm
        );
        if step % every == 0 || step == total {
            ctx.info(&full);
        } else {
            ctx.debug(&full);
        }
        points.push(point);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let out = ctx.output_dir();
    let adapter_dir = out.join(ADAPTER_DIR);
    let weights = trainer.adapter().map_err(trainer_error)?;
    let mut names: Vec<&str> = weights.iter().map(|w| w.module.projection.name()).collect();
    names.sort_unstable();
    names.dedup();
    let save = LoraSaveConfig {
        r: cfg.r,
        lora_alpha: cfg.alpha,
        lora_dropout: cfg.lora_dropout,
        target_modules: names.iter().map(|n| n.to_string()).collect(),
        use_rslora: cfg.use_rslora,
        base_model_name_or_path: Some(base.display().to_string()),
        dtype: cfg.torch_dtype.weight_dtype(),
    };
    // Every rank holds the same adapter: rank 0 writes it (the others' output folders are scratch).
    if rank.as_ref().is_none_or(|r| r.is_leader()) {
        write_adapter(&adapter_dir, &save, &weights).map_err(|e| Error::Failed(e.to_string()))?;
        let csv_path = out.join(LOSS_CSV);
        std::fs::write(&csv_path, curve::csv(base_eval, &points))
            .map_err(|e| Error::io(&csv_path, e))?;
        curve::write_png(&out.join(LOSS_PNG), base_eval, &points, title).map_err(Error::Failed)?;
    }
    let last = points.last().map(|p| p.loss);
    let last_eval = points.iter().rev().find_map(|p| p.eval_loss);
    ctx.info(&format!(
        "trained {} modules in {total} steps ({elapsed:.1} s with evaluation; {:.0} training tok/s); final loss \
         {:.4}{}",
        weights.len(),
        tokens_done as f64 / train_seconds.max(1e-9),
        last.unwrap_or(f32::NAN),
        last_eval
            .map(|e| format!(", evaluation loss {e:.4}"))
            .unwrap_or_default()
    ));
    drop(trainer);
    if let Some(rank) = rank {
        rank.finish()?;
    }
    let mut output = Model::new(kinds::HF_ADAPTER, base);
    output.adapter_paths.push(adapter_dir);
    output.metadata.insert("steps".into(), json!(total));
    output.metadata.insert("train_loss".into(), json!(last));
    output.metadata.insert("eval_loss".into(), json!(last_eval));
    output
        .metadata
        .insert("base_eval_loss".into(), json!(base_eval));
    Ok(output)
}
