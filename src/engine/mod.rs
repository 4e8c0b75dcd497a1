//! ONNX Runtime: locating and loading the shared library. Sessions, the KV cache and execution
//! providers arrive with the runtime issue and live beside this file.

pub mod ort_lib;

pub use ort_lib::{OrtLibrary, OrtRuntime, init_ort, resolve_from, resolve_ort_library};
