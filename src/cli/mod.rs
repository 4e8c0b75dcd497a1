//! Command-line front doors: clap arguments and one file per subcommand. The binaries' `main` is one
//! `match` over [`Command`].

pub mod doctor;
pub mod export;
pub mod inspect;
pub mod run;

use clap::{Parser, Subcommand};

/// `st`: the SpatialThinker edge runtime.
#[derive(Debug, Parser)]
#[command(name = "st", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Preprocess an image, build the prompt and M-RoPE ids, and save them as .npy for comparison with Python.
    Inspect(inspect::InspectArgs),
    /// Answer a question about an image.
    Run(run::RunArgs),
    /// Export a Hugging Face checkpoint to ONNX graphs and a manifest.
    Export(export::ExportArgs),
    /// Report which ONNX Runtime library is found and whether it loads.
    Doctor(doctor::DoctorArgs),
}

/// Pixel budget of the resized image, shared by the commands that preprocess.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct PixelArgs {
    /// Lower bound on resized pixels (default: the model's preprocessor config).
    #[arg(long)]
    pub min_pixels: Option<u64>,
    /// Upper bound on resized pixels; lower it on edge devices (e.g. 200704 = 256 image tokens).
    #[arg(long)]
    pub max_pixels: Option<u64>,
}

impl PixelArgs {
    pub fn overrides(&self) -> crate::inspect::PixelOverrides {
        crate::inspect::PixelOverrides { min_pixels: self.min_pixels, max_pixels: self.max_pixels }
    }
}

/// The default model directory: `$ST_MODEL`, else the bundled tiny model.
pub fn default_model_dir() -> std::path::PathBuf {
    match std::env::var_os("ST_MODEL") {
        Some(v) => v.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny"),
    }
}
