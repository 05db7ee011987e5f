//! olive-rs plugin `lora`: the `LoRA` and `QLoRA` passes (Olive's names, olive/passes/pytorch/lora.py) — LoRA
//! adapters trained on CPU over a frozen Llama-family base (float, or int4 for QLoRA) with `olive_nn::train`,
//! saved as a PEFT adapter folder, with the loss curve beside it.
//!
//! Output folder of both passes: `adapter/` (adapter_config.json + adapter_model.safetensors, as PEFT saves them),
//! `loss.csv` and `loss.png`. The model returned is the input model (its path unchanged) of kind `hf+adapter` with
//! the adapter, as Olive's pass returns the input model handler with its `adapter_path` set.

pub mod config;
pub mod curve;
pub mod qlora;
pub mod ranks;
#[cfg(test)]
mod tests;
pub mod train;

use olive_pass_sdk::{kinds, Context, Error, Model, Pass};

pub use config::{LoraConfig, QLoraConfig, TrainingArgs};

/// Refuses inputs that already carry adapters: training starts from fresh ones.
fn plain_hf(model: &Model, pass: &str) -> Result<(), Error> {
    if model.kind != kinds::HF || !model.adapter_paths.is_empty() {
        return Err(Error::UnsupportedModel(format!(
            "{pass} trains new adapters on a Hugging Face model (kind hf); got kind {} with {} adapters",
            model.kind,
            model.adapter_paths.len()
        )));
    }
    Ok(())
}

/// LoRA fine-tuning over the base's weights as they are (float, or a quantized AWQ/GPTQ folder kept packed in
/// memory and dequantized a matrix at a time).
pub struct Lora;

impl Pass for Lora {
    const NAME: &'static str = "LoRA";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "LoRA fine-tuning on CPU or a CUDA GPU of a Llama-family Hugging Face model; writes a PEFT adapter and the loss curve.";
    const ACCEPTS: &'static [&'static str] = &[kinds::HF];
    const PRODUCES: &'static [&'static str] = &[kinds::HF_ADAPTER];
    const DEVICES: &'static [&'static str] = &["cpu", "gpu"];
    type Config = LoraConfig;

    fn run(model: Model, config: LoraConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        plain_hf(&model, Self::NAME)?;
        let weights = model.path.clone();
        train::run(&model, &config, ctx, "LoRA fine-tuning", || Ok(weights))
    }
}

/// QLoRA: LoRA over a 4-bit base — a quantized folder as it is, or a float model rounded to int4 first.
pub struct QLora;

impl Pass for QLora {
    const NAME: &'static str = "QLoRA";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "QLoRA fine-tuning on CPU or a CUDA GPU: LoRA over an int4 base (AWQ/GPTQ as given, else RTN int4); writes a PEFT adapter.";
    const ACCEPTS: &'static [&'static str] = &[kinds::HF];
    const PRODUCES: &'static [&'static str] = &[kinds::HF_ADAPTER];
    const DEVICES: &'static [&'static str] = &["cpu", "gpu"];
    type Config = QLoraConfig;

    fn run(model: Model, config: QLoraConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        plain_hf(&model, Self::NAME)?;
        let (lora, bits, group_size) = config.split();
        let scratch = tempfile::Builder::new()
            .prefix(".qlora-base-")
            .tempdir_in(ctx.output_dir())
            .map_err(|e| Error::io(ctx.output_dir(), e))?;
        let output = train::run(&model, &lora, ctx, "QLoRA fine-tuning", || {
            qlora::quantized_base(&model.path, bits, group_size, scratch.path(), ctx)
        });
        // The int4 copy goes with `scratch`: the output keeps only the adapter and the curve.
        drop(scratch);
        output
    }
}

olive_pass_sdk::export_plugin! {
    name: "lora",
    version: env!("CARGO_PKG_VERSION"),
    passes: [Lora, QLora],
}
