//! The quantized model's Hugging Face folder (safetensors format spec; transformers' sharded layout
//! `model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`): one shard written per decoder layer as
//! it finishes, the rest (embeddings, final norm, lm_head) in the last shard, config.json with
//! `quantization_config`, tokenizer and generation files copied. Everything goes into `<output>.tmp-<pid>`,
//! renamed onto `<output>` at the end; an error or a drop before [`ModelWriter::finish`] removes it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::Dtype;
use serde_json::{json, Map, Value};

use crate::error::{QuantError, Result};

/// Files copied from the input folder when present (tokenizers, chat templates, generation defaults).
pub const COPIED_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
];

/// One tensor to write: name, dtype, shape and little-endian bytes (borrowed from the input's mapping or owned).
#[derive(Debug)]
pub struct OutTensor<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Cow<'a, [u8]>,
}

impl<'a> OutTensor<'a> {
    /// f32 values stored as `dtype` (F32, F16 or BF16: the input tensor's own dtype).
    pub fn from_f32(name: String, dtype: Dtype, shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        let bytes: Vec<u8> = match dtype {
            Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F16 => values
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
            Dtype::BF16 => values
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                .collect(),
            other => {
                return Err(QuantError::Unsupported(format!(
                    "tensor `{name}`: dtype {other:?}, expected F32, F16 or BF16"
                )))
            }
        };
        Ok(OutTensor {
            name,
            dtype,
            shape,
            bytes: Cow::Owned(bytes),
        })
    }
}

/// Writes the output folder shard by shard.
#[derive(Debug)]
pub struct ModelWriter {
    output: PathBuf,
    tmp: PathBuf,
    shards: usize,
    /// Which shards are written.
    done: Vec<bool>,
    written: usize,
    weight_map: BTreeMap<String, String>,
    total_size: u64,
    finished: bool,
}

impl ModelWriter {
    /// Starts `<output>.tmp-<pid>` for a model of `shards` shards. `output` must not exist, or be an empty folder
    /// (the pass host creates one), which the final rename replaces.
    pub fn create(output: &Path, shards: usize) -> Result<Self> {
        if output.exists() {
            let empty = output.is_dir()
                && std::fs::read_dir(output)
                    .map_err(|e| QuantError::io(output, e))?
                    .next()
                    .is_none();
            if !empty {
                return Err(QuantError::io(
                    output,
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "the output path exists and is not an empty folder",
                    ),
                ));
            }
        }
        let name = output
            .file_name()
            .ok_or_else(|| {
                QuantError::io(
                    output,
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "no folder name"),
                )
            })?
            .to_string_lossy();
        let tmp = output.with_file_name(format!("{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| QuantError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| QuantError::io(&tmp, e))?;
        Ok(ModelWriter {
            output: output.to_path_buf(),
            tmp,
            shards,
            done: vec![false; shards],
            written: 0,
            weight_map: BTreeMap::new(),
            total_size: 0,
            finished: false,
        })
    }

    /// The folder being written (inside it: the shards so far).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// The file name of shard `i` (0-based) of `n`.
    pub fn shard_name(i: usize, n: usize) -> String {
        format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
    }

    /// Writes shard `index` (0-based; shards may come in any order, each once); `after_each(name)` runs once a
    /// tensor's bytes are written (the stream drops the input's mapped pages there).
    pub fn write_shard(
        &mut self,
        index: usize,
        tensors: &[OutTensor<'_>],
        after_each: &mut dyn FnMut(&str),
    ) -> Result<PathBuf> {
        if index >= self.shards || self.done.get(index).copied().unwrap_or(false) {
            return Err(QuantError::Unsupported(format!(
                "internal: shard {} of {} written twice or out of range",
                index + 1,
                self.shards
            )));
        }
        let file = Self::shard_name(index, self.shards);
        let path = self.tmp.join(&file);
        self.total_size += write_safetensors(&path, tensors, after_each)?;
        for t in tensors {
            self.weight_map.insert(t.name.clone(), file.clone());
        }
        self.done[index] = true;
        self.written += 1;
        Ok(path)
    }

    /// Writes the index, config.json (the input's, with `quantization_config` and the `edits` set) and the copied
    /// files, then renames the folder into place.
    pub fn finish(
        mut self,
        input: &Path,
        quantization_config: Value,
        edits: &[(&str, Value)],
    ) -> Result<PathBuf> {
        if self.written != self.shards {
            return Err(QuantError::Unsupported(format!(
                "internal: {} of {} shards written",
                self.written, self.shards
            )));
        }
        let index = json!({
            "metadata": { "total_size": self.total_size },
            "weight_map": self.weight_map,
        });
        write_json(&self.tmp.join("model.safetensors.index.json"), &index)?;
        let config_path = input.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| QuantError::io(&config_path, e))?;
        let mut config: Map<String, Value> =
            serde_json::from_str(&text).map_err(|source| QuantError::Json {
                path: config_path.clone(),
                source,
            })?;
        config.insert("quantization_config".into(), quantization_config);
        for (key, value) in edits {
            config.insert((*key).into(), value.clone());
        }
        write_json(&self.tmp.join("config.json"), &Value::Object(config))?;
        for name in COPIED_FILES {
            let src = input.join(name);
            if src.is_file() {
                std::fs::copy(&src, self.tmp.join(name)).map_err(|e| QuantError::io(&src, e))?;
            }
        }
        // Custom modeling code of trust_remote_code models travels with the weights.
        for entry in std::fs::read_dir(input).map_err(|e| QuantError::io(input, e))? {
            let path = entry.map_err(|e| QuantError::io(input, e))?.path();
            if path.extension().is_some_and(|e| e == "py") && path.is_file() {
                if let Some(name) = path.file_name() {
                    std::fs::copy(&path, self.tmp.join(name))
                        .map_err(|e| QuantError::io(&path, e))?;
                }
            }
        }
        if self.output.is_dir() {
            // An empty folder (checked in `create`): rename(2) replaces it, but only when still empty.
            std::fs::remove_dir(&self.output).map_err(|e| QuantError::io(&self.output, e))?;
        }
        std::fs::rename(&self.tmp, &self.output).map_err(|e| QuantError::io(&self.output, e))?;
        self.finished = true;
        Ok(self.output.clone())
    }
}

