//! `st`: the SpatialThinker-7B edge runtime.
//!
//! The pipeline reads top to bottom in the module list: a Hugging Face checkpoint
//! ([`st_checkpoint`]) → [`preprocess`] (image → `pixel_values`) → [`prompt`] (template,
//! tokens) → [`rope`] (M-RoPE positions) → [`vision`] (index tensors of the vision graph) →
//! [`engine`] (ONNX Runtime sessions over an `st export` directory: frames, generation through
//! the [`decode`] sampling chain) → [`scene`] (the typed answer: sections, scene graph, choice).
//!
//! Load once, encode a camera frame once, ask it several questions (the second pays only for
//! its own tokens), read the boxes:
//!
//! ```
//! # fn main() -> Result<(), st::Error> {
//! use st::engine::{Engine, GenerateOptions, SessionOptions};
//! let mut engine = Engine::open("tests/fixtures/models/tiny".as_ref(), &SessionOptions::default())?;
//! let frame = engine.encode_image("tests/fixtures/images/chelsea.png".as_ref())?;
//! let opts = GenerateOptions { max_new_tokens: Some(200), ..Default::default() };
//! for question in ["Is the cat left of the table? (A) yes (B) no", "Where is the cat? (A) left (B) right"] {
//!     let answer = engine.ask(&frame, question, &opts)?;
//!     for object in answer.response.scene.iter().flat_map(|scene| &scene.objects) {
//!         println!("{} at {:?}", object.id, object.bbox);
//!     }
//!     println!("{:?} (valid: {}, {:.1} tok/s)", answer.response.answer, answer.response.valid, answer.timings.decode_tokens_per_s());
//! }
//! # Ok(()) }
//! ```
//!
//! The pieces underneath, for tools that need them (the prompt and positions without a model):
//!
//! ```
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
pub mod data;
pub mod decode;
pub mod engine;
pub mod error;
#[cfg(feature = "train")]
pub mod finetune;
pub mod inspect;
pub mod preprocess;
pub mod prompt;
pub mod reward;
pub mod rope;
pub mod scene;
pub mod vision;

pub use error::{Error, Result};
pub use st_checkpoint;
