//! What a model costs to keep and to run. `size_on_disk` / `bytes`: the bytes of every file under the model
//! folder (weights, ONNX external data, tokenizer and config files; links followed), where Olive counts the
//! serialized model alone. `memory` / `peak_rss` (olive-rs; Olive has no memory metric): the peak resident set
//! size, in bytes, of a child `olive-host evaluate --memory_probe N` that loads the model and runs one forward
//! pass of N tokens, as the child reads its own high-water mark (`VmHWM` of /proc/self/status; a child's
//! `ru_maxrss` would start from its parent's, which may have loaded a bigger model); it includes the olive-host
//! binary and, for ONNX models, the ONNX Runtime library. `memory` / `peak_device_memory` (--device gpu): the same
//! child on the GPU reports the most bytes it held at once in the device's memory pool (weights, KV cache,
//! activations; not the CUDA context nor cuBLAS's workspace).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use olive_pass_api::Model;

use crate::device::Device;

/// Bytes of all files under `path` (or of the file itself).
pub fn size_on_disk(path: &Path) -> anyhow::Result<u64> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut total = 0;
    let entries = std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", path.display()))?;
        total += size_on_disk(&entry.path())?;
    }
    Ok(total)
}

/// What the memory probe measured, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Footprint {
    pub peak_rss: u64,
    /// On the GPU only.
    pub peak_device_memory: Option<u64>,
}

/// Runs `olive_host evaluate --memory_probe prompt_length` on `model` on `device` (see the module doc).
pub fn memory_probe(
    olive_host: &Path,
    model: &Model,
    prompt_length: usize,
    device: Device,
) -> anyhow::Result<Footprint> {
    let folder = super::runner::model_folder(model)?;
    let mut cmd = Command::new(olive_host);
    cmd.arg("evaluate")
        .arg("--model_name_or_path")
        .arg(&folder)
        .arg("--device")
        .arg(device.name())
        .arg("--memory_probe")
        .arg(prompt_length.to_string());
    for a in &model.adapter_paths {
        cmd.arg("--adapter").arg(a);
    }
    let out = cmd
        .output()
        .with_context(|| format!("starting {}", olive_host.display()))?;
    if !out.status.success() {
        bail!(
            "the memory probe on {} failed: {}",
            folder.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let read = |name: &str| -> anyhow::Result<u64> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                anyhow::anyhow!("the memory probe on {} printed no {name}", folder.display())
            })
    };
    Ok(Footprint {
        peak_rss: read("peak_rss")?,
        peak_device_memory: match device {
            Device::Gpu => Some(read("peak_device_memory")?),
            Device::Cpu => None,
        },
    })
}

/// The olive-host executable to run probes with: this process when it is olive-host, else `OLIVE_HOST`.
pub fn olive_host_exe() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating olive-host")?;
    if exe.file_stem().and_then(|s| s.to_str()) == Some("olive-host") {
        return Ok(exe);
    }
    match std::env::var_os("OLIVE_HOST") {
        Some(p) => Ok(PathBuf::from(p)),
        None => bail!(
            "the memory metric runs olive-host in a child process; set OLIVE_HOST to its path"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_counts_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 10]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/model.onnx.data"), [0u8; 1000]).unwrap();
        assert_eq!(size_on_disk(dir.path()).unwrap(), 1010);
        assert_eq!(size_on_disk(&dir.path().join("a")).unwrap(), 10);
        assert!(size_on_disk(&dir.path().join("missing")).is_err());
    }
}
