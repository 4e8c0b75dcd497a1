//! `st export CHECKPOINT_DIR OUT_DIR [--precision fp32]`.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json, …).
    pub checkpoint: PathBuf,
    /// New directory for the exported model; must not exist.
    pub out: PathBuf,
    /// Precision of the linear layers.
    #[arg(long, default_value = "fp32")]
    pub precision: st_export::Precision,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let opts = st_export::ExportOptions { precision: args.precision };
    let manifest = st_export::export(&args.checkpoint, &args.out, &opts)?;
    for (name, g) in &manifest.graphs {
        println!("{name:8} {} ({} inputs, {} outputs)", g.file, g.inputs.len(), g.outputs.len());
    }
    println!("wrote {}", args.out.display());
    Ok(())
}
