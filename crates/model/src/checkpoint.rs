//! Safetensors checkpoints of a Hugging Face folder: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`; files are memory-mapped and tensors read on demand.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde_json::Value;

use crate::error::{require_folder, ModelError, Result};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// A tensor converted to f32, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A tensor as stored: dtype, shape and the raw little-endian bytes.
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'a> {
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section and each tensor's (dtype, shape, start, end) within it.
    data_start: usize,
    tensors: HashMap<String, (Dtype, Vec<usize>, usize, usize)>,
}

/// The safetensors files of one model folder.
pub struct Checkpoint {
    folder: PathBuf,
    shards: Vec<Shard>,
    /// Tensor name -> index into `shards`, sorted for stable listing.
    locations: BTreeMap<String, usize>,
}

impl Checkpoint {
    /// Opens the single-file or sharded checkpoint of a folder.
    pub fn open(folder: &Path) -> Result<Self> {
        require_folder(folder)?;
        let index_path = folder.join(INDEX_FILE);
        let files = if index_path.is_file() {
            shard_files(&index_path)?
        } else if folder.join(SINGLE_FILE).is_file() {
            vec![SINGLE_FILE.to_string()]
        } else {
            return Err(ModelError::io(
                folder.join(SINGLE_FILE),
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no {SINGLE_FILE} or {INDEX_FILE} in the model folder"),
                ),
            ));
        };
        let mut shards = Vec::with_capacity(files.len());
        let mut locations = BTreeMap::new();
        for file in files {
            let shard = open_shard(&folder.join(&file))?;
            for name in shard.tensors.keys() {
                locations.insert(name.clone(), shards.len());
            }
            shards.push(shard);
        }
        Ok(Checkpoint {
            folder: folder.to_path_buf(),
            shards,
            locations,
        })
    }

    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.locations.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.locations.contains_key(name)
    }

    /// The stored form of a tensor.
    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>> {
        let shard = self
            .locations
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| ModelError::MissingTensor {
                folder: self.folder.clone(),
                name: name.to_string(),
            })?;
        let (dtype, shape, start, end) = &shard.tensors[name];
        Ok(RawTensor {
            dtype: *dtype,
            shape,
            bytes: &shard.mmap[shard.data_start + start..shard.data_start + end],
        })
    }

    /// Drops the resident pages of a tensor's stored bytes (mapped pages count in RSS until then); a streaming
    /// reader calls it once it has copied a tensor, so memory stays one layer deep. Later reads fault the
    /// pages back in from the file; neighbouring tensors sharing an edge page are re-read the same way. Advisory
    /// only: unknown names and platforms without `madvise` do nothing.
    pub fn release(&self, name: &str) {
        let Some(shard) = self.locations.get(name).map(|&i| &self.shards[i]) else {
            return;
        };
        let (_, _, start, end) = shard.tensors[name];
        #[cfg(unix)]
        {
            // SAFETY: the mapping is a read-only, private view of a file this process does not write:
            // MADV_DONTNEED only drops page-cache references, and every later access reads the same bytes back
            // from the file, so no live borrow of the mapping ever sees different contents.
            let _ = unsafe {
                shard.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    shard.data_start + start,
                    end - start,
                )
            };
        }
        #[cfg(not(unix))]
        let _ = (shard, start, end);
    }

    /// The shard file holding a tensor (for error messages).
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.locations
            .get(name)
            .map(|&i| self.shards[i].path.as_path())
    }

    /// A floating-point tensor (F32, F16 or BF16) converted to f32.
    pub fn tensor_f32(&self, name: &str) -> Result<Tensor> {
        let raw = self.raw(name)?;
        let data = to_f32(raw.dtype, raw.bytes).ok_or_else(|| ModelError::BadTensor {
            path: self.file_of(name).unwrap_or(&self.folder).to_path_buf(),
            name: name.to_string(),
            reason: format!("dtype {:?}, expected F32, F16 or BF16", raw.dtype),
        })?;
        Ok(Tensor {
            shape: raw.shape.to_vec(),
            data,
        })
    }

    /// Like [`Checkpoint::raw`], checking the shape.
    pub fn raw_shaped(&self, name: &str, shape: &[usize]) -> Result<RawTensor<'_>> {
        let raw = self.raw(name)?;
        if raw.shape != shape {
            return Err(ModelError::BadTensor {
                path: self.file_of(name).unwrap_or(&self.folder).to_path_buf(),
                name: name.to_string(),
                reason: format!("shape {:?}, expected {:?}", raw.shape, shape),
            });
        }
        Ok(raw)
    }

    /// Like [`Checkpoint::tensor_f32`], checking the shape (before converting anything).
    pub fn tensor_f32_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.raw_shaped(name, shape)?;
        self.tensor_f32(name)
    }
}

