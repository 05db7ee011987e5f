//! Runs `quantize_model` on a Hugging Face folder with the project's calibration text and prints each layer's
//! time and error (a bench of the streaming quantizer without the host):
//! `cargo run --release -p olive-quant --example quantize -- <model> <out> <rtn|awq|gptq> [bits] [group|-1]
//!  [n_samples (0: none)] [seq_len] [awq loss_tokens]`

use std::path::PathBuf;

use olive_data::{calibration_samples, ModelTokenizer};
use olive_quant::awq::AwqOptions;
use olive_quant::{
    quantize_model, Event, GptqOptions, Method, OutputFormat, QuantSpec, QuantizeOptions, Selected,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: quantize <model> <out> <rtn|awq|gptq> [bits] [group|-1] [n_samples] [seq_len] [loss_tokens]";
    let [input, output, method, rest @ ..] = args.as_slice() else {
        return Err(usage.into());
    };
    let num = |i: usize, default: i64| -> Result<i64, Box<dyn std::error::Error>> {
        Ok(rest
            .get(i)
            .map(|s| s.parse::<i64>())
            .transpose()?
            .unwrap_or(default))
    };
    let (bits, group) = (num(0, 4)? as u8, num(1, 128)?);
    let (n, seq_len, loss_tokens) = (
        num(2, 16)? as usize,
        num(3, 512)? as usize,
        num(4, 1024)? as usize,
    );
    let method = match method.as_str() {
        "rtn" => Method::Rtn,
        "awq" => Method::Awq(AwqOptions {
            loss_tokens,
            ..AwqOptions::default()
        }),
        "gptq" => Method::Gptq(GptqOptions::default()),
        _ => return Err(usage.into()),
    };
    let input = PathBuf::from(input);
    // RTN with windows reports output errors (comparable with AWQ/GPTQ); n_samples 0 skips them.
    let windows = match n {
        0 => Vec::new(),
        _ => calibration_samples(None, &ModelTokenizer::load(&input)?, n, seq_len, 42)?,
    };
    let options = QuantizeOptions {
        method,
        spec: QuantSpec {
            bits,
            group_size: (group > 0).then_some(group as usize),
            sym: false,
        },
        modules: Selected::ALL,
        lm_head: false,
        embeds: false,
        format: OutputFormat::Auto,
        device: olive_quant::Device::Cpu,
    };
    let summary = quantize_model(
        &input,
        &PathBuf::from(output),
        &options,
        &windows,
        &mut |e| {
            match e {
                Event::Log(l) => eprintln!("{l}"),
                Event::Layer(r) => println!(
                    "layer {:>2}/{}: {:>6.2} s  error {:.4e}",
                    r.index + 1,
                    r.layers,
                    r.seconds,
                    r.error
                ),
            }
            true
        },
    )?;
    println!(
        "{} linears, {:?}, {:.1} s, mean layer error {:.4e} ({:?})",
        summary.quantized_linears,
        summary.format,
        summary.seconds,
        summary.mean_error,
        summary.metric
    );
    Ok(())
}
