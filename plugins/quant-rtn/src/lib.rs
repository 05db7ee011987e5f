//! olive-rs plugin `quant-rtn`: the `Rtn` pass (Olive's name) — round-to-nearest weight quantization of a Hugging
//! Face Llama-family model on GPTQ's min-max grid, streamed one decoder layer at a time
//! (`olive_quant::stream::quantize_model`), written in the GPTQ v1 layout (`quant_method: gptq`) that
//! transformers, crates/model and the onnx-builder read, or in Olive's own `quant_method: olive` layout
//! (`format: olive`; uint8 packed along the input, the zero point itself), the layout quantized embeddings
//! (`embeds`, as Olive's Rtn has them) are written in.

use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use olive_quant::pass::run;
use olive_quant::Method;

olive_quant::quantizer_config! {
    /// The config of `Rtn`.
    pub struct RtnConfig {
        bits: "Bits per weight: 2, 3, 4 or 8 (GPTQ v1 layout; 3 as AutoGPTQ packs it; Olive's layout: 2, 4, 8).",
        format: "Output layout: auto (gptq; olive when embeds), gptq (GPTQ v1), awq (AutoAWQ GEMM: 4 bits, group \
                 dividing in_features) or olive (Olive's quant_method olive). RTN needs no calibration data; with \
                 data_config each layer's output error is measured on it.",
        /// Quantize the embeddings too (Olive's embeds; Olive's layout, the only one with quantized embeddings;
        /// also on when modules names embed_tokens).
        #[serde(default)]
        pub embeds: bool,
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
    const DEVICES: &'static [&'static str] = &["cpu", "gpu"];
    type Config = RtnConfig;

    fn run(model: Model, c: RtnConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        let mut common = c.common();
        common.embeds = c.embeds;
        run(model, common, Method::Rtn, ctx)
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
            (
                r#"{"embeds": true, "format": "gptq"}"#,
                ErrorKind::INVALID_CONFIG,
                "only in Olive's layout",
            ),
            (
                r#"{"embeds": true, "bits": 3}"#,
                ErrorKind::INVALID_CONFIG,
                "Olive layout packs 2, 4 or 8",
            ),
            (
                r#"{"group_size": 0}"#,
                ErrorKind::INVALID_CONFIG,
                "group_size 0",
            ),
            (
                r#"{"modules": ["embed_token"]}"#,
                ErrorKind::INVALID_CONFIG,
                "unknown module `embed_token`",
            ),
            (
                r#"{"num_gpus": 2}"#,
                ErrorKind::INVALID_CONFIG,
                "num_gpus 2: spreading the decoder layers over GPUs needs device gpu",
            ),
            (
                r#"{"num_gpus": 0}"#,
                ErrorKind::INVALID_CONFIG,
                "num_gpus 0",
            ),
        ] {
            let err = host
                .run_plugin(&OLIVE_PLUGIN, "Rtn", &model, config)
                .unwrap_err();
            assert_eq!(err.kind, kind, "{config}: {}", err.message);
            assert!(err.message.contains(expect), "{config}: {}", err.message);
        }
        // More GPUs than the machine has: the error names the key (no driver here, or too few devices).
        let err = TestHost::new(&out2)
            .with_device("gpu")
            .run_plugin(&OLIVE_PLUGIN, "Rtn", &model, r#"{"num_gpus": 64}"#)
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::INVALID_CONFIG, "{}", err.message);
        assert!(err.message.starts_with("num_gpus 64: "), "{}", err.message);
        // An already quantized model is refused.
        let err = host
            .run_plugin(&OLIVE_PLUGIN, "Rtn", &Model::new(kinds::HF, &out), "{}")
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UNSUPPORTED_MODEL, "{}", err.message);
        assert!(std::fs::read_dir(&out2).unwrap().next().is_none());
    }

    #[test]
    fn quantizes_embeddings_in_olive_layout_untied_or_tied_with_the_lm_head() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        olive_quant::pass::testing::write_tiny_llama(&input, 5).unwrap();
        let w = olive_model::Checkpoint::open(&input)
            .unwrap()
            .tensor_f32("model.embed_tokens.weight")
            .unwrap()
            .data;
        let model = Model::new(kinds::HF, &input);
        for (name, config, tied) in [
            (
                "embeds",
                r#"{"bits": 4, "group_size": 32, "embeds": true}"#,
                false,
            ),
            (
                "both",
                r#"{"bits": 4, "group_size": 32, "modules": ["q_proj", "embed_tokens", "lm_head"]}"#,
                true,
            ),
        ] {
            let out = dir.path().join(name);
            std::fs::create_dir(&out).unwrap();
            let result = TestHost::new(&out)
                .run_plugin(&OLIVE_PLUGIN, "Rtn", &model, config)
                .unwrap();
            assert_eq!(result.metadata["quant_method"], "olive", "{name}");
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
            let qc = &json["quantization_config"];
            assert_eq!(
                (&qc["quant_method"], &qc["embeds"], &qc["lm_head"]),
                (&"olive".into(), &true.into(), &tied.into()),
                "{name}"
            );
            assert_eq!(json["tie_word_embeddings"], tied, "{name}");
            assert_eq!(qc["tie_word_embeddings"], tied, "{name}");
            let cfg = olive_model::quantized::QuantizationConfig::from_value(
                std::path::Path::new("config.json"),
                qc,
            )
            .unwrap();
            let ckpt = olive_model::Checkpoint::open(&out).unwrap();
            assert!(!ckpt.contains("model.embed_tokens.weight"), "{name}");
            // untied: the float lm_head keeps the original table; tied: no lm_head tensor at all
            assert_eq!(ckpt.contains("lm_head.weight"), !tied, "{name}");
            assert!(!ckpt.contains("lm_head.qweight"), "{name}");
            assert_eq!(
                ckpt.contains("model.layers.0.mlp.down_proj.qweight"),
                !tied,
                "{name}"
            );
            let e = olive_model::quantized::quantized_linear(&ckpt, "model.embed_tokens", &cfg)
                .unwrap();
            assert_eq!((e.out_features, e.in_features), (64, 64));
            for (o, (q, w)) in e.dequantize().chunks(64).zip(w.chunks(64)).enumerate() {
                for (i, (a, b)) in q.iter().zip(w).enumerate() {
                    let step = e.scales[o * 2 + i / 32];
                    assert!((a - b).abs() <= step * 0.5001, "{name} ({o}, {i})");
                }
            }
        }
    }
}
