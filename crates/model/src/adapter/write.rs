//! Writes PEFT LoRA adapter folders as peft 0.21's `PeftModel.save_pretrained` lays them out: adapter_config.json
//! (the `LoraConfig` fields, `peft_type` LORA, `task_type` CAUSAL_LM) and adapter_model.safetensors
//! (`base_model.model.<module>.lora_A.weight` [r, in] / `lora_B.weight` [out, r], metadata `format: pt`), staged in a
//! hidden folder beside the target and renamed into place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

use super::{
    AdapterError, LoraConfig, LoraWeights, Result, TargetModules, CONFIG_FILE, WEIGHTS_FILE,
};

/// The float type the LoRA matrices are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F16,
    BF16,
}

impl WeightDtype {
    fn safetensors(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::F16 => Dtype::F16,
            WeightDtype::BF16 => Dtype::BF16,
        }
    }

    /// Little-endian bytes of `values` in this type.
    fn bytes(self, values: &[f32]) -> Vec<u8> {
        match self {
            WeightDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            WeightDtype::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            WeightDtype::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }
}

/// What adapter_config.json says about the trained adapter (one rank and one alpha for every module).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSaveConfig {
    /// `r`: the rank of every module.
    pub r: usize,
    /// `lora_alpha`.
    pub lora_alpha: f64,
    /// `lora_dropout` used in training (PEFT ignores it at inference).
    pub lora_dropout: f64,
    /// `target_modules`: module names PEFT matches as `key == t || key.ends_with(".t")`.
    pub target_modules: Vec<String>,
    /// `use_rslora`: scale alpha / sqrt(r) instead of alpha / r.
    pub use_rslora: bool,
    /// `base_model_name_or_path`: the model the adapter was trained over.
    pub base_model_name_or_path: Option<String>,
    /// The float type of the stored matrices.
    pub dtype: WeightDtype,
}

impl LoraSaveConfig {
    /// The scale PEFT applies to `B·A` for this config.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// adapter_config.json: the fields peft 0.21.2 writes for a plain LoRA adapter of a causal LM (the newer,
    /// variant-specific fields left out so that older PEFT releases load it too; PEFT fills in their defaults).
    pub fn to_json(&self) -> Value {
        // PEFT writes lora_alpha as given: an int when it is one.
        let alpha = if self.lora_alpha.fract() == 0.0 && self.lora_alpha.abs() < 1e15 {
            json!(self.lora_alpha as i64)
        } else {
            json!(self.lora_alpha)
        };
        json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": "none",
            "exclude_modules": null,
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layer_replication": null,
            "layers_pattern": null,
            "layers_to_transform": null,
            "loftq_config": {},
            "lora_alpha": alpha,
            "lora_bias": false,
            "lora_dropout": self.lora_dropout,
            "megatron_config": null,
            "megatron_core": "megatron.core",
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": self.target_modules,
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": self.use_rslora,
        })
    }

    /// The reader's view of this config, to select modules exactly as PEFT (and [`super::LoraAdapter`]) will.
    fn reader_config(&self) -> LoraConfig {
        LoraConfig {
            r: self.r,
            lora_alpha: self.lora_alpha,
            target_modules: TargetModules::Names(self.target_modules.clone()),
            use_rslora: self.use_rslora,
            base_model_name_or_path: self.base_model_name_or_path.clone(),
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
        }
    }
}

/// A safetensors tensor by name: its shape and little-endian bytes.
pub type NamedTensors = BTreeMap<String, (Vec<usize>, Vec<u8>)>;

/// Relative difference allowed between a module's scale and the config's alpha / r (f32 rounding).
const SCALE_TOLERANCE: f64 = 1e-5;

