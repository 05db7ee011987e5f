//! Test fixture: a library with a manifest but without the abi_stable root module symbol.

/// Some exported function that is not an olive plugin root module.
#[no_mangle]
pub extern "C" fn olive_fixture_not_a_plugin() -> u32 {
    7
}
