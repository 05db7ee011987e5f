//! olive-rs plugin `quant-gptq`: GPTQ (Frantar et al. 2022) with calibration Hessians, lazy-batch Cholesky
//! updates, damping and act-order, streamed one decoder layer at a time with AutoGPTQ's true-sequential order
//! (`olive_quant::stream::quantize_model`), written in the GPTQ v1 layout (`quant_method: gptq`,
//! `checkpoint_format: gptq`, g_idx). Two passes, under Olive's two names and config schemas: `GptqQuantizer`
//! (Olive's AutoGPTQ pass) and `Gptq` (Olive's own, the one `olive quantize --algorithm gptq` runs; its
//! `desc_act` unset means act-order exactly when group_size is -1).

use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use olive_quant::pass::run;
use olive_quant::{GptqOptions, Method};

olive_quant::quantizer_config! {
    /// The config of `GptqQuantizer`.
    pub struct GptqConfig {
        bits: "Bits per weight: 2, 3, 4 or 8 (GPTQ v1 layout; 3 as AutoGPTQ packs it).",
        format: "Output layout: auto (= gptq), gptq (GPTQ v1) or awq (AutoAWQ GEMM: 4 bits, no act-order, no \
                 lm_head).",
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
        /// Olive's `layers_block_name` (where AutoGPTQ finds the decoder layers): only the Llama family's
        /// `model.layers`.
        #[serde(default)]
        pub layers_block_name: Option<String>,
        /// Olive's `outside_layer_modules` (modules AutoGPTQ keeps on the device beside the layers): accepted, they
        /// are not quantized here either.
        #[serde(default)]
        pub outside_layer_modules: Option<Vec<String>>,
        /// Olive's `inside_layer_modules`: the groups of decoder linears quantized in order (e.g.
        /// `[["self_attn.q_proj", "self_attn.k_proj"], ["mlp.down_proj"]]`); when given, they are the modules.
        #[serde(default)]
        pub inside_layer_modules: Option<Vec<Vec<String>>>,
    }
}

olive_quant::quantizer_config! {
    /// The config of `Gptq` (Olive 0.13 `olive/passes/pytorch/gptq.py`).
    pub struct GptqOliveConfig {
        bits: "Bits per weight: 2, 3, 4 or 8 (GPTQ v1 layout; 3 as AutoGPTQ packs it).",
        format: "Output layout: auto (= gptq), gptq (GPTQ v1) or awq (AutoAWQ GEMM: 4 bits, no act-order, no \
                 lm_head).",
        /// Damping added to the Hessian's diagonal, as a fraction of its mean.
        #[serde(default = "default_damp")]
        pub damp_percent: f32,
        /// Act-order (quantize inputs by decreasing Hessian diagonal); unset: on exactly when group_size is -1,
        /// as in Olive.
        #[serde(default)]
        pub desc_act: Option<bool>,
        /// Columns per lazy-update block (GPTQ's blocksize).
        #[serde(default = "default_block_size")]
        pub block_size: usize,
    }
}

/// The common fields with Olive's GptqQuantizer model-structure names applied.
fn with_olive_names(c: &GptqConfig) -> Result<olive_quant::pass::Common, Error> {
    let mut common = c.common();
    if let Some(name) = c
        .layers_block_name
        .as_deref()
        .filter(|n| *n != "model.layers")
    {
        return Err(Error::InvalidConfig(format!(
            "layers_block_name {name:?}: the Llama-family layout keeps its decoder layers in \"model.layers\""
        )));
    }
    if let Some(groups) = &c.inside_layer_modules {
        // "self_attn.q_proj" names the module q_proj of each layer
        common.modules = groups
            .iter()
            .flatten()
            .map(|m| m.rsplit('.').next().unwrap_or(m).to_owned())
            .collect();
    }
    Ok(common)
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
    const DEVICES: &'static [&'static str] = &["cpu", "gpu"];
    type Config = GptqConfig;

    fn run(model: Model, c: GptqConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        let method = Method::Gptq(GptqOptions {
            block_size: c.block_size,
            damp_percent: c.damp_percent,
            act_order: c.desc_act,
            static_groups: c.static_groups,
            true_sequential: c.true_sequential,
        });
        let common = with_olive_names(&c)?;
        run(model, common, method, ctx)
    }
}

