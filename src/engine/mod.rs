//! ONNX Runtime: locating and loading the shared library ([`ort_lib`]), the execution provider
//! ([`device`]), an exported model's sessions ([`model`]), the decoder and its KV cache
//! ([`decoder`]) and the engine that ties them to a frame and a question ([`engine`]).

pub mod cache;
pub mod decoder;
pub mod device;
#[allow(clippy::module_inception)]
pub mod engine;
pub mod huge_pages;
pub mod model;
pub mod ops;
pub mod ort_lib;
pub mod shared_weights;

pub use decoder::{DecoderState, KvPlace, KvSnapshot};
pub use device::Device;
pub use engine::{
    Answer, DEFAULT_MAX_NEW_TOKENS, Engine, Frame, FrameTimings, GenerateOptions, StopReason, Timings, TokenEvent,
    new_token_budget,
};
pub use model::{ExportedModel, HugePages, SessionOptions, VisionSession, VisionWeights};
pub use ops::CPU_ISA_VAR;
pub use ort_lib::{OrtLibrary, OrtRuntime, init_ort, resolve_from, resolve_ort_library};
