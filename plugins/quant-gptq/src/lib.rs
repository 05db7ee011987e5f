//! olive-rs plugin `quant-gptq`: the `GptqQuantizer` pass (Olive's name) — GPTQ (Frantar et al. 2022) with
//! calibration Hessians, lazy-batch Cholesky updates, damping and act-order, streamed one decoder layer at a time
//! with AutoGPTQ's true-sequential order (`olive_quant::stream::quantize_model`), written in the GPTQ v1 layout
//! (`quant_method: gptq`, `checkpoint_format: gptq`, g_idx).

use olive_data::DataConfig;
use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use olive_quant::pass::{
    data_config_schema, default_bits, default_group_size, default_modules, default_seed, run,
    Common, Format,
};
use olive_quant::{GptqOptions, Method};
use schemars::JsonSchema;
use serde::Deserialize;

/// The config of `GptqQuantizer`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GptqConfig {
    /// Bits per weight: 2, 4 or 8 (the GPTQ v1 layout packs these).
    #[serde(default = "default_bits")]
    pub bits: u8,
    /// Inputs per quantization group (32, 64, 128, ...; one that does not divide in_features leaves a shorter
    /// last group); -1: one group per output channel.
    #[serde(default = "default_group_size")]
    pub group_size: i64,
    /// Symmetric grid (zero point 2^(bits-1)); false: asymmetric min-max grid.
    #[serde(default)]
    pub sym: bool,
    /// Decoder linears to quantize: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (Phi-3:
    /// qkv_proj, gate_up_proj); default all. lm_head and embed_tokens are not supported (kept in their dtype).
    #[serde(default = "default_modules")]
    pub modules: Vec<String>,
    /// Output layout: auto (= gptq), gptq (GPTQ v1) or awq (AutoAWQ GEMM: 4 bits, no act-order).
    #[serde(default)]
    pub format: Format,
    /// Columns per lazy-update block (GPTQ's blocksize).
    #[serde(default = "default_block_size")]
    pub block_size: usize,
    /// Damping added to the Hessian's diagonal, as a fraction of its mean (AutoGPTQ damp_percent).
    #[serde(default = "default_damp")]
    pub damp_percent: f32,
    /// Act-order: quantize inputs by decreasing Hessian diagonal (AutoGPTQ desc_act; writes a permuted g_idx).
    #[serde(default)]
    pub desc_act: bool,
    /// With desc_act: fix every group's grid up front so groups stay in input order (AutoGPTQ static_groups).
    #[serde(default)]
    pub static_groups: bool,
    /// Quantize q/k/v, then o, then gate/up, then down, each on inputs from the already quantized ones.
    #[serde(default = "yes")]
    pub true_sequential: bool,
    /// Calibration dataset (Olive's dataset flags); null: the project's calibration text (data/calibration.txt).
    #[serde(default)]
    #[schemars(schema_with = "data_config_schema")]
    pub data_config: Option<DataConfig>,
    /// Calibration windows (default: data_config.max_samples, else 16).
    #[serde(default)]
    pub n_samples: Option<usize>,
    /// Tokens per calibration window (default 512).
    #[serde(default)]
    pub seq_len: Option<usize>,
    /// Seed of the calibration windows' offsets.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn yes() -> bool {
    true
}

fn default_block_size() -> usize {
    GptqOptions::default().block_size
}

fn default_damp() -> f32 {
    GptqOptions::default().damp_percent
}

/// GPTQ weight quantization.
pub struct GptqQuantizer;

impl Pass for GptqQuantizer {
    const NAME: &'static str = "GptqQuantizer";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "GPTQ weight quantization (calibration Hessians, act-order, damping), layer by layer, GPTQ v1 output.";
    const ACCEPTS: &'static [&'static str] = &[kinds::HF];
    const PRODUCES: &'static [&'static str] = &[kinds::HF];
    const DEVICES: &'static [&'static str] = &["cpu"];
    type Config = GptqConfig;

    fn run(model: Model, c: GptqConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        let method = Method::Gptq(GptqOptions {
            block_size: c.block_size,
            damp_percent: c.damp_percent,
            act_order: c.desc_act,
            static_groups: c.static_groups,
            true_sequential: c.true_sequential,
        });
        let common = Common {
            bits: c.bits,
            group_size: c.group_size,
            sym: c.sym,
            modules: c.modules,
            data_config: c.data_config,
            n_samples: c.n_samples,
            seq_len: c.seq_len,
            seed: c.seed,
            format: c.format,
        };
        run(model, common, method, ctx)
    }
}

olive_pass_sdk::export_plugin! {
    name: "quant-gptq",
    version: "0.1.0",
    passes: [GptqQuantizer],
}

#[cfg(test)]
mod tests {
    use super::*;
    use olive_pass_sdk::testing::TestHost;
    use olive_pass_sdk::ErrorKind;

    #[test]
    fn quantizes_a_tiny_llama_with_act_order_and_checks_options() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        olive_quant::pass::testing::write_tiny_llama(&input, 3).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let host = TestHost::new(&out);
        let model = Model::new(kinds::HF, &input);
        let config =
            r#"{"bits": 4, "group_size": 32, "desc_act": true, "n_samples": 4, "seq_len": 64}"#;
        let result = host
            .run_plugin(&OLIVE_PLUGIN, "GptqQuantizer", &model, config)
            .unwrap();
        assert_eq!(result.metadata["quant_method"], "gptq");
        let cfg =
            olive_model::quantized::QuantizationConfig::from_config_json(&out.join("config.json"))
                .unwrap()
                .unwrap();
        assert!(cfg.desc_act && !cfg.sym && cfg.group_size == Some(32));
        let t = olive_nn::Transformer::load(&out).unwrap();
        assert!(t
            .forward(&[1, 5, 9], &mut t.new_cache(3))
            .unwrap()
            .iter()
            .all(|v| v.is_finite()));

        let out2 = dir.path().join("out2");
        std::fs::create_dir(&out2).unwrap();
        let host = TestHost::new(&out2);
        for (config, expect) in [
            (
                r#"{"damp_percent": -1.0, "n_samples": 2, "seq_len": 16}"#,
                "damp_percent",
            ),
            (
                r#"{"format": "awq", "desc_act": true, "n_samples": 2, "seq_len": 16}"#,
                "act-order",
            ),
            (r#"{"blocksize": 64}"#, "blocksize"),
        ] {
            let err = host
                .run_plugin(&OLIVE_PLUGIN, "GptqQuantizer", &model, config)
                .unwrap_err();
            assert_eq!(
                err.kind,
                ErrorKind::INVALID_CONFIG,
                "{config}: {}",
                err.message
            );
            assert!(err.message.contains(expect), "{config}: {}", err.message);
        }
        assert!(std::fs::read_dir(&out2).unwrap().next().is_none());
    }
}
