//! The runtime's one error type. Every variant names the file, tensor, argument or limit
//! involved and, where there is one, what to do next.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Checkpoint(#[from] st_checkpoint::Error),

    #[error(transparent)]
    Export(#[from] st_export::Error),

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("image {source_name}: cannot decode: {reason}")]
    ImageDecode { source_name: String, reason: String },

    #[error(
        "image {source_name}: {reason} (limit: {limit}); raise it with the preprocess limits option if the image is genuine"
    )]
    ImageLimit { source_name: String, reason: String, limit: String },

    #[error("image {source_name}: {width}x{height} has aspect ratio {ratio:.1}, above the limit of {max}")]
    AspectRatio { source_name: String, width: u32, height: u32, ratio: f64, max: f64 },

    #[error("invalid value for {name}: {reason}")]
    InvalidArgument { name: &'static str, reason: String },

    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },

    #[error("{path}: chat template: {reason}")]
    Template { path: PathBuf, reason: String },

    #[error("{path}: special token {token:?} is not in the tokenizer")]
    MissingSpecialToken { path: PathBuf, token: String },

    #[error("constrained decoding: {reason}")]
    Grammar { reason: String },

    #[error("prompt: {reason}")]
    Prompt { reason: String },

    #[error(
        "ONNX Runtime library not found. Tried: {tried}. Install it with `{install}`, or pass --ort-lib / set ORT_DYLIB_PATH to libonnxruntime.so.1.31.1"
    )]
    OrtNotFound { tried: String, install: &'static str },

    #[error("execution provider {device} is unavailable: {reason}; {hint}, or allow the CPU fallback")]
    Provider { device: String, reason: String, hint: &'static str },

    #[error("ONNX Runtime ({context}): {reason}")]
    Ort { context: String, reason: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
