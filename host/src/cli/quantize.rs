//! `olive-host quantize`: Olive's `olive quantize` (olive/cli/quantize.py) for Hugging Face models: `--algorithm
//! rtn|awq|gptq` runs the `Rtn`, `AutoAWQQuantizer` or `Gptq` pass (`GptqQuantizer` with `--implementation
//! autogptq`, as Olive picks them) of the quant plugins in a worker and
//! writes, as Olive does, the Hugging Face folder with `quantization_config` to `<output_path>/model` and Olive's
//! `<output_path>/model_config.json` (every command taking `--model_name_or_path` accepts the output folder). `--bits`, `--group_size` and
//! `--sym` (which Olive lacks) set the grid, `--lm_head` and `--embeds` (Olive's pass options) quantize the
//! lm_head and the embeddings too; by default `--precision` gives the bits and each pass its defaults. `--device
//! gpu` runs the calibration on the first CUDA GPU (the workflow's accelerator device `gpu`), `--num_gpus N` on
//! the first N, the decoder layers spread over them (the pass config's `num_gpus`, an olive-rs extension).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use olive_kernels::cuda::Gpu;
use olive_pass_api::{kinds, Model};

use super::common::{refuse_non_empty, resolve_hf_input};
use super::config_file::{one_pass_on_cpu, ConfigFileArgs};
use super::dataset::DatasetArgs;
use crate::device::{first_gpu, Device};
use crate::engine::PassRun;
use crate::plugins;
use crate::workflow::output::run_pass_to_output;

/// Olive's `--algorithm` values this build serves for Hugging Face models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Algorithm {
    Rtn,
    Awq,
    Gptq,
}

impl Algorithm {
    /// The pass that runs it with `implementation` (Olive's pass type name; Olive's own implementation by
    /// default, as in olive/cli/quantize.py).
    fn pass(self, implementation: Option<&str>) -> &'static str {
        match (self, implementation) {
            (Algorithm::Rtn, _) => "Rtn",
            (Algorithm::Awq, _) => "AutoAWQQuantizer",
            (Algorithm::Gptq, Some("autogptq" | "gptqmodel")) => "GptqQuantizer",
            (Algorithm::Gptq, _) => "Gptq",
        }
    }

    /// Olive's `--implementation` names that mean this algorithm's pass.
    fn implementations(self) -> &'static [&'static str] {
        match self {
            Algorithm::Rtn => &["rtn", "olive"],
            Algorithm::Awq => &["awq", "autoawq"],
            Algorithm::Gptq => &["olive", "gptq", "autogptq", "gptqmodel"],
        }
    }
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The input model: a Hugging Face folder or a .gguf file.
    #[arg(long = "model_name_or_path", short = 'm')]
    pub model_name_or_path: PathBuf,
    /// Accepted for Olive compatibility: the model's code is never run.
    #[arg(long = "trust_remote_code")]
    pub trust_remote_code: bool,
    /// Where the quantized Hugging Face folder goes.
    #[arg(long = "output_path", short = 'o', default_value = "quantized-model")]
    pub output_path: PathBuf,
    /// The quantization algorithm.
    #[arg(long, value_enum, default_value_t = Algorithm::Rtn)]
    pub algorithm: Algorithm,
    /// The weight precision: int4 or int8. Default: int4 for awq and gptq (AutoAWQ quantizes to 4 bits only, and
    /// the lab's `olive quantize --algorithm awq` shrinks the model to 4 bits), int8 for rtn (Olive's default).
    #[arg(long)]
    pub precision: Option<String>,
    /// The implementation of the algorithm (Olive's names: awq, autogptq, ...); each has one here.
    #[arg(long)]
    pub implementation: Option<String>,
    /// Bits per weight, overriding --precision (2, 3, 4 or 8 where the algorithm allows).
    #[arg(long)]
    pub bits: Option<u8>,
    /// Weights per quantization group; -1 for one group per output channel.
    #[arg(long = "group_size", allow_negative_numbers = true)]
    pub group_size: Option<i64>,
    /// Symmetric grid (zero point in the middle) instead of asymmetric: `--sym true|false`.
    #[arg(long)]
    pub sym: Option<bool>,
    /// Quantize the lm_head too (GPTQ v1 layout with `lm_head: true`; a tied model is untied; AWQ's lm_head
    /// gets round-to-nearest).
    #[arg(long = "lm_head")]
    pub lm_head: bool,
    /// Quantize the embeddings too (rtn only, as in Olive; written in Olive's layout, `quant_method: olive`).
    #[arg(long)]
    pub embeds: bool,
    #[command(flatten)]
    pub data: DatasetArgs,
    /// Where calibration runs (Olive: the workflow's accelerator device): cpu, or gpu (the first CUDA GPU runs
    /// the calibration products in f32, giving the CPU's result within float noise).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// With --device gpu: spread the decoder layers over the first N CUDA GPUs of this host (contiguous blocks,
    /// each layer calibrated on the GPU holding it); the output is byte-identical to one GPU's. Saved in the
    /// pass config as olive-rs's `num_gpus`.
    #[arg(long = "num_gpus", default_value_t = 1)]
    pub num_gpus: usize,
    /// Replace an existing, non-empty output folder.
    #[arg(long)]
    pub overwrite: bool,
    /// Cancel after this many seconds.
    #[arg(long, value_parser = super::parse_seconds)]
    pub timeout: Option<Duration>,
    #[command(flatten)]
    pub config_file: ConfigFileArgs,
    #[command(flatten)]
    pub package: crate::package::PackageArgs,
}

