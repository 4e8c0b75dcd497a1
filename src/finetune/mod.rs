//! `st finetune` glue (feature `train`): STVQA rows → training sequences exactly as inference
//! sees them (the runtime's preprocessing, prompt, tokenizer and M-RoPE positions; image
//! embeddings from the exported vision graph through ONNX Runtime, once per image), handed to
//! st-train's trainers.

pub mod policy;
pub mod rollouts;
pub mod samples;

pub use samples::{Prepared, Skipped, prepare};
