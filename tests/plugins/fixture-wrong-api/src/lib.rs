//! Test fixture: a plugin whose root module claims plugin api 99.0, which no host speaks.

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RResult, RStr, RVec};
use olive_pass_api::{
    ApiVersion, ErrorKind, ModelRef, PassContext, PassDescriptor, PassError, PluginMod,
    PluginModRef,
};

extern "C" fn passes() -> RVec<PassDescriptor> {
    RVec::new()
}

extern "C" fn run_pass(
    _: RStr<'_>,
    _: ModelRef,
    _: RStr<'_>,
    _: PassContext<'_>,
) -> RResult<ModelRef, PassError> {
    RResult::RErr(PassError::new(
        ErrorKind::FAILED,
        "a wrong-api plugin must never run",
    ))
}

#[abi_stable::export_root_module]
fn root_module() -> PluginModRef {
    PluginMod {
        api_version: ApiVersion {
            major: 99,
            minor: 0,
        },
        name: RStr::from_str("fixture-wrong-api"),
        version: RStr::from_str("0.1.0"),
        passes,
        run_pass,
    }
    .leak_into_prefix()
}