/// The safetensors tensors of an adapter, by name: (name, shape, little-endian bytes), after checking every module
/// against the config (rank r, shapes, scale, selected by target_modules, no module twice).
pub fn adapter_tensors(
    config: &LoraSaveConfig,
    weights: &[LoraWeights],
    path: &Path,
) -> Result<NamedTensors> {
    let config_err = |field: &str, expected: String| AdapterError::Config {
        path: path.join(CONFIG_FILE),
        field: field.to_string(),
        expected,
    };
    if config.r == 0 {
        return Err(config_err("r", "a positive integer, found 0".into()));
    }
    if !(config.lora_alpha.is_finite() && config.lora_alpha > 0.0) {
        return Err(config_err(
            "lora_alpha",
            format!("a positive number, found {}", config.lora_alpha),
        ));
    }
    if !(0.0..1.0).contains(&config.lora_dropout) {
        return Err(config_err(
            "lora_dropout",
            format!("a probability in [0, 1), found {}", config.lora_dropout),
        ));
    }
    if config.target_modules.is_empty() || config.target_modules.iter().any(|t| t.is_empty()) {
        return Err(config_err(
            "target_modules",
            format!("a list of module names, found {:?}", config.target_modules),
        ));
    }
    let weights_path = path.join(WEIGHTS_FILE);
    if weights.is_empty() {
        return Err(AdapterError::Weights {
            path: weights_path,
            reason: "no LoRA weights to write".into(),
        });
    }
    let reader = config.reader_config();
    let scale = config.scale();
    let mut tensors = BTreeMap::new();
    for w in weights {
        let key = w.module.hf_key();
        let module_err = |reason: String| AdapterError::Module {
            path: weights_path.clone(),
            module: key.clone(),
            reason,
        };
        if w.rank != config.r {
            return Err(module_err(format!(
                "rank {}, but adapter_config.json's r is {}",
                w.rank, config.r
            )));
        }
        if w.a.len() != w.rank * w.in_features || w.b.len() != w.out_features * w.rank {
            return Err(module_err(format!(
                "lora_A has {} values and lora_B {}, expected [{r}, {}] = {} and [{}, {r}] = {}",
                w.a.len(),
                w.b.len(),
                w.in_features,
                w.rank * w.in_features,
                w.out_features,
                w.out_features * w.rank,
                r = w.rank,
            )));
        }
        if ((w.scale as f64) - scale).abs() > SCALE_TOLERANCE * scale {
            return Err(module_err(format!(
                "scale {}, but lora_alpha {} and r {} give {scale}{}",
                w.scale,
                config.lora_alpha,
                config.r,
                if config.use_rslora { " (rslora)" } else { "" }
            )));
        }
        if !reader.targets(&key) {
            return Err(module_err(format!(
                "not selected by target_modules {:?}",
                config.target_modules
            )));
        }
        let prefix = format!("base_model.model.{key}");
        for (side, shape, data) in [
            ("lora_A", vec![w.rank, w.in_features], &w.a),
            ("lora_B", vec![w.out_features, w.rank], &w.b),
        ] {
            if let Some(bad) = data.iter().find(|v| !v.is_finite()) {
                return Err(module_err(format!("{side} holds {bad}")));
            }
            let name = format!("{prefix}.{side}.weight");
            if tensors
                .insert(name, (shape, config.dtype.bytes(data)))
                .is_some()
            {
                return Err(module_err("appears twice".into()));
            }
        }
    }
    Ok(tensors)
}

