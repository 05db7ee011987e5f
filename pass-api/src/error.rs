//! The error a pass returns across the ABI: an open kind code and a message.

use std::fmt;

use abi_stable::std_types::RString;
use abi_stable::StableAbi;

/// What went wrong, as an open code: a host shows codes it does not know as `error`.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorKind(pub u32);

impl ErrorKind {
    /// The pass failed; the message says why.
    pub const FAILED: Self = Self(0);
    /// The config JSON did not match the pass's config type.
    pub const INVALID_CONFIG: Self = Self(1);
    /// The input model is not one the pass can work on.
    pub const UNSUPPORTED_MODEL: Self = Self(2);
    /// The pass stopped because the host asked it to.
    pub const CANCELLED: Self = Self(3);
    /// The pass panicked; the plugin caught the panic at the boundary.
    pub const PANICKED: Self = Self(4);
    /// The plugin has no pass of the requested name.
    pub const UNKNOWN_PASS: Self = Self(5);

    /// A short snake_case name, used in messages and the host's worker protocol.
    pub const fn name(self) -> &'static str {
        match self.0 {
            1 => "invalid_config",
            2 => "unsupported_model",
            3 => "cancelled",
            4 => "panicked",
            5 => "unknown_pass",
            _ => "error",
        }
    }

    /// The kind of a [`ErrorKind::name`]; unknown names are [`ErrorKind::FAILED`].
    pub fn from_name(name: &str) -> Self {
        [
            Self::INVALID_CONFIG,
            Self::UNSUPPORTED_MODEL,
            Self::CANCELLED,
            Self::PANICKED,
            Self::UNKNOWN_PASS,
        ]
        .into_iter()
        .find(|kind| kind.name() == name)
        .unwrap_or(Self::FAILED)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed pass: its kind and a message for the user (which names files and fields).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PassError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// The message, without a trailing period.
    pub message: RString,
}

impl PassError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PassError {
            kind,
            message: RString::from(message.into()),
        }
    }
}

impl fmt::Display for PassError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PassError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_failed() {
        for code in 0..6 {
            let kind = ErrorKind(code);
            assert_eq!(ErrorKind::from_name(kind.name()), kind);
        }
        assert_eq!(ErrorKind(77).name(), "error");
        assert_eq!(ErrorKind::from_name("whatever"), ErrorKind::FAILED);
    }
}
