//! A plugin's pass table and the boundary code the export macro calls: config parsing, kind checks,
//! and panics caught and turned into errors.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RResult, RStr, RString, RVec};
use olive_pass_api::{
    ErrorKind, ExecutionProvider, Manifest, ManifestError, Model, ModelRef, PassContext,
    PassDescriptor, PassError, PluginMod, PluginModRef, API_VERSION,
};

use crate::{Context, Pass};

/// One pass of a plugin, made with [`PassEntry::of`].
#[derive(Debug, Clone, Copy)]
pub struct PassEntry {
    name: &'static str,
    describe: fn() -> PassDescriptor,
    run: fn(Model, &str, &Context<'_>) -> Result<Model, PassError>,
}

impl PassEntry {
    /// The entry for pass `P`.
    pub const fn of<P: Pass>() -> Self {
        PassEntry {
            name: P::NAME,
            describe: describe::<P>,
            run: run::<P>,
        }
    }

    /// The pass name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// What the pass says about itself, its config schema included.
    pub fn descriptor(&self) -> PassDescriptor {
        (self.describe)()
    }

    /// Runs the pass: parses the config, checks the model kinds, and catches panics, so it never
    /// unwinds.
    pub fn run(
        &self,
        model: &ModelRef,
        config_json: &str,
        ctx: PassContext<'_>,
    ) -> Result<ModelRef, PassError> {
        let model = Model::from_ref(model).map_err(|err| {
            PassError::new(
                ErrorKind::FAILED,
                format!("the host sent an invalid model: {err}"),
            )
        })?;
        install_panic_hook();
        let _ = PANIC_LOCATION.try_with(Cell::take);
        let ctx = Context::new(ctx);
        let output = catch_unwind(AssertUnwindSafe(|| (self.run)(model, config_json, &ctx)))
            .unwrap_or_else(|payload| Err(panic_error(payload.as_ref())))?;
        output.to_ref().map_err(|err| {
            PassError::new(ErrorKind::FAILED, format!("invalid output model: {err}"))
        })
    }
}

/// A plugin: its name, version and passes. [`crate::export_plugin!`] makes one named `OLIVE_PLUGIN`.
#[derive(Debug)]
pub struct Plugin {
    /// The plugin name (e.g. `quant-gptq`).
    pub name: &'static str,
    /// The plugin version (semver).
    pub version: &'static str,
    /// The passes, in the order the manifest lists them.
    pub passes: &'static [PassEntry],
    /// The execution providers the plugin serves (see [`crate::ep`]); none for a plugin of passes only.
    pub execution_providers: fn() -> Vec<ExecutionProvider>,
}

impl Plugin {
    /// The descriptors of every pass.
    pub fn descriptors(&self) -> RVec<PassDescriptor> {
        self.passes.iter().map(PassEntry::descriptor).collect()
    }

    /// The manifest of this plugin when built as the library with base name `library`.
    pub fn manifest(&self, library: &str) -> Result<Manifest, ManifestError> {
        Manifest::describe(
            self.name,
            self.version,
            API_VERSION,
            library,
            &self.descriptors(),
            Some(&self.execution_providers_json()),
        )
    }

    /// The execution providers as the JSON array the ABI carries.
    pub fn execution_providers_json(&self) -> String {
        serde_json::to_string(&(self.execution_providers)()).unwrap_or_else(|_| "[]".into())
    }

    /// Runs pass `pass` (see [`PassEntry::run`]); never unwinds.
    pub fn run_pass(
        &self,
        pass: &str,
        model: &ModelRef,
        config_json: &str,
        ctx: PassContext<'_>,
    ) -> Result<ModelRef, PassError> {
        let Some(entry) = self.passes.iter().find(|entry| entry.name == pass) else {
            let names: Vec<_> = self.passes.iter().map(|entry| entry.name).collect();
            return Err(PassError::new(
                ErrorKind::UNKNOWN_PASS,
                format!(
                    "no pass named `{pass}`; this plugin has: {}",
                    names.join(", ")
                ),
            ));
        };
        entry.run(model, config_json, ctx)
    }

