//! `st export CHECKPOINT_DIR OUT_DIR [--precision fp32|int4] [--block N] [--asymmetric] [--accuracy-level L]`.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json, …).
    pub checkpoint: PathBuf,
    /// New directory for the exported model; must not exist.
    pub out: PathBuf,
    /// Precision of the text decoder's linear layers (vision and lm_head stay fp32).
    #[arg(long, default_value = "fp32")]
    pub precision: st_export::Precision,
    /// int4: inputs per quantization block (32, 64 or 128).
    #[arg(long, default_value_t = 32, value_parser = parse_block)]
    pub block: usize,
    /// int4: per-block zero points (asymmetric range) instead of symmetric.
    #[arg(long)]
    pub asymmetric: bool,
    /// Precision of lm_head (default: int8 under int4/fp8, else the text precision).
    #[arg(long)]
    pub lm_head: Option<st_export::Precision>,
    /// Embedding table precision, fp32 or fp16 (default: fp16 under int4/fp8).
    #[arg(long)]
    pub embed: Option<st_export::Precision>,
    /// Vision tower precision, fp32 or fp16 (default: fp16 under int4/fp8).
    #[arg(long)]
    pub vision: Option<st_export::Precision>,
    /// int4: MatMulNBits accuracy_level (0 = f32 compute, 4 = int8 activations, faster on CPU).
    #[arg(long, default_value_t = 4)]
    pub accuracy_level: i64,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let mut opts = st_export::ExportOptions::new(args.precision);
    opts.linear.int4 = st_export::NBitsScheme { bits: 4, block: args.block, symmetric: !args.asymmetric };
    opts.linear.accuracy_level = args.accuracy_level;
    if let Some(p) = args.lm_head {
        opts.linear.lm_head = p;
    }
    if let Some(p) = args.embed {
        opts.embed = p;
    }
    if let Some(p) = args.vision {
        opts.vision = p;
    }
    opts.progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let manifest = st_export::export(&args.checkpoint, &args.out, &opts)?;
    for (name, g) in &manifest.graphs {
        println!("{name:8} {} ({} inputs, {} outputs)", g.file, g.inputs.len(), g.outputs.len());
    }
    println!("wrote {}", args.out.display());
    Ok(())
}

fn parse_block(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(b @ (32 | 64 | 128)) => Ok(b),
        _ => Err(format!("{s:?} is not a block size (32, 64 or 128)")),
    }
}