impl Drop for ModelWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| QuantError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, text + "\n").map_err(|e| QuantError::io(path, e))
}

/// Writes a safetensors file tensor by tensor (8-byte header length, JSON header padded with spaces to 8 bytes,
/// data in order); returns the data bytes written.
fn write_safetensors(
    path: &Path,
    tensors: &[OutTensor<'_>],
    after_each: &mut dyn FnMut(&str),
) -> Result<u64> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0usize;
    for t in tensors {
        let expected = t.shape.iter().product::<usize>() * t.dtype.bitsize() / 8;
        if expected != t.bytes.len() {
            return Err(QuantError::Shape {
                what: "output tensor bytes",
                shape: format!("{} {:?} {:?}", t.name, t.dtype, t.shape),
                expected,
                got: t.bytes.len(),
            });
        }
        header.insert(
            t.name.clone(),
            json!({
                "dtype": format!("{:?}", t.dtype),
                "shape": t.shape,
                "data_offsets": [offset, offset + t.bytes.len()],
            }),
        );
        offset += t.bytes.len();
    }
    let mut head =
        serde_json::to_vec(&Value::Object(header)).map_err(|source| QuantError::Json {
            path: path.to_path_buf(),
            source,
        })?;
    head.resize(head.len().div_ceil(8) * 8, b' ');
    let io = |e| QuantError::io(path, e);
    let mut w = BufWriter::new(File::create(path).map_err(io)?);
    w.write_all(&(head.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&head).map_err(io)?;
    for t in tensors {
        w.write_all(&t.bytes).map_err(io)?;
        after_each(&t.name);
    }
    w.into_inner()
        .map_err(|e| QuantError::io(path, e.into_error()))?
        .sync_all()
        .map_err(io)?;
    Ok(offset as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use olive_model::Checkpoint;

    #[test]
    fn shards_read_back_and_failure_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        std::fs::create_dir(&input).unwrap();
        std::fs::write(input.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
        std::fs::write(input.join("tokenizer.json"), "{}").unwrap();
        let out = dir.path().join("out");
        let mut w = ModelWriter::create(&out, 2).unwrap();
        let a = OutTensor::from_f32("a".into(), Dtype::BF16, vec![2], &[1.5, -2.0]).unwrap();
        let b = OutTensor::from_f32("b".into(), Dtype::F32, vec![1, 3], &[1.0, 2.0, 3.0]).unwrap();
        let mut seen = Vec::new();
        w.write_shard(1, &[b], &mut |n| seen.push(n.to_string()))
            .unwrap();
        assert!(w.write_shard(1, &[], &mut |_| ()).is_err());
        w.write_shard(0, &[a], &mut |n| seen.push(n.to_string()))
            .unwrap();
        assert_eq!(seen, ["b", "a"]);
        w.finish(
            &input,
            json!({"quant_method": "gptq"}),
            &[("tie_word_embeddings", json!(false))],
        )
        .unwrap();
        let ckpt = Checkpoint::open(&out).unwrap();
        assert_eq!(ckpt.tensor_f32("a").unwrap().data, vec![1.5, -2.0]);
        assert_eq!(ckpt.tensor_f32("b").unwrap().shape, vec![1, 3]);
        assert!(ckpt
            .file_of("b")
            .unwrap()
            .ends_with("model-00002-of-00002.safetensors"));
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["quantization_config"]["quant_method"], "gptq");
        assert_eq!(config["tie_word_embeddings"], false);
        assert!(out.join("tokenizer.json").is_file());

        // A non-empty output is refused; a writer dropped unfinished removes its temp folder.
        assert!(ModelWriter::create(&out, 1).is_err());
        let out2 = dir.path().join("out2");
        let w = ModelWriter::create(&out2, 1).unwrap();
        let tmp = w.tmp_dir().to_path_buf();
        assert!(tmp.is_dir());
        drop(w);
        assert!(!tmp.exists() && !out2.exists());
    }
}
