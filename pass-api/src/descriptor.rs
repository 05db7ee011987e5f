//! What a plugin says about each of its passes when loaded; the manifest holds the same data.

use abi_stable::std_types::{RString, RVec};
use abi_stable::StableAbi;

/// One pass of a plugin, as the loaded library describes it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PassDescriptor {
    /// The pass name, Olive's pass type name where one exists (e.g. `GptqQuantizer`).
    pub name: RString,
    /// The pass version (semver); part of the engine's cache key.
    pub version: RString,
    /// One line saying what the pass does.
    pub description: RString,
    /// The JSON schema of the pass's config, as JSON text.
    pub config_schema_json: RString,
    /// The model kinds the pass accepts (see [`crate::kinds`]).
    pub accepts: RVec<RString>,
    /// The model kinds the pass can produce.
    pub produces: RVec<RString>,
    /// The devices the pass runs on (`cpu`, `gpu`, `npu`).
    pub devices: RVec<RString>,
}