/// Writes `folder` (adapter_config.json + adapter_model.safetensors) after checking the weights against `config`
/// (see [`adapter_tensors`]). `folder` must not exist or be empty; nothing is left there on failure.
pub fn write_adapter(
    folder: &Path,
    config: &LoraSaveConfig,
    weights: &[LoraWeights],
) -> Result<()> {
    let io = |path: &Path, error: std::io::Error| AdapterError::Io {
        path: path.to_path_buf(),
        error,
    };
    if folder.exists() {
        let mut entries = std::fs::read_dir(folder).map_err(|e| io(folder, e))?;
        if entries.next().is_some() {
            return Err(io(
                folder,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the adapter folder exists and is not empty",
                ),
            ));
        }
    }
    let tensors = adapter_tensors(config, weights, folder)?;
    let name = folder.file_name().ok_or_else(|| {
        io(
            folder,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the adapter path does not end in a folder name",
            ),
        )
    })?;
    let parent = match folder.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| io(&parent, e))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{}.tmp-", name.to_string_lossy()))
        .tempdir_in(&parent)
        .map_err(|e| io(&parent, e))?;
    let views = tensors
        .iter()
        .map(|(name, (shape, bytes))| {
            TensorView::new(config.dtype.safetensors(), shape.clone(), bytes)
                .map(|view| (name.clone(), view))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| AdapterError::Weights {
            path: folder.join(WEIGHTS_FILE),
            reason: format!("cannot lay out the tensors: {e}"),
        })?;
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    let staged_weights = staging.path().join(WEIGHTS_FILE);
    safetensors::serialize_to_file(views, metadata, &staged_weights).map_err(|e| {
        AdapterError::Weights {
            path: staged_weights.clone(),
            reason: format!("cannot write: {e}"),
        }
    })?;
    let text =
        serde_json::to_string_pretty(&config.to_json()).map_err(|error| AdapterError::Json {
            path: folder.join(CONFIG_FILE),
            error,
        })?;
    let staged_config = staging.path().join(CONFIG_FILE);
    std::fs::write(&staged_config, text + "\n").map_err(|e| io(&staged_config, e))?;
    if folder.exists() {
        std::fs::remove_dir(folder).map_err(|e| io(folder, e))?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, folder).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staged);
        io(folder, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::{LoraAdapter, LoraModule, Projection};

    fn save_config(targets: &[&str]) -> LoraSaveConfig {
        LoraSaveConfig {
            r: 2,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            target_modules: targets.iter().map(|t| t.to_string()).collect(),
            use_rslora: false,
            base_model_name_or_path: Some("tiny".into()),
            dtype: WeightDtype::F32,
        }
    }

    /// A module with distinct values: lora_A [2, in], lora_B [out, 2].
    fn module(layer: usize, projection: Projection, in_f: usize, out_f: usize) -> LoraWeights {
        let base = (layer * 10 + projection as usize) as f32;
        LoraWeights {
            module: LoraModule { layer, projection },
            rank: 2,
            in_features: in_f,
            out_features: out_f,
            a: (0..2 * in_f).map(|i| base + i as f32 * 0.01).collect(),
            b: (0..out_f * 2).map(|i| -base - i as f32 * 0.02).collect(),
            scale: 8.0,
        }
    }

    #[test]
    fn written_adapters_read_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("out").join("adapter");
        let weights = vec![
            module(0, Projection::Q, 16, 16),
            module(0, Projection::V, 16, 8),
            module(1, Projection::Q, 16, 16),
            module(1, Projection::V, 16, 8),
        ];
        write_adapter(&folder, &save_config(&["q_proj", "v_proj"]), &weights).unwrap();
        let adapter = LoraAdapter::open(&folder).unwrap();
        assert_eq!(adapter.weights(), weights.as_slice());
        assert_eq!(adapter.config().r, 2);
        assert_eq!(adapter.config().lora_alpha, 16.0);
        assert_eq!(
            adapter.config().base_model_name_or_path.as_deref(),
            Some("tiny")
        );
        let text = std::fs::read_to_string(folder.join(CONFIG_FILE)).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["task_type"], "CAUSAL_LM");
        assert_eq!(value["lora_alpha"], json!(16));
        assert_eq!(value["target_modules"], json!(["q_proj", "v_proj"]));
        // Nothing but the adapter is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["adapter"]);
    }

    #[test]
    fn half_precision_and_rslora_round_trip_within_rounding() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = save_config(&["o_proj"]);
        config.dtype = WeightDtype::BF16;
        config.use_rslora = true;
        config.lora_alpha = 3.5;
        let mut w = module(0, Projection::O, 16, 16);
        w.scale = (3.5 / 2f64.sqrt()) as f32;
        write_adapter(dir.path(), &config, std::slice::from_ref(&w)).unwrap();
        let read = LoraAdapter::open(dir.path()).unwrap();
        let got = &read.weights()[0];
        assert!((got.scale - w.scale).abs() < 1e-6);
        for (x, y) in got.a.iter().chain(&got.b).zip(w.a.iter().chain(&w.b)) {
            assert!((x - y).abs() <= y.abs() * 1e-2, "{x} vs {y}");
        }
    }

    #[test]
    fn inconsistent_weights_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("adapter");
        let config = save_config(&["q_proj"]);
        let cases: Vec<(Vec<LoraWeights>, &str)> = vec![
            (vec![], "no LoRA weights"),
            (
                vec![module(0, Projection::K, 16, 8)],
                "not selected by target_modules",
            ),
            (
                vec![LoraWeights {
                    rank: 3,
                    ..module(0, Projection::Q, 16, 16)
                }],
                "rank 3",
            ),
            (
                vec![LoraWeights {
                    scale: 1.0,
                    ..module(0, Projection::Q, 16, 16)
                }],
                "scale 1",
            ),
            (
                vec![LoraWeights {
                    in_features: 15,
                    ..module(0, Projection::Q, 16, 16)
                }],
                "expected [2, 15]",
            ),
            (
                vec![
                    module(0, Projection::Q, 16, 16),
                    module(0, Projection::Q, 16, 16),
                ],
                "appears twice",
            ),
        ];
        for (weights, expected) in cases {
            let err = write_adapter(&folder, &config, &weights)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err} lacks {expected}");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("x"), "x").unwrap();
        let err = write_adapter(&folder, &config, &[module(0, Projection::Q, 16, 16)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not empty"), "{err}");
    }
}
