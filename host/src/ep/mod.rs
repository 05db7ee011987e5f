//! Execution-provider plugins as the host sees them (DESIGN.md, "Execution-provider plugins (ep-*)"): the plugin
//! serving `--device X --provider Y` chosen from the discovered manifests' `execution_providers` sections, the
//! ONNX Runtime library that serves it (its path from the variable the plugin names, its version read from the
//! library's `OrtGetApiBase()->GetVersionString()`), and the check that runs a model through the provider
//! ([`check`], in an `olive-host ep-check` process of its own, since a process loads one ONNX Runtime library).

pub mod check;
mod feeds;

use std::ffi::{c_char, CStr, CString, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context};
use olive_pass_api::{EpLibrary, ExecutionProvider};

use crate::plugins::{Discovery, Plugin};

/// The plugin serving `device`/`provider`; the error lists every pair the discovered plugins serve.
pub fn find<'a>(
    found: &'a Discovery,
    device: &str,
    provider: &str,
) -> anyhow::Result<(&'a Plugin, &'a ExecutionProvider)> {
    for plugin in &found.plugins {
        if let Some(ep) = plugin.manifest.execution_provider(device, provider) {
            return Ok((plugin, ep));
        }
    }
    bail!(
        "--device {device} with --provider {provider} is not served by any execution-provider plugin; valid pairs:\n{}",
        pairs(found)
    )
}

