//! The plugin api version: `major.minor`, compatible when the majors are equal.

use std::fmt;
use std::str::FromStr;

use abi_stable::StableAbi;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The version of this ABI. A host accepts a plugin whose major version equals its own; minor
/// versions only append fields to prefix types, which both sides handle.
pub const API_VERSION: ApiVersion = ApiVersion { major: 1, minor: 1 };
// 1.1: `PluginMod::execution_providers` appended; the manifest's optional `execution_providers` section.

/// `abi_stable`'s own version check reads this string; it must spell [`API_VERSION`] as
/// `major.minor.0` (a unit test checks that).
pub(crate) const ABI_VERSION_STRING: &str = "1.1.0";

/// A plugin api version, written `major.minor` in manifests and messages.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiVersion {
    /// Bumped on any change that is not an append to a prefix type.
    pub major: u32,
    /// Bumped when fields are appended.
    pub minor: u32,
}

impl ApiVersion {
    /// Whether a host speaking `self` can load a plugin built for `plugin`.
    pub const fn accepts(self, plugin: ApiVersion) -> bool {
        self.major == plugin.major
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// An api version string that is not `major.minor`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("api version `{0}` is not of the form MAJOR.MINOR (e.g. `1.0`)")]
pub struct ApiVersionError(pub String);

impl FromStr for ApiVersion {
    type Err = ApiVersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ApiVersionError(s.to_owned());
        let (major, minor) = s.split_once('.').ok_or_else(bad)?;
        Ok(ApiVersion {
            major: major.parse().map_err(|_| bad())?,
            minor: minor.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for ApiVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ApiVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_version_string_spells_api_version() {
        assert_eq!(ABI_VERSION_STRING, format!("{API_VERSION}.0"));
    }

    #[test]
    fn parses_and_prints() {
        let v: ApiVersion = "3.14".parse().unwrap();
        assert_eq!(
            v,
            ApiVersion {
                major: 3,
                minor: 14
            }
        );
        assert_eq!(v.to_string(), "3.14");
        assert_eq!(
            "3".parse::<ApiVersion>().unwrap_err().to_string(),
            "api version `3` is not of the form MAJOR.MINOR (e.g. `1.0`)"
        );
        assert!("a.1".parse::<ApiVersion>().is_err());
    }

    #[test]
    fn only_major_matters() {
        let host = ApiVersion { major: 1, minor: 1 };
        // 1.1: `PluginMod::execution_providers` appended; the manifest's optional `execution_providers` section.
        assert!(host.accepts(ApiVersion { major: 1, minor: 7 }));
        assert!(!host.accepts(ApiVersion { major: 2, minor: 0 }));
    }
}
