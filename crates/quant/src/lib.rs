//! Weight quantization math for olive-rs: the min/max grid of AutoGPTQ/AutoAWQ (`grid`), round-to-nearest
//! (`rtn`) and GPTQ (Frantar et al. 2022, IST-DASLab/gptq `fasterquant`; `gptq`), producing
//! `olive_model::quantized::QuantizedLinear` (unpacked levels, scales, zero points, g_idx).

pub mod awq;
mod calibration;
pub mod device;
pub mod error;
pub mod gptq;
pub mod grid;
mod head;
mod input;
mod layout;
mod linalg;
#[cfg(feature = "pass")]
pub mod pass;
mod pipeline;
mod placement;
pub mod rtn;
pub mod stream;
mod value_hessian;
pub mod writer;

pub use device::{layer_gpu, Device};
pub use error::{QuantError, Result};
pub use gptq::{gptq, GptqOptions, GptqResult, GptqSolver, Hessian};
pub use grid::{group_params, quantize_value, QuantSpec};
pub use rtn::{fake_quantize, rtn};
pub use stream::{
    quantize_model, Event, LayerReport, Method, OutputFormat, QuantizeOptions, Selected, Summary,
};