/// Bits of Olive's `--precision` values that quantize weights to integers.
fn precision_bits(precision: &str) -> anyhow::Result<u8> {
    match precision {
        "int4" | "uint4" => Ok(4),
        "int8" | "uint8" => Ok(8),
        other => bail!(
            "--precision {other} is not supported for Hugging Face models; valid: int4, int8 (or give --bits)"
        ),
    }
}

/// The pass config: the grid, then the calibration data when one was given.
fn pass_config(args: &QuantizeArgs) -> anyhow::Result<serde_json::Value> {
    if let Some(implementation) = &args.implementation {
        let known = args.algorithm.implementations();
        if !known.contains(&implementation.as_str()) {
            bail!(
                "--implementation {implementation} does not implement --algorithm {:?}; valid: {}",
                args.algorithm,
                known.join(", ")
            );
        }
    }
    let bits = match (args.bits, &args.precision) {
        (Some(b), _) => b,
        (None, Some(precision)) => precision_bits(precision)?,
        (None, None) if args.algorithm == Algorithm::Rtn => 8,
        (None, None) => 4,
    };
    let mut config = serde_json::json!({ "bits": bits });
    match (args.num_gpus, args.device) {
        (0, _) => bail!("--num_gpus 0: expected 1 or more GPUs"),
        (1, _) => {}
        (n, Device::Gpu) => config["num_gpus"] = n.into(),
        (n, Device::Cpu) => {
            bail!("--num_gpus {n}: spreading the decoder layers over GPUs needs --device gpu")
        }
    }
    if let Some(g) = args.group_size {
        config["group_size"] = g.into();
    }
    if let Some(sym) = args.sym {
        config["sym"] = sym.into();
    }
    if args.lm_head {
        config["lm_head"] = true.into();
    }
    if args.embeds {
        if args.algorithm != Algorithm::Rtn {
            bail!("--embeds: only --algorithm rtn quantizes embeddings (as in Olive)");
        }
        config["embeds"] = true.into();
    }
    // Calibration windows: --max_samples of --max_seq_len tokens when given, else the pass's defaults (Olive's
    // 256 samples of 1024 tokens would take hours on a CPU).
    if let Some(n) = args.data.max_samples {
        config["n_samples"] = n.into();
    }
    if let Some(n) = args.data.max_seq_len {
        config["seq_len"] = n.into();
    }
    if let Some(mut data) = args.data.data_config()? {
        data.max_samples = args.data.max_samples;
        config["data_config"] = serde_json::to_value(data)?;
    }
    Ok(config)
}

pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    let config = pass_config(&args)?;
    let mut workflow = one_pass_on_cpu(
        &args.model_name_or_path,
        args.algorithm.pass(args.implementation.as_deref()),
        &config,
        "data_config",
        &args.output_path,
    );
    if args.device == Device::Gpu {
        workflow["systems"]["local_system"]["accelerators"] = serde_json::json!([{"device": "gpu", "execution_providers": ["CUDAExecutionProvider"]}]);
    }
    args.package.add_to(&mut workflow);
    if args.config_file.dry_run(&workflow, &args.output_path)? {
        return Ok(());
    }
    refuse_non_empty(&args.output_path, args.overwrite)?;
    if args.device == Device::Gpu {
        first_gpu()?;
        let found = Gpu::count().context("--device gpu")?;
        if args.num_gpus > found {
            bail!(
                "--num_gpus {}: the driver reports {found} CUDA device(s) on this machine",
                args.num_gpus
            );
        }
    }
    let input = resolve_hf_input(&args.model_name_or_path)?;
    let found = plugins::discover(&plugins::search_path());
    let name = args.algorithm.pass(args.implementation.as_deref());
    let (plugin, pass) = found.pass(None, name)?;
    let output = &args.output_path;
    let model = run_pass_to_output(PassRun {
        plugin,
        pass: pass.name.clone(),
        model: Model::new(kinds::HF, &input),
        config_json: config.to_string(),
        output_path: output.clone(),
        device: args.device.name().to_owned(),
        timeout: args.timeout,
        grace: Duration::from_secs(5),
    })?;
    tracing::info!("wrote {}", output.join("model").display());
    args.config_file.save(&workflow, output)?;
    let provider = match args.device {
        Device::Gpu => "CUDAExecutionProvider",
        _ => "CPUExecutionProvider",
    };
    args.package
        .write(&model, output, args.device.name(), provider)?;
    println!("{}", serde_json::to_string_pretty(&model)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: QuantizeArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let cli = Cli::try_parse_from(["x", "-m", "m"].into_iter().chain(args.iter().copied()))?;
        pass_config(&cli.args)
    }

    #[test]
    fn precision_gives_bits_and_the_grid_flags_pass_through() {
        assert_eq!(config(&[]).unwrap(), serde_json::json!({"bits": 8}));
        assert_eq!(
            config(&["--algorithm", "awq"]).unwrap(),
            serde_json::json!({"bits": 4})
        );
        let c = config(&[
            "--algorithm",
            "awq",
            "--precision",
            "int4",
            "--group_size",
            "-1",
            "--sym",
            "true",
            "--lm_head",
        ])
        .unwrap();
        assert_eq!(
            c,
            serde_json::json!({"bits": 4, "group_size": -1, "sym": true, "lm_head": true})
        );
        assert_eq!(
            config(&["--precision", "int4", "--bits", "3"]).unwrap()["bits"],
            3
        );
    }

    /// `--device gpu` where there is no GPU fails before any work, naming the flag, and leaves no output.
    #[test]
    fn device_gpu_without_a_gpu_is_a_clear_error() {
        if first_gpu().is_ok() {
            eprintln!(
                "skipped: a CUDA device is present: device_gpu_without_a_gpu_is_a_clear_error"
            );
            return;
        }
        let out = tempfile::tempdir().unwrap().path().join("out");
        let o = out.to_str().unwrap();
        let cli = Cli::try_parse_from([
            "x",
            "-m",
            "m",
            "--algorithm",
            "gptq",
            "--device",
            "gpu",
            "-o",
            o,
        ])
        .unwrap();
        assert_eq!(cli.args.device, Device::Gpu);
        let err = format!("{:#}", run(cli.args).unwrap_err());
        assert!(
            err.contains("--device gpu") && err.contains("no CUDA device"),
            "{err}"
        );
        assert!(!out.exists());
    }

    /// `--num_gpus N` (N > 1) goes into the pass config as `num_gpus` with `--device gpu` only; 1 leaves the
    /// config as it was.
    #[test]
    fn num_gpus_needs_device_gpu_and_goes_into_the_pass_config() {
        let c = config(&["--algorithm", "gptq", "--device", "gpu", "--num_gpus", "2"]).unwrap();
        assert_eq!(c["num_gpus"], 2);
        let c = config(&["--algorithm", "gptq", "--device", "gpu", "--num_gpus", "1"]).unwrap();
        assert_eq!(c.get("num_gpus"), None);
        let err = config(&["--algorithm", "awq", "--num_gpus", "2"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--num_gpus 2") && err.contains("--device gpu"),
            "{err}"
        );
        let err = config(&["--device", "gpu", "--num_gpus", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--num_gpus 0"), "{err}");
    }

    #[test]
    fn unknown_precision_and_implementation_name_the_valid_ones() {
        let err = config(&["--precision", "fp16"]).unwrap_err().to_string();
        assert!(err.contains("int4, int8"), "{err}");
        let err = config(&["--algorithm", "gptq", "--implementation", "awq"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("autogptq"), "{err}");
        let err = config(&["--algorithm", "gptq", "--embeds"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--embeds: only --algorithm rtn"), "{err}");
        assert_eq!(config(&["--embeds"]).unwrap()["embeds"], true);
    }

    #[test]
    fn the_dataset_goes_into_data_config() {
        let c = config(&[
            "--data_name",
            "json",
            "--data_files",
            "a.jsonl",
            "--text_field",
            "t",
        ])
        .unwrap();
        assert_eq!(
            c["data_config"]["data_files"],
            serde_json::json!(["a.jsonl"])
        );
        assert_eq!(c["data_config"]["text_field"], "t");
        assert_eq!(c.get("n_samples"), None);
        let c = config(&[
            "--algorithm",
            "gptq",
            "--max_samples",
            "8",
            "--max_seq_len",
            "64",
        ])
        .unwrap();
        assert_eq!(
            (c["n_samples"].as_u64(), c["seq_len"].as_u64()),
            (Some(8), Some(64))
        );
    }
}
