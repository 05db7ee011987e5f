//! GGUF metadata values (ggml's docs/gguf.md, `gguf_metadata_value_type`) and typed access to them.

/// One metadata value as stored in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The GGUF name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "uint8",
            MetaValue::I8(_) => "int8",
            MetaValue::U16(_) => "uint16",
            MetaValue::I16(_) => "int16",
            MetaValue::U32(_) => "uint32",
            MetaValue::I32(_) => "int32",
            MetaValue::U64(_) => "uint64",
            MetaValue::I64(_) => "int64",
            MetaValue::F32(_) => "float32",
            MetaValue::F64(_) => "float64",
            MetaValue::Bool(_) => "bool",
            MetaValue::Str(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// Any integer value as i128 (wide enough for every GGUF integer type).
    fn as_int(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Any non-negative integer value that fits in u64.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_int().and_then(|v| u64::try_from(v).ok())
    }

    /// A float32/float64 value (float64 narrowed).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetaValue::F32(v) => Some(v),
            MetaValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// A Rust type a metadata value converts to; integers convert across widths when the value fits.
pub trait FromMeta<'a>: Sized {
    /// What the value should have been, for error messages.
    const EXPECTED: &'static str;
    fn from_meta(value: &'a MetaValue) -> Option<Self>;
}

macro_rules! from_meta_int {
    ($($t:ty => $what:literal),*) => {$(
        impl<'a> FromMeta<'a> for $t {
            const EXPECTED: &'static str = $what;
            fn from_meta(value: &'a MetaValue) -> Option<Self> {
                value.as_int().and_then(|v| <$t>::try_from(v).ok())
            }
        }
    )*};
}

from_meta_int!(u32 => "an integer in u32 range", u64 => "an integer in u64 range",
               i32 => "an integer in i32 range", usize => "a non-negative integer");

impl<'a> FromMeta<'a> for f32 {
    const EXPECTED: &'static str = "a float";
    fn from_meta(value: &'a MetaValue) -> Option<Self> {
        value.as_f32()
    }
}

impl<'a> FromMeta<'a> for bool {
    const EXPECTED: &'static str = "a bool";
    fn from_meta(value: &'a MetaValue) -> Option<Self> {
        match *value {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }
}

impl<'a> FromMeta<'a> for &'a str {
    const EXPECTED: &'static str = "a string";
    fn from_meta(value: &'a MetaValue) -> Option<Self> {
        value.as_str()
    }
}

impl<'a> FromMeta<'a> for Vec<&'a str> {
    const EXPECTED: &'static str = "an array of strings";
    fn from_meta(value: &'a MetaValue) -> Option<Self> {
        value.as_array()?.iter().map(MetaValue::as_str).collect()
    }
}

impl<'a> FromMeta<'a> for Vec<i32> {
    const EXPECTED: &'static str = "an array of integers in i32 range";
    fn from_meta(value: &'a MetaValue) -> Option<Self> {
        value.as_array()?.iter().map(i32::from_meta).collect()
    }
}

impl<'a> FromMeta<'a> for Vec<f32> {
    const EXPECTED: &'static str = "an array of floats";
    fn from_meta(value: &'a MetaValue) -> Option<Self> {
        value.as_array()?.iter().map(MetaValue::as_f32).collect()
    }
}
