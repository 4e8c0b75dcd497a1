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

/// The default model directory: `$ST_MODEL`, else the bundled tiny model.
pub fn default_model_dir() -> std::path::PathBuf {
    match std::env::var_os("ST_MODEL") {
        Some(v) => v.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny"),
    }
}