/// GPTQ weight quantization under Olive's own pass name and schema.
pub struct Gptq;

impl Pass for Gptq {
    const NAME: &'static str = "Gptq";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "GPTQ weight quantization (Olive's Gptq: act-order by default for group_size -1), layer by layer, GPTQ \
         v1 output.";
    const ACCEPTS: &'static [&'static str] = &[kinds::HF];
    const PRODUCES: &'static [&'static str] = &[kinds::HF];
    const DEVICES: &'static [&'static str] = &["cpu", "gpu"];
    type Config = GptqOliveConfig;

    fn run(model: Model, c: GptqOliveConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        let method = Method::Gptq(GptqOptions {
            block_size: c.block_size,
            damp_percent: c.damp_percent,
            act_order: c.desc_act.unwrap_or(c.group_size == -1),
            ..GptqOptions::default()
        });
        run(model, c.common(), method, ctx)
    }
}

olive_pass_sdk::export_plugin! {
    name: "quant-gptq",
    version: "0.1.0",
    passes: [GptqQuantizer, Gptq],
}

#[cfg(test)]
mod tests {
    use super::*;
    use olive_pass_sdk::testing::TestHost;
    use olive_pass_sdk::ErrorKind;

    #[test]
    fn olives_model_structure_names_choose_the_modules() {
        let c: GptqConfig = serde_json::from_str(
            r#"{"layers_block_name": "model.layers", "outside_layer_modules": ["model.embed_tokens", "model.norm"],
                "inside_layer_modules": [["self_attn.k_proj", "self_attn.v_proj"], ["mlp.down_proj"]]}"#,
        )
        .unwrap();
        assert_eq!(
            with_olive_names(&c).unwrap().modules,
            ["k_proj", "v_proj", "down_proj"]
        );
        let c: GptqConfig =
            serde_json::from_str(r#"{"layers_block_name": "transformer.h"}"#).unwrap();
        assert!(matches!(with_olive_names(&c), Err(Error::InvalidConfig(_))));
    }

