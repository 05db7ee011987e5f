//! The ONNX Runtime adapter file (`.onnx_adapter`): the flatbuffer of onnxruntime's
//! `onnxruntime/lora/adapter_format/adapter_schema.fbs` (file identifier "TORT", format_version 1), written with the
//! `flatbuffers` builder by hand and read through its verifier.
//!
//! ```text
//! table Parameter { name:string; dims:[int64]; data_type:TensorDataType (int32, ONNX's values);
//!                   raw_data:[uint8] (force_align: 8); }
//! table Adapter { format_version:int; adapter_version:int; model_version:int; parameters:[Parameter]; }
//! root_type Adapter; file_identifier "TORT";
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use flatbuffers::{
    FlatBufferBuilder, Follow, ForwardsUOffset, InvalidFlatbuffer, Push, PushAlignment, Table,
    Vector, Verifiable, Verifier, VerifierOptions, WIPOffset,
};

/// The schema's `file_identifier`.
pub const FILE_IDENTIFIER: &str = "TORT";
/// The only format version ONNX Runtime reads (`kAdapterFormatVersion`).
pub const FORMAT_VERSION: i32 = 1;
/// The file extension ONNX Runtime and onnxruntime-genai use.
pub const EXTENSION: &str = "onnx_adapter";

/// Errors reading or writing an adapter file; each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterFormatError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file does not start like an ONNX Runtime adapter (too short, or another file identifier).
    #[error("{}: not an ONNX Runtime adapter file: {reason}", path.display())]
    NotAdapter { path: PathBuf, reason: String },
    /// The flatbuffer is malformed (fails verification against adapter_schema.fbs).
    #[error("{}: malformed adapter flatbuffer: {source}", path.display())]
    Malformed {
        path: PathBuf,
        #[source]
        source: InvalidFlatbuffer,
    },
    /// The file's format_version is not the one this reader (and ONNX Runtime) supports.
    #[error("{}: adapter format_version {found}, expected {FORMAT_VERSION}", path.display())]
    Version { path: PathBuf, found: i32 },
    /// A parameter is inconsistent: raw_data length does not match dims and data_type, or a name is missing.
    #[error("{}: parameter `{name}`: {reason}", path.display())]
    Parameter {
        path: PathBuf,
        name: String,
        reason: String,
    },
}

pub type Result<T, E = AdapterFormatError> = std::result::Result<T, E>;

/// One named tensor of an adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    pub name: String,
    pub dims: Vec<i64>,
    /// ONNX `TensorProto.DataType` value (1 float, 10 float16, ...).
    pub data_type: i32,
    /// Little-endian element bytes, row-major.
    pub raw_data: Vec<u8>,
}

/// Bytes per element of an ONNX data type with a fixed-size layout; None for strings and unknown types.
pub fn element_size(data_type: i32) -> Option<usize> {
    match data_type {
        2 | 3 | 9 | 17..=20 => Some(1), // uint8 int8 bool float8*
        4 | 5 | 10 | 16 => Some(2),     // uint16 int16 float16 bfloat16
        1 | 6 | 12 => Some(4),          // float int32 uint32
        7 | 11 | 13 | 14 => Some(8),    // int64 double uint64 complex64
        15 => Some(16),                 // complex128
        _ => None,
    }
}

/// An ONNX Runtime adapter: versions and parameters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Adapter {
    pub adapter_version: i32,
    pub model_version: i32,
    pub parameters: Vec<Parameter>,
}

// vtable slots (4 + 2 * field index) of adapter_schema.fbs.
const PARAM_NAME: u16 = 4;
const PARAM_DIMS: u16 = 6;
const PARAM_DATA_TYPE: u16 = 8;
const PARAM_RAW_DATA: u16 = 10;
const ADAPTER_FORMAT_VERSION: u16 = 4;
const ADAPTER_ADAPTER_VERSION: u16 = 6;
const ADAPTER_MODEL_VERSION: u16 = 8;
const ADAPTER_PARAMETERS: u16 = 10;