/// `  --device cpu: CPUExecutionProvider, OpenVINOExecutionProvider (ep-cpu, ep-openvino)` lines, one a device.
pub fn pairs(found: &Discovery) -> String {
    let mut devices: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    for plugin in &found.plugins {
        for ep in &plugin.manifest.execution_providers {
            let index = match devices.iter().position(|(d, _, _)| *d == ep.device) {
                Some(i) => i,
                None => {
                    devices.push((ep.device.clone(), Vec::new(), Vec::new()));
                    devices.len() - 1
                }
            };
            let (_, providers, plugins) = &mut devices[index];
            providers.push(ep.provider.clone());
            if !plugins.contains(&plugin.manifest.name) {
                plugins.push(plugin.manifest.name.clone());
            }
        }
    }
    if devices.is_empty() {
        return format!(
            "  (none: no execution-provider plugin found; {})",
            found.summary()
        );
    }
    devices.sort();
    devices
        .iter()
        .map(|(device, providers, plugins)| {
            format!(
                "  --device {device}: {} ({})",
                providers.join(", "),
                plugins.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The library serving `ep`: the file its runtime's variable names, checked to exist and to report the
/// version the plugin asks for.
pub fn library(ep: &ExecutionProvider) -> anyhow::Result<PathBuf> {
    library_from(ep, std::env::var_os(&ep.runtime.library_env))
}

fn library_from(ep: &ExecutionProvider, value: Option<OsString>) -> anyhow::Result<PathBuf> {
    let runtime = &ep.runtime;
    let wanted = match &runtime.version {
        Some(v) => format!("{} {v}", runtime.package),
        None => runtime.package.clone(),
    };
    let path = match value.filter(|v| !v.is_empty()) {
        Some(value) => PathBuf::from(value),
        None => bail!(
            "{} needs the ONNX Runtime library of the {wanted} wheel, and {} is not set \
             (scripts/install.sh sets it in target/olive-env.sh)",
            ep.provider,
            runtime.library_env
        ),
    };
    if !path.is_file() {
        bail!(
            "{} needs the ONNX Runtime library of the {wanted} wheel: {}={} is not a file",
            ep.provider,
            runtime.library_env,
            path.display()
        );
    }
    let version = library_version(&path).with_context(|| {
        format!(
            "{}: {}={}",
            ep.provider,
            runtime.library_env,
            path.display()
        )
    })?;
    if !runtime.accepts_version(&version) {
        bail!(
            "{} needs the ONNX Runtime library of the {wanted} wheel, and {}={} is ONNX Runtime {version}",
            ep.provider,
            runtime.library_env,
            path.display()
        );
    }
    Ok(path)
}

/// The plugin-EP library serving `ep` (`runtime.ep_library`), checked to exist and to belong to the package
/// version asked for; `None` when the provider is built into the ONNX Runtime library.
pub fn ep_library(ep: &ExecutionProvider) -> anyhow::Result<Option<PathBuf>> {
    match &ep.runtime.ep_library {
        None => Ok(None),
        Some(library) => {
            ep_library_from(ep, library, std::env::var_os(&library.library_env)).map(Some)
        }
    }
}

fn ep_library_from(
    ep: &ExecutionProvider,
    library: &EpLibrary,
    value: Option<OsString>,
) -> anyhow::Result<PathBuf> {
    let wanted = match &library.version {
        Some(v) => format!("{} {v}", library.package),
        None => library.package.clone(),
    };
    let path = match value.filter(|v| !v.is_empty()) {
        Some(value) => PathBuf::from(value),
        None => bail!(
            "{} needs the plugin-EP library of the {wanted} wheel, and {} is not set \
             (scripts/install.sh sets it in target/olive-env.sh)",
            ep.provider,
            library.library_env
        ),
    };
    if !path.is_file() {
        bail!(
            "{} needs the plugin-EP library of the {wanted} wheel: {}={} is not a file",
            ep.provider,
            library.library_env,
            path.display()
        );
    }
    if library.version.is_some() {
        let version = package_version(&path, &library.package).with_context(|| {
            format!(
                "{}: cannot tell the {} version of {}={}",
                ep.provider,
                library.package,
                library.library_env,
                path.display()
            )
        })?;
        if !library.accepts_version(&version) {
            bail!(
                "{} needs the plugin-EP library of the {wanted} wheel, and {}={} is {} {version}",
                ep.provider,
                library.library_env,
                path.display(),
                library.package
            );
        }
    }
    Ok(path)
}

/// The version of `package` that `library` belongs to: the `Version:` of the `<package>-<version>.dist-info/METADATA`
/// that a wheel unpacks (and pip installs) beside the library's folder.
fn package_version(library: &Path, package: &str) -> anyhow::Result<String> {
    let normalize = |name: &str| name.to_ascii_lowercase().replace(['-', '.'], "_");
    let wanted = normalize(package);
    let site = library
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("the library has no parent folder"))?;
    let entries =
        std::fs::read_dir(site).with_context(|| format!("cannot list {}", site.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".dist-info") else {
            continue;
        };
        let Some((dist, _)) = stem.rsplit_once('-') else {
            continue;
        };
        if normalize(dist) != wanted {
            continue;
        }
        let metadata = entry.path().join("METADATA");
        let text = std::fs::read_to_string(&metadata)
            .with_context(|| format!("cannot read {}", metadata.display()))?;
        return text
            .lines()
            .find_map(|line| line.strip_prefix("Version:"))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| anyhow!("{} has no `Version:` line", metadata.display()));
    }
    bail!(
        "no {package}-<version>.dist-info folder in {} (the wheel's layout)",
        site.display()
    )
}

/// The version an ONNX Runtime library reports (`OrtGetApiBase()->GetVersionString()`).
pub fn library_version(path: &Path) -> anyhow::Result<String> {
    /// `OrtApiBase` of onnxruntime_c_api.h: two function pointers.
    #[repr(C)]
    struct OrtApiBase {
        get_api: unsafe extern "C" fn(u32) -> *const std::ffi::c_void,
        get_version_string: unsafe extern "C" fn() -> *const c_char,
    }
    let name = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| anyhow!("the library path has a NUL byte"))?;
    // SAFETY: dlopen of a file path; the handle is kept open (ONNX Runtime is then loaded from the same file).
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a static C string or null.
        let why = unsafe { libc::dlerror() };
        let why = if why.is_null() {
            "unknown reason".to_owned()
        } else {
            unsafe { CStr::from_ptr(why) }
                .to_string_lossy()
                .into_owned()
        };
        bail!("not a loadable library: {why}");
    }
    // SAFETY: the symbol, when present, is ONNX Runtime's `const OrtApiBase* OrtGetApiBase(void)`.
    let symbol = unsafe { libc::dlsym(handle, c"OrtGetApiBase".as_ptr()) };
    if symbol.is_null() {
        bail!("not an ONNX Runtime library (no symbol OrtGetApiBase)");
    }
    let get_base: unsafe extern "C" fn() -> *const OrtApiBase =
        unsafe { std::mem::transmute(symbol) };
    // SAFETY: OrtGetApiBase returns a pointer to a static struct; GetVersionString a static C string.
    let version = unsafe {
        let base = get_base();
        if base.is_null() {
            bail!("OrtGetApiBase returned null");
        }
        let text = ((*base).get_version_string)();
        if text.is_null() {
            bail!("GetVersionString returned null");
        }
        CStr::from_ptr(text).to_string_lossy().into_owned()
    };
    Ok(version)
}

/// The precisions of `ep`'s auto-opt recipes, each with the input kind its recipe starts from when it names one
/// (`uint16 (from hf)`).
pub fn recipe_precisions(ep: &ExecutionProvider) -> Vec<String> {
    ep.recipes
        .iter()
        .map(|r| match &r.input {
            Some(kind) => format!("{} (from {kind})", r.precision),
            None => r.precision.clone(),
        })
        .collect()
}

/// Runs `olive-host ep-check` on `model` for `device`/`provider` in a child process (which loads the provider's
/// library); its error output becomes the error.
pub fn check_in_child(model: &Path, device: &str, provider: &str) -> anyhow::Result<()> {
    check_in_child_against(model, None, device, provider)
}

