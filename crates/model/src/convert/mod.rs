//! GGUF → Hugging Face folder conversion (the folder transformers' `from_pretrained` loads:
//! config.json, generation_config.json, model.safetensors in F32, tokenizer files), written
//! atomically: into a temp folder beside the destination, fsynced, then renamed into place.

mod layout;
mod safetensors_out;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::gguf::{build_tokenizer, GgufFile};
use layout::{Hparams, Transform};

/// Bumped whenever the converter's output changes, so cached conversions are redone.
pub const FORMAT_VERSION: u32 = 1;

/// Converts the GGUF file `gguf` into a Hugging Face folder at `out`.
///
/// `out` must not exist or be an empty folder. Nothing appears at `out` unless the whole conversion
/// succeeded.
pub fn gguf_to_hf(gguf: &Path, out: &Path) -> Result<()> {
    gguf_to_hf_with(gguf, out, false)
}

/// Like [`gguf_to_hf`]; with `overwrite`, an existing folder at `out` is replaced once the new one is
/// complete (until then it stays as it was).
pub fn gguf_to_hf_with(gguf: &Path, out: &Path, overwrite: bool) -> Result<()> {
    if !overwrite
        && fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        return Err(ModelError::io(
            out,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "output folder exists and is not empty",
            ),
        ));
    }
    let file = GgufFile::open(gguf)?;
    let hp = Hparams::read(&file)?;
    let plan = layout::plan_tensors(&file, &hp)?;
    for p in &plan {
        file.check_dequantizable(p.source)?;
    }
    let config = layout::hf_config(&file, &hp)?;
    let tokenizer = build_tokenizer(&file)?;
    tokenizer.to_tokenizer(&file)?;

    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| ModelError::io(&parent, e))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp-"))
        .tempdir_in(&parent)
        .map_err(|e| ModelError::io(&parent, e))?;
    tracing::info!("converting {} to {}", gguf.display(), out.display());

    write_json(&tmp.path().join("config.json"), &config)?;
    write_json(
        &tmp.path().join("generation_config.json"),
        &layout::generation_config(&config),
    )?;
    write_json(&tmp.path().join("tokenizer.json"), &tokenizer.tokenizer)?;
    write_json(
        &tmp.path().join("tokenizer_config.json"),
        &tokenizer.tokenizer_config,
    )?;
    write_json(
        &tmp.path().join("special_tokens_map.json"),
        &tokenizer.special_tokens_map,
    )?;

    let shapes: Vec<(String, Vec<usize>)> = plan
        .iter()
        .map(|p| (p.hf_name.clone(), p.source.shape()))
        .collect();
    safetensors_out::write_f32(&tmp.path().join("model.safetensors"), &shapes, |i| {
        let p = &plan[i];
        let w = file.dequantize(p.source)?;
        Ok(match p.transform {
            Transform::Copy => w,
            Transform::Unpermute { n_head } => {
                layout::unpermute_rows(&w, p.source.shape().first().copied().unwrap_or(0), n_head)
            }
        })
    })?;
    sync_dir(tmp.path())?;

    // An empty folder at `out` is replaced by the rename; a non-empty one (a concurrent writer) fails it,
    // unless `overwrite` moved it aside first.
    let tmp = tmp.keep();
    let old = if overwrite && out.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        fs::rename(out, &old).map_err(|e| ModelError::io(out, e))?;
        Some(old)
    } else {
        None
    };
    if let Err(e) = fs::rename(&tmp, out) {
        let _ = fs::remove_dir_all(&tmp);
        if let Some(old) = &old {
            let _ = fs::rename(old, out);
        }
        return Err(ModelError::io(out, e));
    }
    if let Some(old) = old {
        fs::remove_dir_all(&old).map_err(|e| ModelError::io(&old, e))?;
    }
    sync_dir(&parent)
}

/// The folder to load a model from: a folder as is; a `.gguf` file converted once into
/// `<cache>/gguf/<stem>-<key>` and reused, where `<cache>` is `$OLIVE_CACHE_DIR` or
/// `$HOME/.cache/olive-rs` and `<key>` hashes the file's canonical path, size, mtime and
/// [`FORMAT_VERSION`]. Any other path is returned unchanged.
pub fn resolve_model_path(path: &Path) -> Result<PathBuf> {
    let is_gguf = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if !is_gguf || !path.is_file() {
        return Ok(path.to_path_buf());
    }
    resolve_in_cache(path, &cache_dir(path)?)
}

/// The conversion of the GGUF file `path` under `cache/gguf/`, made when absent.
fn resolve_in_cache(path: &Path, cache: &Path) -> Result<PathBuf> {
    let canonical = path.canonicalize().map_err(|e| ModelError::io(path, e))?;
    let meta = fs::metadata(&canonical).map_err(|e| ModelError::io(&canonical, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut key = Fnv::new();
    key.write(&FORMAT_VERSION.to_le_bytes());
    key.write(canonical.as_os_str().as_encoded_bytes());
    key.write(&meta.len().to_le_bytes());
    key.write(&mtime.to_le_bytes());
    let stem: String = canonical
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let out = cache.join("gguf").join(format!("{stem}-{:016x}", key.0));
    if out.is_dir() {
        return Ok(out);
    }
    match gguf_to_hf(&canonical, &out) {
        Ok(()) => Ok(out),
        // Another process finished the same conversion first.
        Err(_) if out.join("model.safetensors").is_file() => Ok(out),
        Err(e) => Err(e),
    }
}

/// `$OLIVE_CACHE_DIR`, else `$HOME/.cache/olive-rs`.
fn cache_dir(for_file: &Path) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("OLIVE_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("olive-rs")),
        None => Err(ModelError::Gguf {
            path: for_file.to_path_buf(),
            reason: "no cache folder for the converted model: set OLIVE_CACHE_DIR or HOME".into(),
        }),
    }
}

/// Writes pretty JSON and fsyncs it.
fn write_json(path: &Path, value: &Value) -> Result<()> {
    let io = |e| ModelError::io(path, e);
    let mut text = serde_json::to_string_pretty(value).map_err(|e| ModelError::Json {
        path: path.to_path_buf(),
        source: e,
    })?;
    text.push('\n');
    let mut f = File::create(path).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

/// fsyncs a folder so a rename or new entries in it survive a crash.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ModelError::io(dir, e))
}

/// FNV-1a 64: a hash that stays the same across Rust releases (cache keys live on disk).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests;
