use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop an export; each variant names the file, tensor or option.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Checkpoint(#[from] st_checkpoint::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} already exists; choose another output directory or remove it")]
    OutputExists { path: PathBuf },
    #[error("{path}: recipe: {reason}")]
    Recipe { path: PathBuf, reason: String },
    #[error("invalid {name}: {reason}")]
    InvalidOption { name: &'static str, reason: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
