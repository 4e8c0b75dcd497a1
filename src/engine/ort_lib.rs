//! Finding `libonnxruntime.so.1.31.1` (ort's `load-dynamic`; nothing is downloaded). Order:
//! 1. a path given through the API or `--ort-lib`;
//! 2. the `ORT_DYLIB_PATH` environment variable;
//! 3. the project's Python venv (`.venv/lib/python3.*/site-packages/onnxruntime/capi/`), looked
//!    for beside the current directory, the executable and the source tree.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime release the `ort` crate's `api-31` feature targets.
pub const ORT_VERSION: &str = "1.31.1";
/// The one command that provides the library.
pub const INSTALL_HINT: &str = "make venv   (creates .venv with onnxruntime==1.31.1 from PyPI)";

/// Where the library was found, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrtLibrary {
    pub path: PathBuf,
    pub found_by: &'static str,
}

fn lib_name() -> String {
    format!("libonnxruntime.so.{ORT_VERSION}")
}

/// `.venv` folders that may hold the project's onnxruntime wheel.
fn venv_candidates() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let mut out = Vec::new();
    for root in roots {
        let venv = root.join(".venv");
        if !out.contains(&venv) {
            out.push(venv);
        }
    }
    out
}

fn find_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let entries = std::fs::read_dir(&lib).ok()?;
    let mut pythons: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("python3")))
        .collect();
    pythons.sort();
    pythons.into_iter().map(|p| p.join("site-packages/onnxruntime/capi").join(lib_name())).find(|p| p.is_file())
}

/// Find the library without loading it: `explicit`, then `ORT_DYLIB_PATH`, then the project venv.
pub fn resolve_ort_library(explicit: Option<&Path>) -> Result<OrtLibrary> {
    resolve_from(explicit, std::env::var_os("ORT_DYLIB_PATH").as_deref().map(Path::new), &venv_candidates())
}

/// The search itself, over given inputs (testable without touching the environment).
pub fn resolve_from(explicit: Option<&Path>, env_path: Option<&Path>, venvs: &[PathBuf]) -> Result<OrtLibrary> {
    let mut tried = Vec::new();
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(OrtLibrary { path: p.to_path_buf(), found_by: "--ort-lib" });
        }
        tried.push(format!("--ort-lib {} (no such file)", p.display()));
    }
    match env_path {
        Some(p) if p.is_file() => return Ok(OrtLibrary { path: p.to_path_buf(), found_by: "ORT_DYLIB_PATH" }),
        Some(p) => tried.push(format!("ORT_DYLIB_PATH={} (no such file)", p.display())),
        None => tried.push("ORT_DYLIB_PATH (unset)".into()),
    }
    if let Some(path) = venvs.iter().find_map(|v| find_in_venv(v)) {
        return Ok(OrtLibrary { path, found_by: "project venv" });
    }
    let shown: Vec<String> = venvs.iter().take(3).map(|v| v.display().to_string()).collect();
    tried.push(format!("{} in the project venv ({})", lib_name(), shown.join(", ")));
    Err(Error::OrtNotFound { tried: tried.join("; "), install: INSTALL_HINT })
}

/// The loaded library and the process-wide ORT environment sessions are built from.
pub struct OrtRuntime {
    pub library: OrtLibrary,
    pub environment: ort::environment::Environment,
}

static LOADED: OnceLock<OrtRuntime> = OnceLock::new();

/// Find and load ONNX Runtime once per process and create its environment; later calls return
/// the first result.
pub fn init_ort(explicit: Option<&Path>) -> Result<&'static OrtRuntime> {
    if let Some(rt) = LOADED.get() {
        return Ok(rt);
    }
    let library = resolve_ort_library(explicit)?;
    let ort_err = |reason: String| Error::Ort { context: format!("loading {}", library.path.display()), reason };
    let builder = ort::init_from(&library.path).map_err(|e| ort_err(e.to_string()))?;
    let environment = builder.with_name("st").build().map_err(|e| ort_err(e.to_string()))?;
    Ok(LOADED.get_or_init(|| OrtRuntime { library, environment }))
}

/// ONNX Runtime's own build string (version, commit), after [`init_ort`].
pub fn build_info() -> &'static str {
    ort::info()
}
