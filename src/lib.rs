//! `st`: the SpatialThinker-7B edge runtime.
//!
//! The pipeline reads top to bottom in the module list: a Hugging Face checkpoint
//! ([`st_checkpoint`]) → [`preprocess`] (image → `pixel_values`) → [`prompt`] (template,
//! tokens) → [`rope`] (M-RoPE positions) → [`vision`] (index tensors of the vision graph) →
//! [`engine`] (ONNX Runtime sessions over an `st export` directory: frames, generation).
//!
//! ```no_run
//! # fn main() -> Result<(), st::Error> {
//! use std::path::Path;
//! let dir = Path::new("tests/fixtures/models/tiny");
//! let ckpt = st::st_checkpoint::Checkpoint::open(dir)?;
//! let pre = st::preprocess::Preprocessor::from_checkpoint(&ckpt);
//! let image = pre.load(Path::new("tests/fixtures/images/chelsea.png"))?;
//! let prompt = st::prompt::PromptBuilder::from_dir(dir)?;
//! let (w, h) = image.original_size;
//! let text = prompt.spatialthinker_prompt(w, h, "Is the cat left of the table?")?;
//! let ids = prompt.encode(&text, &[image.num_image_tokens(pre.geometry.merge_size)])?;
//! let pos = st::rope::mrope_positions(&ids, prompt.tokenizer.special.image_pad, &[image.grid_thw], 2)?;
//! println!("{} tokens, first decode position {}", ids.len(), pos.position_after_prompt(ids.len()));
//! # Ok(()) }
//! ```

pub mod cli;
pub mod decode;
pub mod engine;
pub mod error;
pub mod inspect;
pub mod preprocess;
pub mod prompt;
pub mod rope;
pub mod scene;
pub mod vision;

pub use error::{Error, Result};
pub use st_checkpoint;
