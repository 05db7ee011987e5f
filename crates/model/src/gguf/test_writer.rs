//! A minimal GGUF v3 writer for tests (ggml's docs/gguf.md layout), so tests build their own files.

use std::path::{Path, PathBuf};

/// Builds the bytes of a GGUF file: metadata, tensor infos, aligned data.
pub(crate) struct GgufBuilder {
    pub magic: [u8; 4],
    pub version: u32,
    pub alignment: u64,
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

fn string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

fn array(elem_ty: u32, items: &[Vec<u8>]) -> Vec<u8> {
    let mut b = elem_ty.to_le_bytes().to_vec();
    b.extend_from_slice(&(items.len() as u64).to_le_bytes());
    for item in items {
        b.extend_from_slice(item);
    }
    b
}

impl GgufBuilder {
    pub fn new() -> Self {
        GgufBuilder {
            magic: *b"GGUF",
            version: 3,
            alignment: 32,
            kv: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// A value of GGUF type `ty` whose encoding is `bytes`.
    pub fn kv_raw(&mut self, key: &str, ty: u32, bytes: Vec<u8>) -> &mut Self {
        self.kv.push((key.to_string(), ty, bytes));
        self
    }

    pub fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.kv_raw(key, 4, v.to_le_bytes().to_vec())
    }

    pub fn kv_f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.kv_raw(key, 6, v.to_le_bytes().to_vec())
    }

    pub fn kv_bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.kv_raw(key, 7, vec![u8::from(v)])
    }

    pub fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.kv_raw(key, 8, string(v))
    }

    pub fn kv_str_array(&mut self, key: &str, v: &[&str]) -> &mut Self {
        let items: Vec<Vec<u8>> = v.iter().map(|s| string(s)).collect();
        self.kv_raw(key, 9, array(8, &items))
    }

    pub fn kv_i32_array(&mut self, key: &str, v: &[i32]) -> &mut Self {
        let items: Vec<Vec<u8>> = v.iter().map(|x| x.to_le_bytes().to_vec()).collect();
        self.kv_raw(key, 9, array(5, &items))
    }

    /// A tensor with GGUF dims (`dims[0]` contiguous), ggml type id and raw data.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> &mut Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), ty, data));
        self
    }

    /// An F32 tensor from row-major `values` of PyTorch shape `shape`.
    pub fn tensor_f32(&mut self, name: &str, shape: &[u64], values: &[f32]) -> &mut Self {
        let dims: Vec<u64> = shape.iter().rev().copied().collect();
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, &dims, 0, data)
    }

    pub fn bytes(&self) -> Vec<u8> {
        let align = |n: usize| n.div_ceil(self.alignment as usize) * self.alignment as usize;
        let mut b = self.magic.to_vec();
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (key, ty, value) in &self.kv {
            b.extend_from_slice(&string(key));
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(value);
        }
        let mut offset = 0usize;
        for (name, dims, ty, data) in &self.tensors {
            b.extend_from_slice(&string(name));
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = align(offset + data.len());
        }
        b.resize(align(b.len()), 0);
        for (_, _, _, data) in &self.tensors {
            b.extend_from_slice(data);
            b.resize(align(b.len()), 0);
        }
        b
    }

    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.bytes()).expect("write test GGUF");
        path
    }
}
