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

/// Find the library without loading it: `explicit`, else `ORT_DYLIB_PATH`, else the project venv. A
/// library named by `explicit` or `ORT_DYLIB_PATH` that is not there is an error, not a fallback.
pub fn resolve_ort_library(explicit: Option<&Path>) -> Result<OrtLibrary> {
    resolve_from(explicit, std::env::var_os("ORT_DYLIB_PATH").as_deref().map(Path::new), &venv_candidates())
}

/// The search itself, over given inputs (testable without touching the environment).
pub fn resolve_from(explicit: Option<&Path>, env_path: Option<&Path>, venvs: &[PathBuf]) -> Result<OrtLibrary> {
    // A library asked for by name is that library or an error: falling back to another one would
    // run a build the user did not choose (the CPU wheel instead of a GPU build, say).
    let chosen = explicit.map(|p| (p, "--ort-lib")).or(env_path.map(|p| (p, "ORT_DYLIB_PATH")));
    if let Some((p, found_by)) = chosen {
        if p.is_file() {
            return Ok(OrtLibrary { path: p.to_path_buf(), found_by });
        }
        let what = if p.exists() { "not a file" } else { "no such file" };
        let tried = format!("{found_by} {} ({what})", p.display());
        return Err(Error::OrtNotFound { tried, install: INSTALL_HINT });
    }
    let mut tried = vec!["ORT_DYLIB_PATH (unset)".to_string()];
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
    let builder = ort::init_from(&library.path).map_err(|e| ort_err(load_failure(&library.path, e.to_string())))?;
    let environment = builder.with_name("st").build().map_err(|e| ort_err(e.to_string()))?;
    Ok(LOADED.get_or_init(|| OrtRuntime { library, environment }))
}

/// ort's reason for a library that would not load, with what the file is when dlopen refused it.
fn load_failure(path: &Path, reason: String) -> String {
    if !reason.contains("dlopen") {
        return reason;
    }
    let mut head = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head));
    match read {
        Ok(()) if head == *b"\x7fELF" => format!(
            "{reason} (an ELF file that the dynamic loader refused: another architecture, or a missing dependency; `ldd {}` tells)",
            path.display()
        ),
        _ => format!(
            "{reason}: not a shared library (no ELF header); point --ort-lib or ORT_DYLIB_PATH at libonnxruntime.so.1.31.1"
        ),
    }
}

/// ONNX Runtime's own build string (version, commit), after [`init_ort`].
pub fn build_info() -> &'static str {
    ort::info()
}
