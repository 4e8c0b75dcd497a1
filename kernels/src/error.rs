use thiserror::Error;

/// Everything that can go wrong in st-kernels. Messages name the tensor, the argument or the library and
/// say what to do next.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{what}: expected {expected} elements, found {found}")]
    Length { what: &'static str, expected: usize, found: usize },

    #[error("invalid matmul shape: {0}")]
    Shape(String),

    #[error("attention: {0}")]
    Attention(String),

    #[error(
        "no CUDA driver library (libcuda.so) could be loaded: install the NVIDIA driver or run on the CPU \
         (the CUDA kernels need a GPU)"
    )]
    NoDriver,

    #[error(
        "NVRTC (libnvrtc.so.12 or .13) could not be loaded: install the CUDA toolkit or `pip install \
         nvidia-cuda-nvrtc-cu12` and put its lib/ on LD_LIBRARY_PATH"
    )]
    NoNvrtc,

    #[error("CUDA driver call failed while {context}: {message}")]
    Driver { context: String, message: String },

    #[error("NVRTC could not compile {program} for {arch}:\n{log}")]
    Compile { program: String, arch: String, log: String },

    #[error("CUDA headers (cuda_fp16.h) not found: set CUDA_HOME or ST_CUDA_INCLUDE to a directory holding them")]
    NoHeaders,

    #[error("kernel cache {path}: {source}")]
    Cache { path: std::path::PathBuf, source: std::io::Error },

    #[error("this CPU lacks {features}, which the {build} build of the {kernel} needs")]
    Unsupported { kernel: &'static str, build: &'static str, features: &'static str },

    #[error("{name} = {value:?}: expected one of {expected}")]
    UnknownValue { name: String, value: String, expected: &'static str },

    #[error("unknown kernel {0} (host emulation)")]
    UnknownKernel(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn driver(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Error::Driver { context: context.into(), message: err.to_string() }
    }
}
