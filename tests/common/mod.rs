//! Helpers shared by the integration tests: fixture paths and golden loading.
#![allow(dead_code)]

pub mod pipeline;

use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub fn golden(rel: &str) -> PathBuf {
    fixtures().join("goldens").join(rel)
}

pub fn image(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

pub fn read_npy<T: ndarray_npy::ReadableElement, D: ndarray::Dimension>(path: &Path) -> ndarray::Array<T, D> {
    ndarray_npy::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Copy a fixture checkpoint into a fresh temporary directory (to corrupt it).
pub fn copy_model(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(model(name)).expect("fixture dir") {
        let p = entry.expect("entry").path();
        std::fs::copy(&p, dir.path().join(p.file_name().expect("name"))).expect("copy");
    }
    dir
}

/// The SpatialThinker question every model golden uses (tests/reference/common.py).
pub const QUESTION: &str = "Is the cup to the left of the plate? (A) yes (B) no";
