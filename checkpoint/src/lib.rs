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

pub mod adapter;
pub mod config;
pub mod error;
pub mod generation;
pub mod layout;
pub mod manifest;
pub mod processor;
pub mod temp;
pub mod weights;

pub use adapter::{AdapterConfig, LoraAdapter, LoraPair};
pub use config::{ModelConfig, TextConfig, VisionConfig};
pub use error::{Error, Result};
pub use generation::GenerationConfig;
pub use manifest::Manifest;
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

    /// A fingerprint of the source: FNV-1a 64 over config.json and each shard's header and size.
    pub fn fingerprint(&self) -> Result<String> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        };
        let config = self.dir.join("config.json");
        eat(&std::fs::read(&config).map_err(Error::io(&config))?);
        for (path, header, len) in self.weights.shard_headers() {
            eat(path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
            eat(header);
            eat(&len.to_le_bytes());
        }
        Ok(format!("fnv1a64:{h:016x}"))
    }

    /// Path of a file in the checkpoint directory, or an error naming it when missing.
    pub fn file(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        if path.is_file() { Ok(path) } else { Err(Error::MissingFile { path }) }
    }
}
