//! ONNX Runtime: locating and loading the shared library ([`ort_lib`]), an exported model's
//! sessions ([`model`]) and the first engine ([`engine`]: frames, greedy generation). Execution
//! providers other than CPU, IoBinding, the sampling chain and frame KV reuse arrive with the
//! runtime issue.

#[allow(clippy::module_inception)]
pub mod engine;
pub mod model;
pub mod ort_lib;

pub use engine::{Engine, Frame, Generation};
pub use model::{ExportedModel, SessionOptions};

pub use ort_lib::{OrtLibrary, OrtRuntime, init_ort, resolve_from, resolve_ort_library};
