//! Packaging an output model (Olive's `packaging_config`, olive/engine/packaging/packaging_generator.py, type
//! Zipfile): `<output_dir>/<name>.zip` laid out as Olive lays it out — `models_rank.json` and
//! `CandidateModels/<device>-<ep>/BestCandidateModel_1/` with the model folder (`model/`, and `adapter/` for a
//! PEFT adapter), `model_info.json`, `metrics.json` (when the run evaluated the model) — plus `manifest.json`
//! (inputs and outputs with dtypes and shapes, every file's size and sha256, the metrics) and a ready-to-run
//! `inference_sample.py` (onnxruntime-genai, onnxruntime or transformers). The zip is written atomically.

mod manifest;
mod sample;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use olive_pass_api::{kinds, Model};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

/// Olive's default `packaging_config.name`.
pub const DEFAULT_NAME: &str = "OutputModels";
/// Files up to this size are deflated; bigger ones (weights, which hardly compress) are stored.
const DEFLATE_LIMIT: u64 = 512 << 20;

/// `--package zip` of the commands that write a model.
#[derive(Args, Debug, Clone, Default)]
pub struct PackageArgs {
    /// Also write <output_path>/OutputModels.zip: the model, manifest.json (inputs, outputs, metrics) and a
    /// ready-to-run inference_sample.py (Olive's packaging_config of type Zipfile).
    #[arg(long = "package", value_parser = ["zip"])]
    pub package: Option<String>,
}

impl PackageArgs {
    /// Adds Olive's `packaging_config` to a command's workflow when `--package` is given.
    pub fn add_to(&self, workflow: &mut Value) {
        if self.package.is_some() {
            workflow["packaging_config"] = json!({"type": "Zipfile", "name": DEFAULT_NAME});
        }
    }

    /// Packages a command's output model when `--package` is given; prints where the zip is.
    pub fn write(
        &self,
        model: &Model,
        output_dir: &Path,
        device: &str,
        provider: &str,
    ) -> anyhow::Result<()> {
        if self.package.is_none() {
            return Ok(());
        }
        let candidate = Candidate {
            model,
            device,
            execution_provider: provider,
            metrics: None,
            input_metrics: None,
            history: Value::Null,
        };
        let zip = write_zip(output_dir, DEFAULT_NAME, &candidate)?;
        eprintln!("Packaged the model into {}", zip.display());
        Ok(())
    }
}

/// One `packaging_config` entry (only Zipfile is made here).
#[derive(Debug, Clone, PartialEq)]
pub struct PackagingConfig {
    /// The zip's name without `.zip`.
    pub name: String,
}

/// Reads Olive's `packaging_config`: one config or a list; each `{type, name, config}` with the type's fields
/// under `config` or beside `type` (Olive's NestedConfig).
pub fn parse_configs(value: &Value) -> anyhow::Result<Vec<PackagingConfig>> {
    let items: Vec<&Value> = match value {
        Value::Null => Vec::new(),
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            parse_one(item).with_context(|| match value {
                Value::Array(_) => format!("packaging_config[{i}]"),
                _ => "packaging_config".to_owned(),
            })
        })
        .collect()
}

fn parse_one(value: &Value) -> anyhow::Result<PackagingConfig> {
    let Value::Object(entries) = value else {
        bail!("expected a mapping {{type, name, config}}, found {value}");
    };
    let mut fields = Map::new();
    let mut name = DEFAULT_NAME.to_owned();
    for (key, v) in entries {
        match key.as_str() {
            "type" => match v.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("zipfile") => {}
                Some("dockerfile") => {
                    bail!("type: Dockerfile packaging is not supported; use Zipfile")
                }
                _ => bail!("type: expected Zipfile, found {v}"),
            },
            "name" => match v.as_str() {
                Some(n) if valid_name(n) => name = n.to_owned(),
                _ => {
                    bail!("name: expected a file name (letters, digits, `-`, `_`, `.`), found {v}")
                }
            },
            "config" => match v {
                Value::Object(config) => fields.extend(config.clone()),
                Value::Null => {}
                other => bail!("config: expected a mapping, found {other}"),
            },
            _ => {
                fields.insert(key.clone(), v.clone());
            }
        }
    }
    for (key, v) in &fields {
        match (key.as_str(), v) {
            ("export_in_mlflow_format", Value::Bool(false)) => {}
            ("export_in_mlflow_format", Value::Bool(true)) => bail!(
                "config.export_in_mlflow_format: the MLflow model format is not written; publish the output \
                 folder with `olive-host model create` instead"
            ),
            _ => bail!("config.{key}: unknown field; a Zipfile packaging config takes export_in_mlflow_format"),
        }
    }
    Ok(PackagingConfig { name })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The model to package and what the run knows about it.