/// A byte of `raw_data`: its vector is aligned to 8 (the schema's `force_align: 8`), so ONNX Runtime, which maps
/// tensors onto the buffer without copying, sees every element naturally aligned.
struct Aligned8Byte(u8);

impl Push for Aligned8Byte {
    type Output = u8;

    unsafe fn push(&self, dst: &mut [u8], _written_len: usize) {
        dst[0] = self.0;
    }

    fn alignment() -> PushAlignment {
        PushAlignment::new(8)
    }
}

impl Adapter {
    /// The flatbuffer bytes, as ONNX Runtime's `AdapterFormatBuilder` lays them out.
    pub fn to_bytes(&self) -> Vec<u8> {
        let capacity = 1024
            + self
                .parameters
                .iter()
                .map(|p| p.raw_data.len() + p.name.len() + 64)
                .sum::<usize>();
        let mut fbb = FlatBufferBuilder::with_capacity(capacity);
        let params: Vec<WIPOffset<Table>> = self
            .parameters
            .iter()
            .map(|p| {
                let name = fbb.create_string(&p.name);
                let dims = fbb.create_vector(&p.dims);
                let raw: Vec<Aligned8Byte> = p.raw_data.iter().map(|&b| Aligned8Byte(b)).collect();
                let raw = fbb.create_vector(&raw);
                let start = fbb.start_table();
                fbb.push_slot_always(PARAM_RAW_DATA, raw);
                fbb.push_slot_always(PARAM_DIMS, dims);
                fbb.push_slot_always(PARAM_NAME, name);
                fbb.push_slot::<i32>(PARAM_DATA_TYPE, p.data_type, 0);
                WIPOffset::new(fbb.end_table(start).value())
            })
            .collect();
        let params = fbb.create_vector(&params);
        let start = fbb.start_table();
        fbb.push_slot_always(ADAPTER_PARAMETERS, params);
        fbb.push_slot::<i32>(ADAPTER_FORMAT_VERSION, FORMAT_VERSION, 0);
        fbb.push_slot::<i32>(ADAPTER_ADAPTER_VERSION, self.adapter_version, 0);
        fbb.push_slot::<i32>(ADAPTER_MODEL_VERSION, self.model_version, 0);
        let root = fbb.end_table(start);
        fbb.finish(root, Some(FILE_IDENTIFIER));
        fbb.finished_data().to_vec()
    }

    /// Writes the file atomically (a temp file beside it, synced, then renamed into place).
    pub fn write(&self, path: &Path) -> Result<()> {
        let io = |source| AdapterFormatError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
        let written = std::fs::File::create(&temp).and_then(|mut file| {
            file.write_all(&self.to_bytes())?;
            file.sync_all()
        });
        if let Err(e) = written.and_then(|()| std::fs::rename(&temp, path)) {
            // Best effort: the temp file is hidden and named after the target.
            let _ = std::fs::remove_file(&temp);
            return Err(io(e));
        }
        Ok(())
    }