/// [`check_in_child`] with the outputs compared with `reference`'s on the CPU provider (`--reference_model`).
pub fn check_in_child_against(
    model: &Path,
    reference: Option<&Path>,
    device: &str,
    provider: &str,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the olive-host executable")?;
    let mut command = Command::new(exe);
    command
        .arg("ep-check")
        .arg("--model_path")
        .arg(model)
        .args(["--device", device, "--provider", provider]);
    if let Some(reference) = reference {
        command.arg("--reference_model").arg(reference);
    }
    let output = command
        .output()
        .context("cannot start `olive-host ep-check`")?;
    if output.status.success() {
        tracing::info!("{}", String::from_utf8_lossy(&output.stdout).trim_end());
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let message = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("error: "))
        .collect::<Vec<_>>()
        .join("\n");
    if message.is_empty() {
        bail!(
            "the {provider} check of {} failed ({}): {}",
            model.display(),
            output.status,
            stderr.trim()
        );
    }
    bail!("{message}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use olive_pass_api::Runtime;

    fn openvino() -> ExecutionProvider {
        ExecutionProvider {
            device: "cpu".into(),
            provider: "OpenVINOExecutionProvider".into(),
            provider_options: Default::default(),
            runtime: Runtime {
                package: "onnxruntime-openvino".into(),
                version: Some("1.24.1".into()),
                library_env: "OLIVE_ORT_OPENVINO_DYLIB".into(),
                ep_library: None,
            },
            tolerance: Default::default(),
            recipes: Vec::new(),
        }
    }

    #[test]
    fn a_missing_library_names_the_provider_the_variable_and_the_wheel() {
        let err = library_from(&openvino(), None).unwrap_err().to_string();
        assert!(
            err.contains("OpenVINOExecutionProvider")
                && err.contains("OLIVE_ORT_OPENVINO_DYLIB is not set")
                && err.contains("onnxruntime-openvino 1.24.1"),
            "{err}"
        );
        let err = library_from(&openvino(), Some("/nonexistent/libonnxruntime.so".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a file"), "{err}");
    }

    #[test]
    fn a_library_of_another_version_is_refused() {
        // ORT_DYLIB_PATH is the plain onnxruntime wheel's library (1.32), not OpenVINO's 1.24.1.
        let Some(plain) = std::env::var_os("ORT_DYLIB_PATH") else {
            panic!("ORT_DYLIB_PATH is not set: source target/olive-env.sh");
        };
        let version = library_version(Path::new(&plain)).unwrap();
        assert!(version.starts_with("1."), "{version}");
        let err = library_from(&openvino(), Some(plain))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("is ONNX Runtime {version}")) && err.contains("1.24.1"),
            "{err}"
        );
    }

    fn qnn() -> (ExecutionProvider, EpLibrary) {
        let library = EpLibrary {
            package: "onnxruntime-qnn".into(),
            version: Some("2.7.0".into()),
            library_env: "OLIVE_ORT_QNN_DYLIB".into(),
        };
        let mut ep = openvino();
        ep.provider = "QNNExecutionProvider".into();
        ep.runtime.ep_library = Some(library.clone());
        (ep, library)
    }

    /// A wheel's layout: `<site>/onnxruntime_qnn/lib.so` and `<site>/onnxruntime_qnn-<version>.dist-info/METADATA`.
    fn fake_wheel(site: &Path, version: &str) -> PathBuf {
        std::fs::create_dir_all(site.join("onnxruntime_qnn")).unwrap();
        let info = site.join(format!("onnxruntime_qnn-{version}.dist-info"));
        std::fs::create_dir_all(&info).unwrap();
        std::fs::write(
            info.join("METADATA"),
            format!("Metadata-Version: 2.4\nName: onnxruntime-qnn\nVersion: {version}\n"),
        )
        .unwrap();
        let lib = site.join("onnxruntime_qnn/libonnxruntime_providers_qnn.so");
        std::fs::write(&lib, b"").unwrap();
        lib
    }

    #[test]
    fn a_plugin_ep_library_is_found_and_its_wheel_version_checked() {
        let (ep, library) = qnn();
        let err = ep_library_from(&ep, &library, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("QNNExecutionProvider")
                && err.contains("OLIVE_ORT_QNN_DYLIB is not set")
                && err.contains("onnxruntime-qnn 2.7.0"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let good = fake_wheel(&dir.path().join("a"), "2.7.0");
        assert_eq!(
            ep_library_from(&ep, &library, Some(good.clone().into_os_string())).unwrap(),
            good
        );
        let old = fake_wheel(&dir.path().join("b"), "2.6.1");
        let err = ep_library_from(&ep, &library, Some(old.into_os_string()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is onnxruntime-qnn 2.6.1"), "{err}");
        let bare = dir.path().join("c/lib/libonnxruntime_providers_qnn.so");
        std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
        std::fs::write(&bare, b"").unwrap();
        let err = format!(
            "{:#}",
            ep_library_from(&ep, &library, Some(bare.into_os_string())).unwrap_err()
        );
        assert!(
            err.contains("no onnxruntime-qnn-<version>.dist-info"),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_is_not_onnx_runtime_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("libonnxruntime.so");
        std::fs::write(&fake, b"not a library").unwrap();
        let err = library_from(&openvino(), Some(fake.into_os_string())).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a loadable library"),
            "{err:#}"
        );
    }
}
