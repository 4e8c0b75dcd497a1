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

pub fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

/// Rewrite model.safetensors through `f` over (name, dtype, shape, bytes).
pub fn edit_tensors(
    dir: &Path,
    f: impl Fn(&str, safetensors::Dtype, Vec<usize>, Vec<u8>) -> Option<(safetensors::Dtype, Vec<usize>, Vec<u8>)>,
) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        if let Some((d, s, b)) = f(&name, view.dtype(), view.shape().to_vec(), view.data().to_vec()) {
            out.push((name, d, s, b));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = out
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &p).unwrap();
}
