//! Errors of olive-quant: each names the sizes, field or option at fault and what was expected.

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, QuantError>;

/// What went wrong while quantizing a weight.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// `bits` is not one of the supported widths.
    #[error("bits {0}: expected 2, 3, 4 or 8")]
    Bits(u8),
    /// `group_size` is zero.
    #[error("group_size 0: expected a positive number of inputs per group, or -1 (None) for one group per output channel")]
    GroupSize,
    /// A buffer's length does not match the shape it was given with.
    #[error("{what}: expected {expected} values ({shape}), got {got}")]
    Shape {
        what: &'static str,
        shape: String,
        expected: usize,
        got: usize,
    },
    /// A weight is NaN or infinite.
    #[error("weight [{out_features}, {in_features}]: element ({row}, {col}) is {value}; weights must be finite")]
    NonFinite {
        out_features: usize,
        in_features: usize,
        row: usize,
        col: usize,
        value: f32,
    },
    /// The Hessian was accumulated for another number of inputs.
    #[error("Hessian is [{hessian}, {hessian}] but the weight has {in_features} inputs")]
    HessianSize { hessian: usize, in_features: usize },
    /// No calibration rows reached the Hessian.
    #[error("Hessian [{0}, {0}] has no calibration rows: run calibration inputs through Hessian::add before GPTQ")]
    NoSamples(usize),
    /// Cholesky of the damped Hessian met a non-positive pivot (GPTQ raises here too).
    #[error("Hessian [{n}, {n}] is not positive definite after damping with damp_percent {damp_percent} (pivot {pivot} at column {column}); try a larger damp_percent such as {suggest}")]
    NotPositiveDefinite {
        n: usize,
        damp_percent: f32,
        column: usize,
        pivot: f32,
        suggest: f32,
    },
    /// The Hessian holds NaN or infinity (calibration activations overflowed).
    #[error("Hessian [{n}, {n}]: H[{column}, {column}] is {value}; the calibration activations of this linear overflowed or are not finite")]
    NonFiniteHessian { n: usize, column: usize, value: f32 },
    /// A GPTQ option is out of range.
    #[error("GPTQ option {field} = {value}: expected {expected}")]
    BadOption {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file could not be parsed or written.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The input model could not be read (config.json, safetensors, architecture).
    #[error(transparent)]
    Model(#[from] olive_model::ModelError),
    /// A decoder layer could not be loaded or run.
    #[error(transparent)]
    Nn(#[from] olive_nn::NnError),
    /// A quantized linear does not fit the output layout.
    #[error("{module}: {source}")]
    Pack {
        module: String,
        #[source]
        source: olive_model::quantized::PackError,
    },
    /// The input model is already quantized.
    #[error("{path}: the model is already quantized ({what}); quantize its floating-point original instead")]
    AlreadyQuantized {
        path: std::path::PathBuf,
        what: String,
    },
    /// The calibration data does not fit the model or the method.
    #[error("calibration data: {0}")]
    Calibration(String),
    /// An option or model feature this quantizer does not support.
    #[error("{0}")]
    Unsupported(String),
    /// The GPU asked for (`--device gpu`) is missing or failed.
    #[error("GPU calibration: {0}")]
    Gpu(#[from] olive_kernels::cuda::GpuError),
    /// More GPUs asked for than the driver reports.
    #[error("device gpu over {asked} GPUs: the driver reports {found} CUDA device(s)")]
    Gpus { asked: usize, found: usize },
    /// The caller asked the quantizer to stop.
    #[error("cancelled")]
    Cancelled,
}

impl QuantError {
    pub(crate) fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        QuantError::Io {
            path: path.into(),
            source,
        }
    }
}