    /// Reads and validates a file (identifier, flatbuffer structure, format_version, parameter sizes).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| AdapterFormatError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses flatbuffer bytes; `path` is only used in error messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let not_adapter = |reason: String| AdapterFormatError::NotAdapter {
            path: path.to_path_buf(),
            reason,
        };
        if bytes.len() < 8 {
            return Err(not_adapter(format!(
                "{} bytes, too short for a flatbuffer",
                bytes.len()
            )));
        }
        if !flatbuffers::buffer_has_identifier(bytes, FILE_IDENTIFIER, false) {
            return Err(not_adapter(format!(
                "file identifier {:?}, expected {FILE_IDENTIFIER:?}",
                String::from_utf8_lossy(&bytes[4..8])
            )));
        }
        let opts = VerifierOptions {
            max_tables: 1 << 24,
            max_apparent_size: 1 << 40,
            ..Default::default()
        };
        let root = flatbuffers::root_with_opts::<AdapterTable>(&opts, bytes).map_err(|source| {
            AdapterFormatError::Malformed {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let found = root.int(ADAPTER_FORMAT_VERSION);
        if found != FORMAT_VERSION {
            return Err(AdapterFormatError::Version {
                path: path.to_path_buf(),
                found,
            });
        }
        let mut parameters = Vec::new();
        if let Some(list) = root.parameters() {
            for p in list.iter() {
                let param = Parameter {
                    name: p.name().unwrap_or_default().to_string(),
                    dims: p.dims().map(|d| d.iter().collect()).unwrap_or_default(),
                    data_type: p.int(PARAM_DATA_TYPE),
                    raw_data: p.raw_data().map(|v| v.bytes().to_vec()).unwrap_or_default(),
                };
                check_parameter(&param, path)?;
                parameters.push(param);
            }
        }
        Ok(Adapter {
            adapter_version: root.int(ADAPTER_ADAPTER_VERSION),
            model_version: root.int(ADAPTER_MODEL_VERSION),
            parameters,
        })
    }
}

fn check_parameter(p: &Parameter, path: &Path) -> Result<()> {
    let error = |reason: String| AdapterFormatError::Parameter {
        path: path.to_path_buf(),
        name: p.name.clone(),
        reason,
    };
    if p.name.is_empty() {
        return Err(error("has no name".into()));
    }
    let size = element_size(p.data_type).ok_or_else(|| {
        error(format!(
            "data_type {} has no fixed element size",
            p.data_type
        ))
    })?;
    let count = p
        .dims
        .iter()
        .try_fold(1u128, |n, &d| u128::try_from(d).ok().map(|d| n * d));
    match count {
        Some(n) if n * size as u128 == p.raw_data.len() as u128 => Ok(()),
        Some(n) => Err(error(format!(
            "dims {:?} of data_type {} need {} bytes, raw_data has {}",
            p.dims,
            p.data_type,
            n * size as u128,
            p.raw_data.len()
        ))),
        None => Err(error(format!("negative dims {:?}", p.dims))),
    }
}

/// A view of an `Adapter` or `Parameter` table (the accessors flatc would generate).
#[derive(Clone, Copy)]
struct TableView<'a>(Table<'a>);
type AdapterTable<'a> = TableView<'a>;

impl<'a> Follow<'a> for TableView<'a> {
    type Inner = TableView<'a>;

    unsafe fn follow(buf: &'a [u8], loc: usize) -> Self::Inner {
        // SAFETY: callers (flatbuffers' verified root and vectors) pass a verified table position.
        TableView(unsafe { Table::new(buf, loc) })
    }
}

impl TableView<'_> {
    fn int(&self, slot: u16) -> i32 {
        // SAFETY: the buffer was verified: slot holds an int32 when present.
        unsafe { self.0.get::<i32>(slot, Some(0)) }.unwrap_or(0)
    }

    fn name(&self) -> Option<&str> {
        // SAFETY: verified as a string.
        unsafe { self.0.get::<ForwardsUOffset<&str>>(PARAM_NAME, None) }
    }

    fn dims(&self) -> Option<Vector<'_, i64>> {
        // SAFETY: verified as a vector of int64.
        unsafe { self.0.get::<ForwardsUOffset<Vector<i64>>>(PARAM_DIMS, None) }
    }

    fn raw_data(&self) -> Option<Vector<'_, u8>> {
        // SAFETY: verified as a vector of bytes.
        unsafe {
            self.0
                .get::<ForwardsUOffset<Vector<u8>>>(PARAM_RAW_DATA, None)
        }
    }

    fn parameters(&self) -> Option<Vector<'_, ForwardsUOffset<TableView<'_>>>> {
        // SAFETY: verified as a vector of Parameter tables.
        unsafe {
            self.0
                .get::<ForwardsUOffset<Vector<ForwardsUOffset<TableView>>>>(
                    ADAPTER_PARAMETERS,
                    None,
                )
        }
    }
}

