//! Finding and loading ONNX Runtime: explicit path, ORT_DYLIB_PATH, project venv, and the error
//! when none works.

use st::engine::{init_ort, resolve_from, resolve_ort_library};
use std::path::{Path, PathBuf};

#[test]
fn search_order_and_error() {
    let dir = tempfile::tempdir().unwrap();
    let explicit = dir.path().join("libexplicit.so");
    let env = dir.path().join("libenv.so");
    std::fs::write(&explicit, b"").unwrap();
    std::fs::write(&env, b"").unwrap();
    let venv = dir.path().join(".venv");
    let capi = venv.join("lib/python3.11/site-packages/onnxruntime/capi");
    std::fs::create_dir_all(&capi).unwrap();
    std::fs::write(capi.join("libonnxruntime.so.1.31.1"), b"").unwrap();
    let venvs = vec![PathBuf::from("/nonexistent/.venv"), venv.clone()];

    let r = resolve_from(Some(&explicit), Some(&env), &venvs).unwrap();
    assert_eq!((r.path, r.found_by), (explicit.clone(), "--ort-lib"));
    let r = resolve_from(None, Some(&env), &venvs).unwrap();
    assert_eq!((r.path, r.found_by), (env.clone(), "ORT_DYLIB_PATH"));
    let r = resolve_from(None, None, &venvs).unwrap();
    assert_eq!((r.path, r.found_by), (capi.join("libonnxruntime.so.1.31.1"), "project venv"));

    // A library asked for by name that is not there is an error naming it, never another library.
    let e = resolve_from(Some(Path::new("/nope.so")), Some(&env), &venvs).unwrap_err().to_string();
    for needle in ["--ort-lib /nope.so (no such file)", "make venv"] {
        assert!(e.contains(needle), "missing {needle:?} in: {e}");
    }
    let e = resolve_from(None, Some(dir.path()), &venvs).unwrap_err().to_string();
    assert!(e.contains(&format!("ORT_DYLIB_PATH {} (not a file)", dir.path().display())), "{e}");

    let e = resolve_from(None, None, &venvs[..1]).unwrap_err().to_string();
    for needle in ["ORT_DYLIB_PATH (unset)", "libonnxruntime.so.1.31.1", "make venv", "onnxruntime==1.31.1"] {
        assert!(e.contains(needle), "missing {needle:?} in: {e}");
    }
}

#[test]
fn loads_the_project_onnxruntime() {
    // `make test` creates the venv; a plain `cargo test` without it fails here with the install hint.
    let lib = resolve_ort_library(None).unwrap_or_else(|e| panic!("{e}"));
    assert!(lib.path.to_string_lossy().ends_with("libonnxruntime.so.1.31.1"), "{lib:?}");
    let loaded = init_ort(None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.library, lib);
    // ort itself refuses a library older than 1.31 at load; what loaded answers the C API.
    let info = st::engine::ort_lib::build_info();
    assert!(info.starts_with("ORT Build Info"), "{info}");
}
