//! olive-rs plugin `quant-rtn`: the `Rtn` pass (Olive's name) — round-to-nearest weight quantization of a Hugging
//! Face Llama-family model on GPTQ's min-max grid, streamed one decoder layer at a time
//! (`olive_quant::stream::quantize_model`), written in the GPTQ v1 layout (`quant_method: gptq`) that
//! transformers, crates/model and the onnx-builder read. (Olive's own Rtn writes its `quant_method: olive`
//! layout, which is GPTQ v1's packing without g_idx: the same numbers under another name.)

use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use olive_quant::pass::run;
use olive_quant::Method;

olive_quant::quantizer_config! {
    /// The config of `Rtn`.
    pub struct RtnConfig {
        bits: "Bits per weight: 2, 3, 4 or 8 (GPTQ v1 layout; 3 as AutoGPTQ packs it).",
        format: "Output layout: auto (= gptq), gptq (GPTQ v1) or awq (AutoAWQ GEMM: 4 bits, group dividing \
                 in_features). RTN needs no calibration data; with data_config each layer's output error is \
                 measured on it.",
    }
}

/// Round-to-nearest weight quantization.
pub struct Rtn;

impl Pass for Rtn {
    const NAME: &'static str = "Rtn";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "Round-to-nearest weight quantization (2/3/4/8 bits, groups, sym/asym, optional lm_head), layer by layer, \
         GPTQ v1 output.";
    const ACCEPTS: &'static [&'static str] = &[kinds::HF];
    const PRODUCES: &'static [&'static str] = &[kinds::HF];
    const DEVICES: &'static [&'static str] = &["cpu"];
    type Config = RtnConfig;

    fn run(model: Model, c: RtnConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        run(model, c.common(), Method::Rtn, ctx)
    }
}

olive_pass_sdk::export_plugin! {
    name: "quant-rtn",
    version: "0.1.0",
    passes: [Rtn],
}

#[cfg(test)]
mod tests {
    use super::*;
    use olive_pass_sdk::testing::TestHost;
    use olive_pass_sdk::ErrorKind;

    #[test]
    fn quantizes_a_tiny_llama_and_rejects_bad_configs() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        olive_quant::pass::testing::write_tiny_llama(&input, 1).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let host = TestHost::new(&out);
        let model = Model::new(kinds::HF, &input);
        let result = host
            .run_plugin(
                &OLIVE_PLUGIN,
                "Rtn",
                &model,
                r#"{"bits": 4, "group_size": 32}"#,
            )
            .unwrap();
        assert_eq!(result.metadata["quant_method"], "gptq");
        let progress = host.progress();
        assert_eq!(
            progress.last().map(|p| (p.done, p.total)),
            Some((2, 2)),
            "{progress:?}"
        );
        assert!(progress[0].message.contains("weight error"), "{progress:?}");
        let t = olive_nn::Transformer::load(&out).unwrap();
        let logits = t.forward(&[1, 5, 9], &mut t.new_cache(3)).unwrap();
        assert!(logits.iter().all(|v| v.is_finite()));

        let out2 = dir.path().join("out2");
        std::fs::create_dir(&out2).unwrap();
        let host = TestHost::new(&out2);
        for (config, kind, expect) in [
            (
                r#"{"bits": 4, "nbits": 4}"#,
                ErrorKind::INVALID_CONFIG,
                "nbits",
            ),
            (r#"{"bits": 5}"#, ErrorKind::INVALID_CONFIG, "bits 5"),
            (r#"{"embeds": true}"#, ErrorKind::INVALID_CONFIG, "embeds"),
            (
                r#"{"group_size": 0}"#,
                ErrorKind::INVALID_CONFIG,
                "group_size 0",
            ),
            (
                r#"{"modules": ["embed_tokens"]}"#,
                ErrorKind::INVALID_CONFIG,
                "embed_tokens",
            ),
        ] {
            let err = host
                .run_plugin(&OLIVE_PLUGIN, "Rtn", &model, config)
                .unwrap_err();
            assert_eq!(err.kind, kind, "{config}: {}", err.message);
            assert!(err.message.contains(expect), "{config}: {}", err.message);
        }
        // An already quantized model is refused.
        let err = host
            .run_plugin(&OLIVE_PLUGIN, "Rtn", &Model::new(kinds::HF, &out), "{}")
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UNSUPPORTED_MODEL, "{}", err.message);
        assert!(std::fs::read_dir(&out2).unwrap().next().is_none());
    }
}
