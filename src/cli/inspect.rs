//! `st inspect IMAGE [QUESTION] --model DIR --out DIR`.

use crate::inspect::inspect;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Image file (PNG, JPEG, WebP, BMP, GIF, TIFF).
    pub image: PathBuf,
    /// The question; without it the prompt holds the instruction alone.
    pub question: Option<String>,
    /// Checkpoint directory (default: $ST_MODEL, else the bundled tiny model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Where to write the .npy files (nothing is written without it).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub pixels: super::PixelArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let model = args.model.clone().unwrap_or_else(super::default_model_dir);
    let ins = inspect(&model, &args.image, args.question.as_deref(), args.pixels.overrides())?;
    let written = match &args.out {
        Some(dir) => ins.write_npy_dir(dir)?,
        None => vec![],
    };
    let (ow, oh) = ins.image.original_size;
    let (rw, rh) = ins.image.resized_size;
    let [t, gh, gw] = ins.image.grid_thw;
    if args.json {
        let summary = serde_json::json!({
            "image": args.image, "model": model,
            "original_size": [ow, oh], "resized_size": [rw, rh], "grid_thw": [t, gh, gw],
            "image_tokens": ins.image_token_count, "prompt_tokens": ins.input_ids.len(),
            "rope_delta": ins.positions.delta, "written": written,
        });
        println!("{summary:#}");
    } else {
        println!("image         {}", args.image.display());
        println!("model         {}", model.display());
        println!("original size {ow} x {oh}");
        println!("resized size  {rw} x {rh}");
        println!("grid (t,h,w)  {t} x {gh} x {gw} patches → {} image tokens", ins.image_token_count);
        println!("prompt        {} tokens (rope delta {})", ins.input_ids.len(), ins.positions.delta);
        for p in &written {
            println!("wrote         {}", p.display());
        }
    }
    Ok(())
}
