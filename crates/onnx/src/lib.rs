//! ONNX models for olive-rs: the ONNX IR as prost types (compiled from onnx-ml.proto at build time).

/// The ONNX IR (package `onnx` of onnx-ml.proto).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub mod adapter_format;
pub mod error;
pub mod external_data;
pub mod extract_adapters;
pub mod genai_config;
pub mod graph;
pub mod matmul_nbits;
pub mod rewrite;
pub mod tensor;
