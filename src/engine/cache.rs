//! Models given as Hugging Face checkpoints: exported once (fp32) into a cache directory keyed by
//! the checkpoint's fingerprint, then loaded from there like any exported directory.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Where exported copies of checkpoints are kept: `$ST_CACHE_DIR`, else `~/.cache/st`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ST_CACHE_DIR") {
        return d.into();
    }
    match std::env::var_os("HOME") {
        Some(h) => Path::new(&h).join(".cache/st"),
        None => std::env::temp_dir().join("st-cache"),
    }
}

/// An exported model directory for `model`: itself when it has a manifest, else an fp32 export
/// of the checkpoint, made once and reused while the checkpoint is unchanged.
pub fn exported_model(model: &Path) -> Result<PathBuf> {
    if model.join(st_checkpoint::manifest::MANIFEST_FILE).is_file() {
        return Ok(model.to_path_buf());
    }
    let ckpt = st_checkpoint::Checkpoint::open(model)?;
    let key = ckpt.fingerprint()?.replace(':', "-");
    let root = cache_dir();
    let out = root.join(key);
    if out.join(st_checkpoint::manifest::MANIFEST_FILE).is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(&root).map_err(Error::io(&root))?;
    tracing::info!("exporting {} to {} (once)", model.display(), out.display());
    match st_export::export(model, &out, &st_export::ExportOptions::default()) {
        Ok(_) => Ok(out),
        // Another process finished the same export first.
        Err(st_export::Error::OutputExists { .. }) if out.join("manifest.json").is_file() => Ok(out),
        Err(e) => Err(e.into()),
    }
}