pub struct Candidate<'a> {
    pub model: &'a Model,
    pub device: &'a str,
    pub execution_provider: &'a str,
    /// The model's evaluation (a footprint's metrics), when the run evaluated it.
    pub metrics: Option<Value>,
    pub input_metrics: Option<Value>,
    /// The passes that made the model, first first (Olive's configurations.json), or Null.
    pub history: Value,
}

/// Olive's accelerator spec string: `cpu-cpu`, `gpu-cuda` (the provider without `ExecutionProvider`).
fn accelerator(device: &str, provider: &str) -> String {
    let ep = provider
        .strip_suffix("ExecutionProvider")
        .unwrap_or(provider);
    format!(
        "{}-{}",
        device.to_ascii_lowercase(),
        ep.to_ascii_lowercase()
    )
}

/// A file to put in the zip: its path there and its source.
struct Item {
    name: String,
    source: PathBuf,
}

/// Every file under `folder` (sorted, `/`-separated under `prefix`).
fn files_under(folder: &Path, prefix: &str, out: &mut Vec<Item>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(folder)
        .with_context(|| format!("cannot list {}", folder.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", folder.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|n| anyhow!("{}: file name {n:?} is not UTF-8", folder.display()))?;
        let rel = format!("{prefix}/{name}");
        if std::fs::metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .is_dir()
        {
            files_under(&path, &rel, out)?;
        } else {
            out.push(Item {
                name: rel,
                source: path,
            });
        }
    }
    Ok(())
}

/// The files of the model under `model/` (and its adapters under `adapter/`, `adapter_1/`, ...). A single-file
/// ONNX model brings the external data files its initializers name.
fn model_items(model: &Model) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    if model.path.is_dir() {
        files_under(&model.path, "model", &mut items)?;
    } else {
        let mut names = vec![file_name(&model.path)?];
        if model.kind == kinds::ONNX {
            names.extend(manifest::external_data_files(&model.path)?);
        }
        let dir = model.path.parent().unwrap_or(Path::new("."));
        for name in names {
            items.push(Item {
                source: dir.join(&name),
                name: format!("model/{name}"),
            });
        }
    }
    for (i, adapter) in model.adapter_paths.iter().enumerate() {
        let prefix = if i == 0 {
            "adapter".to_owned()
        } else {
            format!("adapter_{i}")
        };
        files_under(adapter, &prefix, &mut items)?;
    }
    Ok(items)
}

fn file_name(path: &Path) -> anyhow::Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{}: expected a UTF-8 file name", path.display()))
}

/// Olive's model config for the packaged model, its paths relative to the zip's root.
fn packaged_model_config(model: &Model, dir: &str) -> Value {
    let kind = if model.kind == kinds::ONNX {
        "onnxmodel"
    } else {
        "hfmodel"
    };
    let mut config = json!({"model_path": format!("{dir}/model")});
    if model.kind == kinds::ONNX && !model.path.is_dir() {
        if let Some(name) = model.path.file_name().and_then(|n| n.to_str()) {
            config["onnx_file_name"] = json!(name);
        }
    }
    if !model.adapter_paths.is_empty() {
        config["adapter_path"] = json!(format!("{dir}/adapter"));
    }
    if !model.metadata.is_empty() {
        config["model_attributes"] = Value::Object(model.metadata.clone());
    }
    json!({"type": kind, "config": config})
}