/// Converts little-endian F32/F16/BF16 bytes to f32; None for other dtypes.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    match dtype {
        Dtype::F32 => Some(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => Some(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

fn shard_files(index_path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index_path).map_err(|e| ModelError::io(index_path, e))?;
    let index: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: index_path.to_path_buf(),
        source,
    })?;
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            ModelError::field(index_path, "weight_map", "an object of tensor name -> file")
        })?;
    let mut files: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            ModelError::field(index_path, format!("weight_map.{tensor}"), "a file name")
        })?;
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(ModelError::field(
                index_path,
                format!("weight_map.{tensor}"),
                format!("a file name inside the folder, found \"{file}\""),
            ));
        }
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
    }
    files.sort();
    Ok(files)
}

fn open_shard(path: &Path) -> Result<Shard> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the mapping is read-only; a checkpoint changed by another process while we read it is
    // outside what any loader can guard against (transformers and candle map the same way).
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let bad = |reason: String| ModelError::Safetensors {
        path: path.to_path_buf(),
        reason,
    };
    let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| match e {
        SafeTensorError::MetadataIncompleteBuffer => bad(format!(
            "the header describes more data than the file's {} bytes hold (truncated file?)",
            mmap.len()
        )),
        other => bad(other.to_string()),
    })?;
    let data_start = 8 + header_len;
    let data_len = mmap.len() - data_start;
    let mut tensors = HashMap::new();
    for (name, info) in metadata.tensors() {
        let (start, end) = info.data_offsets;
        if end > data_len {
            return Err(bad(format!(
                "tensor `{name}` ends at byte {end} of the data section, which has only {data_len} bytes (truncated file?)"
            )));
        }
        tensors.insert(name, (info.dtype, info.shape.clone(), start, end));
    }
    Ok(Shard {
        path: path.to_path_buf(),
        mmap,
        data_start,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_single_file_in_all_float_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        let h: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect();
        let b: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect();
        write(
            &dir.path().join(SINGLE_FILE),
            &[
                ("a", Dtype::F32, vec![2], f32_bytes(&[1.5, -2.0])),
                ("b", Dtype::F16, vec![1, 2], h),
                ("c", Dtype::BF16, vec![2, 1], b),
            ],
        );
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        for name in ["a", "b", "c"] {
            assert_eq!(ckpt.tensor_f32(name).unwrap().data, vec![1.5, -2.0]);
        }
        assert_eq!(ckpt.tensor_f32("b").unwrap().shape, vec![1, 2]);
        assert_eq!(ckpt.names().collect::<Vec<_>>(), vec!["a", "b", "c"]);
    }

    #[test]
    fn reads_sharded_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("model-00001-of-00002.safetensors"),
            &[("x", Dtype::F32, vec![1], f32_bytes(&[1.0]))],
        );
        write(
            &dir.path().join("model-00002-of-00002.safetensors"),
            &[("y", Dtype::F32, vec![1], f32_bytes(&[2.0]))],
        );
        std::fs::write(
            dir.path().join(INDEX_FILE),
            r#"{"metadata": {}, "weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ckpt.tensor_f32("y").unwrap().data, vec![2.0]);
        assert!(ckpt
            .file_of("x")
            .unwrap()
            .ends_with("model-00001-of-00002.safetensors"));
    }

    #[test]
    fn truncated_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SINGLE_FILE);
        write(&path, &[("w", Dtype::F32, vec![64], f32_bytes(&[0.5; 64]))]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let err = Checkpoint::open(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("invalid safetensors"),
            "{err}"
        );
    }

    #[test]
    fn missing_tensor_and_wrong_dtype_are_named() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join(SINGLE_FILE),
            &[("q", Dtype::I32, vec![2], vec![0; 8])],
        );
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        let err = ckpt.tensor_f32("q").unwrap_err().to_string();
        assert!(err.contains("`q`") && err.contains("I32"), "{err}");
        let err = ckpt.tensor_f32("lm_head.weight").unwrap_err().to_string();
        assert!(err.contains("`lm_head.weight` not found"), "{err}");
    }
}
