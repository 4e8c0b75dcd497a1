//! What the exporter and the runtime both read from a Hugging Face Qwen2.5-VL checkpoint:
//! the model [`config`], the [`weights`] (safetensors shards, memory-mapped, zero-copy typed
//! views), the [`layout`] of every tensor the architecture expects, and the
//! [`generation`] settings. Nothing here hard-codes a shape or a token id: all of it is read
//! from the checkpoint's own files.
//!
//! ```no_run
//! # fn main() -> Result<(), st_checkpoint::Error> {
//! let ckpt = st_checkpoint::Checkpoint::open("path/to/SpatialThinker-7B")?;
//! println!("{} text layers", ckpt.config.text.num_hidden_layers);
//! let q = ckpt.weights.get("model.layers.0.self_attn.q_proj.weight")?;
//! let values: std::borrow::Cow<'_, [f32]> = q.to_f32()?;
//! # let _ = values; Ok(()) }
//! ```

pub mod config;
pub mod error;
pub mod generation;
pub mod layout;
pub mod processor;
pub mod weights;

pub use config::{ModelConfig, TextConfig, VisionConfig};
pub use error::{Error, Result};
pub use generation::GenerationConfig;
pub use processor::ImageProcessorConfig;
pub use weights::{Dtype, TensorRef, Weights};

use std::path::{Path, PathBuf};

/// A checkpoint directory, opened and checked: config parsed, every expected tensor present
/// with the expected shape and a supported dtype.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub generation: GenerationConfig,
    pub image_processor: ImageProcessorConfig,
    pub weights: Weights,
}

impl Checkpoint {
    /// Open `dir`, parse its config files and map its safetensors, checking every tensor that
    /// [`layout::expected_tensors`] lists for the config.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::NotADirectory { path: dir });
        }
        let config = ModelConfig::from_dir(&dir)?;
        let generation = GenerationConfig::from_dir(&dir)?;
        let image_processor = ImageProcessorConfig::from_dir(&dir)?;
        let weights = Weights::open(&dir)?;
        layout::check(&config, &weights)?;
        Ok(Self { dir, config, generation, image_processor, weights })
    }

    /// Path of a file in the checkpoint directory, or an error naming it when missing.
    pub fn file(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        if path.is_file() { Ok(path) } else { Err(Error::MissingFile { path }) }
    }
}
