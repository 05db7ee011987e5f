//! olive-rs plugin `quant-awq`: the `AutoAWQQuantizer` pass (Olive's name) — AWQ (Lin et al. 2023) as AutoAWQ
//! computes it (activation-aware scale search folded into the previous op, clipping search, then round to
//! nearest), streamed one decoder layer at a time (`olive_quant::stream::quantize_model`, `olive_quant::awq`),
//! written in AutoAWQ's GEMM layout (`quant_method: awq`, `version: gemm`); bits other than 4, a group that
//! does not divide in_features or a quantized lm_head (RTN, see `olive_quant` head.rs) fall back to the GPTQ v1
//! layout (logged). Runs on the CPU, or on a CUDA GPU (device `gpu`: f32 cuBLAS products, `olive_quant::device`).

use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use olive_quant::awq::AwqOptions;
use olive_quant::pass::run;
use olive_quant::Method;

olive_quant::quantizer_config! {
    /// The config of `AutoAWQQuantizer`.
    pub struct AwqConfig {
        bits: "Bits per weight: 4 (AutoAWQ GEMM); 2, 3 or 8 write the GPTQ v1 layout with the AWQ-searched weights.",
        format: "Output layout: auto (AWQ GEMM when it fits, else GPTQ v1: bits other than 4, a ragged group or \
                 a quantized lm_head, which gets RTN), awq or gptq.",
        /// Scales s = x_mean^r / w_mean^(1-r) (AutoAWQ `duo_scaling`); false: s = x_mean^r.
        #[serde(default = "yes")]
        pub duo_scaling: bool,
        /// Search per-group clipping of the weights after scaling (AutoAWQ `apply_clip`).
        #[serde(default = "yes")]
        pub apply_clip: bool,
        /// Ratios tried by the scale search and shrink steps of the clip search (AutoAWQ: 20).
        #[serde(default = "default_grid")]
        pub n_grid: usize,
        /// Calibration tokens the scale-search loss runs on (whole windows; all tokens still give the activation
        /// means). More is slower and slightly better.
        #[serde(default = "default_loss_tokens")]
        pub loss_tokens: usize,
        /// Olive 0.13's name for group_size (AutoAWQ `q_group_size`); when given, it is the group size.
        #[serde(default)]
        pub q_group_size: Option<i64>,
        /// Olive's `zero_point` (AutoAWQ): true is the asymmetric grid, false the symmetric one; when given, it
        /// sets sym.
        #[serde(default)]
        pub zero_point: Option<bool>,
        /// Olive's `version`, AutoAWQ's kernel layout: only `gemm` is written here.
        #[serde(default)]
        pub version: Option<String>,
        /// Olive's `modules_to_not_convert`: decoder linears left in float (the rest of `modules` is quantized).
        #[serde(default)]
        pub modules_to_not_convert: Option<Vec<String>>,
        /// Olive's `input_model_dtype` (the dtype AutoAWQ loads the model in): accepted; the search computes in f32.
        #[serde(default)]
        pub input_model_dtype: Option<String>,
        /// Olive's `export_compatible` (AutoAWQ saves fake-quantized float weights instead of packing): only false.
        #[serde(default)]
        pub export_compatible: Option<bool>,
    }
}

/// The common fields with Olive's AutoAWQQuantizer names applied over ours.
fn with_olive_names(c: &AwqConfig) -> Result<olive_quant::pass::Common, Error> {
    let mut common = c.common();
    if let Some(g) = c.q_group_size {
        common.group_size = g;
    }
    if let Some(zero_point) = c.zero_point {
        common.sym = !zero_point;
    }
    match c.version.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => {}
        Some("gemm") => common.format = olive_quant::pass::Format::Awq,
        Some(other) => {
            return Err(Error::InvalidConfig(format!(
                "version {other:?}: only \"gemm\" (AutoAWQ's GEMM layout) is written; gemv, gemv_fast and marlin \
                 are GPU kernel layouts"
            )))
        }
    }
    if c.export_compatible == Some(true) {
        return Err(Error::InvalidConfig(
            "export_compatible true (float fake-quantized weights) is not supported: the GEMM layout exports to \
             ONNX through auto-opt as it is"
                .into(),
        ));
    }
    if let Some(skip) = &c.modules_to_not_convert {
        common
            .modules
            .retain(|m| !skip.iter().any(|s| s == m || s.ends_with(&format!(".{m}"))));
        if common.modules.is_empty() {
            return Err(Error::InvalidConfig(
                "modules_to_not_convert leaves no decoder linear to quantize".into(),
            ));
        }
    }
    Ok(common)
}

fn yes() -> bool {
    true
}

