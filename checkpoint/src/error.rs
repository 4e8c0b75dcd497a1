use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can be wrong with a checkpoint directory. Each variant names the file and,
/// where there is one, the tensor or field.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: not a checkpoint directory (expected a folder with config.json and *.safetensors)")]
    NotADirectory { path: PathBuf },
    #[error("{path}: file is missing")]
    MissingFile { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: model_type {found:?} is not supported (st runs qwen2_5_vl checkpoints)")]
    UnsupportedArchitecture { path: PathBuf, found: String },
    #[error("{path}: field `{field}` is missing")]
    MissingField { path: PathBuf, field: &'static str },
    #[error("{path}: field `{field}` is invalid: {reason}")]
    InvalidField { path: PathBuf, field: &'static str, reason: String },
    #[error("{path}: not a valid safetensors file ({reason}); the file may be truncated or corrupt")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{dir}: no weights found (expected model.safetensors or model.safetensors.index.json)")]
    NoWeights { dir: PathBuf },
    #[error("tensor `{name}` is missing from the checkpoint ({dir})")]
    MissingTensor { name: String, dir: PathBuf },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path}: tensor `{name}` has dtype {found}, expected one of {expected}")]
    UnsupportedDtype { path: PathBuf, name: String, found: String, expected: &'static str },
    #[error("{path}: tensor `{name}` listed twice (also in {other})")]
    DuplicateTensor { path: PathBuf, name: String, other: PathBuf },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// Read and parse a JSON file, with errors that name it.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingFile { path: path.to_path_buf() }
        } else {
            Error::Io { path: path.to_path_buf(), source: e }
        }
    })?;
    serde_json::from_str(&text).map_err(|source| Error::Json { path: path.to_path_buf(), source })
}
