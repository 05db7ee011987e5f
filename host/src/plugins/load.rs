//! Loading a plugin library: the root symbol, abi_stable's version and layout checks, then our own
//! api version check. Each failure is one line naming the library file.

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::ffi::CString;
use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use abi_stable::sabi_types::VersionNumber;
use anyhow::{anyhow, bail, Context};
use olive_pass_api::ep::{ExecutionProvidersFn, EXECUTION_PROVIDERS_SYMBOL};
use olive_pass_api::{ApiVersion, Manifest, PluginModRef, RString, API_VERSION};

/// A loaded plugin library: its root module and the manifest it describes.
pub struct Loaded {
    /// The root module.
    pub module: PluginModRef,
    /// The manifest the library describes (what `plugins manifest` writes).
    pub manifest: Manifest,
}

/// Loads the library at `path`. The library stays loaded for the life of the process.
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let cannot = |why: String| anyhow!("cannot load {}: {why}", path.display());
    let header = lib_header_from_path(path).map_err(|err| cannot(library_error(&err)))?;
    let built_for = VersionNumber::new(header.version_strings())
        .map(|v| ApiVersion {
            major: v.major,
            minor: v.minor,
        })
        .map_err(|err| cannot(format!("its plugin api version is unreadable: {err}")))?;
    if !API_VERSION.accepts(built_for) {
        return Err(cannot(wrong_api(built_for)));
    }
    let module = header
        .init_root_module::<PluginModRef>()
        .map_err(|err| cannot(library_error(&err)))?;
    if !API_VERSION.accepts(module.api_version()) {
        return Err(cannot(wrong_api(module.api_version())));
    }
    let library = path
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(Manifest::library_base_name)
        .ok_or_else(|| {
            cannot(format!(
                "its file name is not of the form {DLL_PREFIX}NAME{DLL_SUFFIX}"
            ))
        })?;
    let passes = (module.passes())();
    // A plugin built against api 1.0 exports no `execution_providers` function: it serves none.
    let execution_providers = execution_providers(path).map_err(cannot)?;
    let manifest = Manifest::describe(
        module.name().as_str(),
        module.version().as_str(),
        module.api_version(),
        library,
        &passes,
        execution_providers.as_ref().map(|json| json.as_str()),
    )
    .map_err(|err| cannot(format!("it describes itself wrongly: {err}")))?;
    Ok(Loaded { module, manifest })
}

/// What the library's `olive_pass_api::ep::EXECUTION_PROVIDERS_SYMBOL` function returns, if it exports one.
fn execution_providers(path: &Path) -> Result<Option<RString>, String> {
    let file = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| "its path has a NUL byte".to_owned())?;
    let symbol = CString::new(EXECUTION_PROVIDERS_SYMBOL).map_err(|e| e.to_string())?;
    // SAFETY: the library is already loaded (abi_stable keeps it loaded for the life of the process), so this
    // dlopen only takes another reference to it, which is never released.
    let handle = unsafe { libc::dlopen(file.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        return Err("it is no longer loaded".to_owned());
    }
    // SAFETY: a plugin exports this symbol only as `olive_pass_api::ep::ExecutionProvidersFn` (pass-sdk's
    // export_plugin! does); the symbol name carries the signature's version.
    let found = unsafe { libc::dlsym(handle, symbol.as_ptr()) };
    if found.is_null() {
        return Ok(None);
    }
    let describe: ExecutionProvidersFn = unsafe { std::mem::transmute(found) };
    Ok(Some(describe()))
}

/// Checks that the library's own description agrees with the manifest it was found by.
pub fn check_agreement(
    loaded: &Loaded,
    manifest: &Manifest,
    manifest_path: &Path,
    library_path: &Path,
) -> anyhow::Result<()> {
    let mut ours = manifest.clone();
    ours.library = loaded.manifest.library.clone();
    if let Some(difference) = ours.disagreement(&loaded.manifest) {
        bail!(
            "the library {} does not match its manifest {}: {difference} (regenerate the manifest with `olive-host plugins manifest`)",
            library_path.display(),
            manifest_path.display()
        );
    }
    Ok(())
}

/// Writes the manifest of the library at `library` into `folder` (default: beside the library),
/// atomically; returns the manifest's path.
pub fn write_manifest(library: &Path, folder: Option<&Path>) -> anyhow::Result<PathBuf> {
    let loaded = load(library)?;
    let folder = folder
        .or_else(|| library.parent())
        .unwrap_or(Path::new("."));
    let path = folder.join(Manifest::file_name_for(&loaded.manifest.library));
    let mut staged = tempfile::Builder::new()
        .prefix(".olive-manifest-")
        .tempfile_in(folder)
        .with_context(|| format!("cannot create a temporary file in {}", folder.display()))?;
    std::io::Write::write_all(&mut staged, loaded.manifest.to_json().as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    staged
        .persist(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn wrong_api(built_for: ApiVersion) -> String {
    format!("it was built for plugin api {built_for}, and this olive-host speaks {API_VERSION}")
}

/// One line for each way abi_stable can refuse a library.
fn library_error(err: &LibraryError) -> String {
    match err {
        LibraryError::OpenError { err, .. } => format!("not a loadable library: {err}"),
        LibraryError::GetSymbolError { .. } => format!(
            "it is not an olive plugin: it does not export the plugin root module (symbol `{}`)",
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        ),
        LibraryError::ParseVersionError(err) => {
            format!("its plugin api version is unreadable: {err}")
        }
        LibraryError::IncompatibleVersionNumber { actual_version, .. } => wrong_api(ApiVersion {
            major: actual_version.major,
            minor: actual_version.minor,
        }),
        LibraryError::RootModule { err, .. } => {
            format!("its root module failed to initialize: {err}")
        }
        LibraryError::AbiInstability(err) => format!(
            "its plugin ABI layout differs from this olive-host's ({} expected): {}",
            PluginModRef::NAME,
            err.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        ),
        LibraryError::InvalidAbiHeader(_) => {
            "it was built with an incompatible abi_stable version".to_owned()
        }
        LibraryError::InvalidCAbi { .. } => "it was built with an incompatible C ABI".to_owned(),
        LibraryError::Many(errors) => errors
            .iter()
            .map(library_error)
            .collect::<Vec<_>>()
            .join("; "),
    }
}