fn default_grid() -> usize {
    AwqOptions::default().n_grid
}

fn default_loss_tokens() -> usize {
    AwqOptions::default().loss_tokens
}

/// AWQ weight quantization.
pub struct AutoAwqQuantizer;

impl Pass for AutoAwqQuantizer {
    const NAME: &'static str = "AutoAWQQuantizer";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "AWQ weight quantization (scale and clip search on calibration data), layer by layer, AutoAWQ GEMM output.";
    const ACCEPTS: &'static [&'static str] = &[kinds::HF];
    const PRODUCES: &'static [&'static str] = &[kinds::HF];
    const DEVICES: &'static [&'static str] = &["cpu", "gpu"];
    type Config = AwqConfig;

    fn run(model: Model, c: AwqConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        if c.n_grid == 0 {
            return Err(Error::InvalidConfig(
                "n_grid 0: expected at least 1 ratio".into(),
            ));
        }
        let method = Method::Awq(AwqOptions {
            n_grid: c.n_grid,
            duo_scaling: c.duo_scaling,
            apply_clip: c.apply_clip,
            loss_tokens: c.loss_tokens,
            ..AwqOptions::default()
        });
        let common = with_olive_names(&c)?;
        run(model, common, method, ctx)
    }
}

olive_pass_sdk::export_plugin! {
    name: "quant-awq",
    version: "0.1.0",
    passes: [AutoAwqQuantizer],
}

#[cfg(test)]
mod tests {
    use super::*;
    use olive_pass_sdk::testing::TestHost;
    use olive_pass_sdk::ErrorKind;

    #[test]
    fn olives_autoawq_names_set_the_grid_layout_and_modules() {
        let c: AwqConfig = serde_json::from_str(
            r#"{"q_group_size": 64, "zero_point": false, "version": "GEMM", "bits": 4,
                "modules_to_not_convert": ["down_proj"], "input_model_dtype": "fp16", "export_compatible": false}"#,
        )
        .unwrap();
        let common = with_olive_names(&c).unwrap();
        assert_eq!((common.group_size, common.sym), (64, true));
        assert_eq!(common.format, olive_quant::pass::Format::Awq);
        assert!(
            !common.modules.contains(&"down_proj".to_owned())
                && common.modules.contains(&"q_proj".to_owned())
        );
        for bad in [r#"{"version": "gemv"}"#, r#"{"export_compatible": true}"#] {
            let c: AwqConfig = serde_json::from_str(bad).unwrap();
            assert!(
                matches!(with_olive_names(&c), Err(Error::InvalidConfig(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn quantizes_a_tiny_llama_with_the_default_calibration_text() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        olive_quant::pass::testing::write_tiny_llama(&input, 2).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let host = TestHost::new(&out);
        let model = Model::new(kinds::HF, &input);
        let config = r#"{"bits": 4, "group_size": 32, "n_samples": 4, "seq_len": 64}"#;
        let result = host
            .run_plugin(&OLIVE_PLUGIN, "AutoAWQQuantizer", &model, config)
            .unwrap();
        assert_eq!(result.metadata["quant_method"], "awq");
        let logs = host.logs();
        assert!(
            logs.iter()
                .any(|(_, l)| l.contains("calibration: 4 windows of 64 tokens")),
            "{logs:?}"
        );
        assert!(host
            .progress()
            .iter()
            .any(|p| p.message.contains("output error")));
        let cfg =
            olive_model::quantized::QuantizationConfig::from_config_json(&out.join("config.json"))
                .unwrap()
                .unwrap();
        assert_eq!(cfg.method, olive_model::quantized::QuantMethod::AwqGemm);
        let t = olive_nn::Transformer::load(&out).unwrap();
        assert!(t
            .forward(&[1, 5, 9], &mut t.new_cache(3))
            .unwrap()
            .iter()
            .all(|v| v.is_finite()));

        // A calibration text shorter than one window: a clear config error, nothing written.
        let out2 = dir.path().join("out2");
        std::fs::create_dir(&out2).unwrap();
        let data = dir.path().join("tiny.jsonl");
        std::fs::write(&data, "{\"text\": \"the best of\"}\n").unwrap();
        let config =
            serde_json::json!({"data_config": {"data_files": [data]}, "seq_len": 64}).to_string();
        let err = TestHost::new(&out2)
            .run_plugin(&OLIVE_PLUGIN, "AutoAWQQuantizer", &model, &config)
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::INVALID_CONFIG, "{}", err.message);
        assert!(err.message.contains("calibration data"), "{}", err.message);
        assert!(std::fs::read_dir(&out2).unwrap().next().is_none());
    }
}
