//! `st-run IMAGE "QUESTION"`: today it prepares the model inputs and says so plainly; answering
//! arrives with the runtime (the engine issue). It never prints a made-up answer.

use clap::Parser;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "st-run", version, about = "Ask SpatialThinker a spatial question about an image")]
struct Args {
    image: PathBuf,
    question: String,
    /// Checkpoint directory (default: $ST_MODEL, else the bundled tiny model).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    min_pixels: Option<u64>,
    #[arg(long)]
    max_pixels: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let model = a.model.unwrap_or_else(st::cli::default_model_dir);
    let pixels = st::inspect::PixelOverrides { min_pixels: a.min_pixels, max_pixels: a.max_pixels };
    let ins = st::inspect::inspect(&model, &a.image, Some(&a.question), pixels)?;
    let (w, h) = ins.image.resized_size;
    println!("prepared {} prompt tokens ({} for the {w}x{h} image)", ins.input_ids.len(), ins.image_token_count);
    eprintln!("st-run: answering arrives with the runtime (the engine issue); no answer is produced yet");
    std::process::exit(2)
}
