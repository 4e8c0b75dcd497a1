//! The training crate's one error type; every variant names the file, tensor, setting or step.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Checkpoint(#[from] st_checkpoint::Error),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },

    #[error("invalid value for {name}: {reason}")]
    InvalidArgument { name: &'static str, reason: String },

    #[error("adapter tensor `{name}`: {reason}")]
    Adapter { name: String, reason: String },

    #[error("step {step}: the loss is {value} (not finite); stopped, the last good checkpoint is {last_checkpoint}")]
    NonFiniteLoss { step: usize, value: f64, last_checkpoint: String },

    #[error("{dir}: cannot resume: {reason}")]
    Resume { dir: PathBuf, reason: String },

    #[error("device {device}: {reason}")]
    Device { device: String, reason: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