    #[doc(hidden)]
    pub fn ffi_descriptors(&self) -> RVec<PassDescriptor> {
        catch_unwind(AssertUnwindSafe(|| self.descriptors())).unwrap_or_default()
    }

    #[doc(hidden)]
    pub fn ffi_execution_providers(&self) -> RString {
        catch_unwind(AssertUnwindSafe(|| self.execution_providers_json()))
            .unwrap_or_else(|_| "[]".into())
            .into()
    }

    #[doc(hidden)]
    pub fn ffi_run_pass(
        &self,
        pass: RStr<'_>,
        model: ModelRef,
        config_json: RStr<'_>,
        ctx: PassContext<'_>,
    ) -> RResult<ModelRef, PassError> {
        self.run_pass(pass.as_str(), &model, config_json.as_str(), ctx)
            .into()
    }

    #[doc(hidden)]
    pub fn root_module(
        &'static self,
        passes: extern "C" fn() -> RVec<PassDescriptor>,
        run_pass: extern "C" fn(
            RStr<'_>,
            ModelRef,
            RStr<'_>,
            PassContext<'_>,
        ) -> RResult<ModelRef, PassError>,
    ) -> PluginModRef {
        PluginMod {
            api_version: API_VERSION,
            name: RStr::from_str(self.name),
            version: RStr::from_str(self.version),
            passes,
            run_pass,
        }
        .leak_into_prefix()
    }
}

fn describe<P: Pass>() -> PassDescriptor {
    let strings = |list: &[&str]| list.iter().map(|s| RString::from(*s)).collect();
    let schema = schemars::schema_for!(P::Config);
    PassDescriptor {
        name: P::NAME.into(),
        version: P::VERSION.into(),
        description: P::DESCRIPTION.into(),
        config_schema_json: serde_json::to_string(&schema).unwrap_or_default().into(),
        accepts: strings(P::ACCEPTS),
        produces: strings(P::PRODUCES),
        devices: strings(P::DEVICES),
    }
}

fn run<P: Pass>(model: Model, config_json: &str, ctx: &Context<'_>) -> Result<Model, PassError> {
    let text = if config_json.trim().is_empty() {
        "{}"
    } else {
        config_json
    };
    let config: P::Config = serde_json::from_str(text).map_err(|err| {
        PassError::new(ErrorKind::INVALID_CONFIG, format!("invalid config: {err}"))
    })?;
    if !P::ACCEPTS.contains(&model.kind.as_str()) {
        return Err(PassError::new(
            ErrorKind::UNSUPPORTED_MODEL,
            format!(
                "accepts models of kind {}, got `{}`",
                P::ACCEPTS.join(", "),
                model.kind
            ),
        ));
    }
    let output = P::run(model, config, ctx)?;
    if !P::PRODUCES.contains(&output.kind.as_str()) {
        return Err(PassError::new(
            ErrorKind::FAILED,
            format!(
                "produced a model of kind `{}`, which is not among {}",
                output.kind,
                P::PRODUCES.join(", ")
            ),
        ));
    }
    Ok(output)
}

thread_local! {
    /// Where the last panic on this thread happened, recorded by the hook below.
    static PANIC_LOCATION: Cell<Option<String>> = const { Cell::new(None) };
}

/// Records panic locations for [`panic_error`], then runs the previous hook (which prints).
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info.location().map(|at| at.to_string());
            let _ = PANIC_LOCATION.try_with(|slot| slot.set(location));
            previous(info);
        }));
    });
}

fn panic_error(payload: &(dyn std::any::Any + Send)) -> PassError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".to_owned());
    let location = PANIC_LOCATION.try_with(Cell::take).ok().flatten();
    let at = location.map(|at| format!(" at {at}")).unwrap_or_default();
    PassError::new(ErrorKind::PANICKED, format!("panicked{at}: {message}"))
}