/// Writes `<output_dir>/<name>.zip` for `candidate` (atomically: a temporary file renamed into place); returns
/// its path.
pub fn write_zip(output_dir: &Path, name: &str, candidate: &Candidate) -> anyhow::Result<PathBuf> {
    let model = candidate.model;
    let dir = format!(
        "CandidateModels/{}/BestCandidateModel_1",
        accelerator(candidate.device, candidate.execution_provider)
    );
    let items = model_items(model)?;
    let io = manifest::inputs_outputs(model)
        .with_context(|| format!("reading the inputs and outputs of {}", model.path.display()))?;
    let sample = sample::script(model, &io, candidate.execution_provider)?;
    let model_config = packaged_model_config(model, &dir);
    let model_info = json!({"rank": 1, "model_config": model_config, "metrics": candidate.metrics});
    std::fs::create_dir_all(output_dir)
        .with_context(|| format!("cannot create {}", output_dir.display()))?;
    let path = output_dir.join(format!("{name}.zip"));
    crate::files::write_atomic_with(&path, |tmp| {
        let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(File::create(tmp)?));
        let small = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .compression_level(Some(1));
        let mut files = Vec::new();
        for item in &items {
            let (size, sha256) = add_file(&mut zip, &format!("{dir}/{}", item.name), &item.source)?;
            files.push(json!({"path": item.name, "size": size, "sha256": sha256}));
        }
        let mut add_json = |name: &str, value: &Value| -> anyhow::Result<()> {
            zip.start_file(format!("{dir}/{name}"), small)?;
            zip.write_all(&serde_json::to_vec_pretty(value)?)?;
            Ok(())
        };
        add_json("model_info.json", &model_info)?;
        if let Some(metrics) = &candidate.metrics {
            add_json(
                "metrics.json",
                &json!({"input_model_metrics": candidate.input_metrics, "candidate_model_metrics": metrics}),
            )?;
        }
        if !candidate.history.is_null() {
            add_json("configurations.json", &candidate.history)?;
        }
        let manifest = json!({
            "format": "olive-rs-package/1",
            "created_by": format!("olive-host {}", env!("CARGO_PKG_VERSION")),
            "model": {
                "type": model_config["type"],
                "path": "model",
                "adapter_path": (!model.adapter_paths.is_empty()).then_some("adapter"),
                "files": files,
            },
            "device": candidate.device,
            "execution_provider": candidate.execution_provider,
            "inputs": io.inputs,
            "outputs": io.outputs,
            "io_source": io.source,
            "metrics": candidate.metrics,
            "input_model_metrics": candidate.input_metrics,
            "sample": {"file": sample::FILE, "runtime": sample.runtime, "requires": sample.requires,
                       "command": format!("python {}", sample::FILE)},
        });
        add_json("manifest.json", &manifest)?;
        zip.start_file(format!("{dir}/{}", sample::FILE), small)?;
        zip.write_all(sample.text.as_bytes())?;
        zip.start_file("models_rank.json", small)?;
        zip.write_all(&serde_json::to_vec_pretty(&json!([model_info]))?)?;
        zip.finish()?.flush()?;
        Ok(())
    })?;
    Ok(path)
}