    #[test]
    fn olives_gptq_pass_takes_act_order_from_the_group_size_and_refuses_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        olive_quant::pass::testing::write_tiny_llama(&input, 2).unwrap();
        let model = Model::new(kinds::HF, &input);
        for (group_size, act_order) in [(-1, true), (32, false)] {
            let out = dir.path().join(format!("out{group_size}"));
            std::fs::create_dir(&out).unwrap();
            let config = format!(
                r#"{{"bits": 4, "group_size": {group_size}, "sym": false, "lm_head": false, "overrides": null,
                    "damp_percent": 0.01, "desc_act": null, "n_samples": 2, "seq_len": 32}}"#
            );
            TestHost::new(&out)
                .run_plugin(&OLIVE_PLUGIN, "Gptq", &model, &config)
                .unwrap();
            let cfg = olive_model::quantized::QuantizationConfig::from_config_json(
                &out.join("config.json"),
            )
            .unwrap()
            .unwrap();
            assert_eq!(cfg.desc_act, act_order, "group_size {group_size}");
        }
        let out = dir.path().join("refused");
        std::fs::create_dir(&out).unwrap();
        let err = TestHost::new(&out)
            .run_plugin(
                &OLIVE_PLUGIN,
                "Gptq",
                &model,
                r#"{"overrides": {"model.layers.0.mlp.down_proj": {"bits": 8}}}"#,
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::INVALID_CONFIG);
        assert!(
            err.message
                .contains("overrides.model.layers.0.mlp.down_proj"),
            "{}",
            err.message
        );
        assert!(std::fs::read_dir(&out).unwrap().next().is_none());
    }

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
            (r#"{"embeds": true}"#, "embeds"),
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

    #[test]
    fn quantizes_a_tied_lm_head_with_the_final_norm_hessian_and_unties_it() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        olive_quant::pass::testing::write_tiny_llama(&input, 4).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let host = TestHost::new(&out);
        let model = Model::new(kinds::HF, &input);
        let config = r#"{"bits": 3, "group_size": 32, "modules": ["down_proj", "lm_head"], "n_samples": 4,
                         "seq_len": 64}"#;
        host.run_plugin(&OLIVE_PLUGIN, "GptqQuantizer", &model, config)
            .unwrap();
        let logs = host.logs();
        assert!(
            logs.iter()
                .any(|(_, l)| l.contains("lm_head [64, 64]: GPTQ") && l.contains("untied")),
            "{logs:?}"
        );
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(json["tie_word_embeddings"], false);
        assert_eq!(json["quantization_config"]["lm_head"], true);
        assert_eq!(json["quantization_config"]["bits"], 3);
        let cfg = olive_model::quantized::QuantizationConfig::from_value(
            std::path::Path::new("config.json"),
            &json["quantization_config"],
        )
        .unwrap();
        let ckpt = olive_model::Checkpoint::open(&out).unwrap();
        assert!(!ckpt.contains("lm_head.weight") && ckpt.contains("model.embed_tokens.weight"));
        assert!(!ckpt.contains("model.layers.0.mlp.up_proj.qweight"));
        let head = olive_model::quantized::quantized_linear(&ckpt, "lm_head", &cfg).unwrap();
        assert_eq!(
            (head.bits, head.out_features, head.in_features),
            (3, 64, 64)
        );
        // GPTQ moves error between columns but stays near the float weight
        let w = olive_model::Checkpoint::open(&input)
            .unwrap()
            .tensor_f32("model.embed_tokens.weight")
            .unwrap()
            .data;
        let wmax = w.iter().fold(0f32, |a, &b| a.max(b.abs()));
        let worst = head
            .dequantize()
            .iter()
            .zip(&w)
            .fold(0f32, |a, (q, w)| a.max((q - w).abs()));
        assert!(worst < 0.5 * wmax, "{worst} vs max |w| {wmax}");
        assert!(head.q.iter().all(|&v| v < 8));

        // embed_tokens / embeds are refused by name; bits 3 has no AWQ layout
        let out2 = dir.path().join("out2");
        std::fs::create_dir(&out2).unwrap();
        let host = TestHost::new(&out2);
        for (config, expect) in [
            (r#"{"modules": ["embed_tokens"]}"#, "embed_tokens"),
            (
                r#"{"bits": 3, "format": "awq", "n_samples": 2, "seq_len": 16}"#,
                "bits 3",
            ),
            (
                r#"{"lm_head": true, "format": "awq", "n_samples": 2, "seq_len": 16}"#,
                "lm_head",
            ),
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

    #[test]
    fn schema_lists_common_and_own_fields() {
        let schema = serde_json::to_value(schemars::schema_for!(GptqConfig)).unwrap();
        let props = schema["properties"].as_object().unwrap();
        for f in [
            "bits",
            "group_size",
            "sym",
            "modules",
            "lm_head",
            "format",
            "data_config",
            "n_samples",
            "seq_len",
            "seed",
            "overrides",
            "num_gpus",
            "block_size",
            "damp_percent",
            "desc_act",
            "static_groups",
            "true_sequential",
            "layers_block_name",
            "outside_layer_modules",
            "inside_layer_modules",
        ] {
            assert!(props.contains_key(f), "{f} missing from {props:?}");
        }
        assert_eq!(props.len(), 20);
        assert_eq!(schema["additionalProperties"], false);
    }
}