/// Verifies the root as an `Adapter` and its parameters as `Parameter`s (what flatc's verifier checks).
impl Verifiable for TableView<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> std::result::Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<i32>("format_version", ADAPTER_FORMAT_VERSION, false)?
            .visit_field::<i32>("adapter_version", ADAPTER_ADAPTER_VERSION, false)?
            .visit_field::<i32>("model_version", ADAPTER_MODEL_VERSION, false)?
            .visit_field::<ForwardsUOffset<Vector<ForwardsUOffset<ParameterCheck>>>>(
                "parameters",
                ADAPTER_PARAMETERS,
                false,
            )?
            .finish();
        Ok(())
    }
}

/// Verifier of one `Parameter` table.
struct ParameterCheck;

impl Verifiable for ParameterCheck {
    fn run_verifier(v: &mut Verifier, pos: usize) -> std::result::Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<&str>>("name", PARAM_NAME, false)?
            .visit_field::<ForwardsUOffset<Vector<i64>>>("dims", PARAM_DIMS, false)?
            .visit_field::<i32>("data_type", PARAM_DATA_TYPE, false)?
            .visit_field::<ForwardsUOffset<Vector<u8>>>("raw_data", PARAM_RAW_DATA, false)?
            .finish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Adapter {
        Adapter {
            adapter_version: 3,
            model_version: 7,
            parameters: vec![
                Parameter {
                    name: "model.layers.0.attn.q_proj.lora_A.weight".into(),
                    dims: vec![2, 3],
                    data_type: 1,
                    raw_data: [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                },
                Parameter {
                    name: "b".into(),
                    dims: vec![0, 5],
                    data_type: 10,
                    raw_data: vec![],
                },
                Parameter {
                    name: "odd".into(),
                    dims: vec![3],
                    data_type: 2,
                    raw_data: vec![9, 8, 7],
                },
            ],
        }
    }

    #[test]
    fn round_trips_and_aligns_raw_data() {
        let adapter = sample();
        let bytes = adapter.to_bytes();
        assert_eq!(&bytes[4..8], b"TORT");
        let back = Adapter::from_bytes(&bytes, Path::new("x.onnx_adapter")).expect("read");
        assert_eq!(back, adapter);
        // raw_data of the float parameter starts 8-aligned in the buffer (force_align: 8).
        let raw = &adapter.parameters[0].raw_data;
        let at = bytes
            .windows(raw.len())
            .position(|w| w == raw.as_slice())
            .expect("raw data present");
        assert_eq!(at % 8, 0);
    }

    #[test]
    fn writes_atomically_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.onnx_adapter");
        sample().write(&path).expect("write");
        assert_eq!(Adapter::read(&path).expect("read"), sample());
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn rejects_other_files_with_clear_errors() {
        let path = Path::new("bad.onnx_adapter");
        let text = |bytes: &[u8]| {
            Adapter::from_bytes(bytes, path)
                .expect_err("must fail")
                .to_string()
        };
        assert!(text(b"TORT").contains("too short"));
        let mut other = sample().to_bytes();
        other[4..8].copy_from_slice(b"ORTM");
        assert!(text(&other).contains("\"ORTM\", expected \"TORT\""));
        let good = sample().to_bytes();
        assert!(text(&good[..good.len() / 2]).contains("malformed"));

        let mut versioned = FlatBufferBuilder::new();
        let start = versioned.start_table();
        versioned.push_slot::<i32>(ADAPTER_FORMAT_VERSION, 2, 0);
        let root = versioned.end_table(start);
        versioned.finish(root, Some(FILE_IDENTIFIER));
        let t = text(versioned.finished_data());
        assert!(
            t.contains("format_version 2, expected 1") && t.contains("bad.onnx_adapter"),
            "{t}"
        );

        let mut short = sample();
        short.parameters[0].raw_data.pop();
        let t = text(&short.to_bytes());
        assert!(
            t.contains("model.layers.0.attn.q_proj.lora_A.weight") && t.contains("need 24 bytes"),
            "{t}"
        );
    }
}