/// Streams one file into the zip (deflated up to DEFLATE_LIMIT, else stored; ZIP64 past 4 GiB); returns its size
/// and sha256.
fn add_file<W: Write + std::io::Seek>(
    zip: &mut zip::ZipWriter<W>,
    name: &str,
    source: &Path,
) -> anyhow::Result<(u64, String)> {
    let mut file =
        File::open(source).with_context(|| format!("cannot read {}", source.display()))?;
    let size = file.metadata()?.len();
    let options = if size <= DEFLATE_LIMIT {
        SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .compression_level(Some(1))
    } else {
        SimpleFileOptions::default().compression_method(CompressionMethod::Stored)
    }
    .large_file(size >= u32::MAX as u64);
    zip.start_file(name, options)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("cannot read {}", source.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        zip.write_all(&buffer[..n])?;
        copied += n as u64;
    }
    if copied != size {
        bail!(
            "{} changed while it was packaged ({size} bytes, then {copied})",
            source.display()
        );
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((size, sha256))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn olive_packaging_configs_parse() {
        let one = parse_configs(&json!({"type": "Zipfile", "name": "Best"})).unwrap();
        assert_eq!(
            one,
            vec![PackagingConfig {
                name: "Best".into()
            }]
        );
        let nested = parse_configs(
            &json!([{"type": "zipfile", "config": {"export_in_mlflow_format": false}}]),
        )
        .unwrap();
        assert_eq!(nested[0].name, DEFAULT_NAME);
        for (bad, expected) in [
            (
                json!({"type": "Dockerfile"}),
                "Dockerfile packaging is not supported",
            ),
            (
                json!({"type": "Zipfile", "name": "../x"}),
                "name: expected a file name",
            ),
            (
                json!({"type": "Zipfile", "export_in_mlflow_format": true}),
                "MLflow model format",
            ),
            (
                json!([{"type": "Zipfile", "base_image": "x"}]),
                "packaging_config[0]",
            ),
            (json!("Zipfile"), "expected a mapping"),
        ] {
            let err = format!("{:#}", parse_configs(&bad).unwrap_err());
            assert!(err.contains(expected), "{bad}: {err}");
        }
        assert_eq!(accelerator("GPU", "CUDAExecutionProvider"), "gpu-cuda");
    }

    /// A single-file ONNX model brings the external data its initializers name, and nothing else of its folder.
    #[test]
    fn a_single_onnx_file_is_packed_with_its_external_data() {
        use olive_onnx::proto::tensor_proto::DataLocation;
        use olive_onnx::proto::{GraphProto, ModelProto, StringStringEntryProto, TensorProto};
        use prost::Message;
        let dir = tempfile::tempdir().unwrap();
        let weight = TensorProto {
            name: Some("w".into()),
            data_location: Some(DataLocation::External as i32),
            external_data: vec![StringStringEntryProto {
                key: Some("location".into()),
                value: Some("m.onnx.data".into()),
            }],
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: Some(9),
            graph: Some(GraphProto {
                initializer: vec![weight],
                ..Default::default()
            }),
            ..Default::default()
        };
        std::fs::write(dir.path().join("m.onnx"), model.encode_to_vec()).unwrap();
        std::fs::write(dir.path().join("m.onnx.data"), [7u8; 64]).unwrap();
        std::fs::write(dir.path().join("unrelated.bin"), [1u8; 8]).unwrap();
        let model = Model::new(kinds::ONNX, dir.path().join("m.onnx"));
        let candidate = Candidate {
            model: &model,
            device: "cpu",
            execution_provider: "CPUExecutionProvider",
            metrics: None,
            input_metrics: None,
            history: Value::Null,
        };
        let out = dir.path().join("out");
        let zip_path = write_zip(&out, "Pkg", &candidate).unwrap();
        let mut archive = zip::ZipArchive::new(File::open(&zip_path).unwrap()).unwrap();
        let mut names: Vec<String> = (0..archive.len())
            .map(|i| archive.by_index(i).unwrap().name().unwrap().to_string())
            .collect();
        names.sort();
        let dir_in_zip = "CandidateModels/cpu-cpu/BestCandidateModel_1";
        let expected: Vec<String> = [
            "inference_sample.py",
            "manifest.json",
            "model/m.onnx",
            "model/m.onnx.data",
            "model_info.json",
        ]
        .iter()
        .map(|n| format!("{dir_in_zip}/{n}"))
        .chain(["models_rank.json".to_owned()])
        .collect();
        assert_eq!(names, expected);
        let mut data = Vec::new();
        archive
            .by_name(&format!("{dir_in_zip}/model/m.onnx.data"))
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        assert_eq!(data, [7u8; 64]);
        let mut text = String::new();
        archive
            .by_name(&format!("{dir_in_zip}/model_info.json"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        let info: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(info["model_config"]["config"]["onnx_file_name"], "m.onnx");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    }
}
