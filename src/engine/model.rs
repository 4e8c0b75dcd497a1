//! An exported model directory opened for inference: its manifest and one ORT session per graph.

use crate::error::{Error, Result};
use ort::session::Session;
use st_checkpoint::Manifest;
use std::path::{Path, PathBuf};

/// Session settings.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// ONNX Runtime library (else ORT_DYLIB_PATH, else the project venv).
    pub ort_lib: Option<PathBuf>,
    /// Intra-op threads (ORT's default when `None`).
    pub threads: Option<usize>,
}

pub struct ExportedModel {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub vision: Session,
    pub embed: Session,
    pub decoder: Session,
    /// The decoder takes GroupQueryAttention inputs (`seqlens_k`) rather than a bias.
    pub decoder_uses_gqa: bool,
}

impl ExportedModel {
    /// Open `dir` (written by `st export`): check its manifest, then load each graph it lists.
    pub fn load(dir: &Path, opts: &SessionOptions) -> Result<Self> {
        let manifest = Manifest::from_dir(dir)?;
        let env = &crate::engine::init_ort(opts.ort_lib.as_deref())?.environment;
        let open = |name: &str| -> Result<Session> {
            let spec = manifest.graphs.get(name).ok_or_else(|| Error::Ort {
                context: format!("{}", dir.join("manifest.json").display()),
                reason: format!("no `{name}` graph listed"),
            })?;
            let path = dir.join(&spec.file);
            if !path.is_file() {
                return Err(Error::Checkpoint(st_checkpoint::Error::MissingFile { path }));
            }
            let ort_err = |e: String| Error::Ort { context: path.display().to_string(), reason: e };
            let mut builder = Session::builder(env).map_err(|e| ort_err(e.to_string()))?;
            if let Some(n) = opts.threads {
                builder = builder.with_intra_threads(n).map_err(|e| ort_err(e.to_string()))?;
            }
            builder.commit_from_file(&path).map_err(|e| ort_err(e.to_string()))
        };
        let decoder_uses_gqa =
            manifest.graphs.get("decoder").is_some_and(|g| g.inputs.iter().any(|i| i.name == "seqlens_k"));
        Ok(Self {
            dir: dir.to_path_buf(),
            vision: open("vision")?,
            embed: open("embed")?,
            decoder: open("decoder")?,
            decoder_uses_gqa,
            manifest,
        })
    }
}
