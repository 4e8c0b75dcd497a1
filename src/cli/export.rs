//! `st export CHECKPOINT_DIR OUT_DIR [--precision fp32|int4] [--block N] [--asymmetric] [--accuracy-level L] [--int4-op st|nbits] [--attention st|gqa|standard] [--separate-mlp] [--lora ADAPTER_DIR]`.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json, …).
    pub checkpoint: PathBuf,
    /// New directory for the exported model; must not exist.
    pub out: PathBuf,
    /// Recipe file (precision per part and per layer pattern), e.g. models/spatialthinker-7b.toml.
    /// Flags given below override it.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Precision of the text decoder's linear layers: fp32, fp16, int4 or fp8 (default fp32).
    #[arg(long)]
    pub precision: Option<st_export::Precision>,
    /// int4: inputs per quantization block (32, 64 or 128; default 128: MLAS's fastest kernels and
    /// fewer bytes per token, docs/PARITY.md gives each block's error).
    #[arg(long, value_parser = parse_block)]
    pub block: Option<usize>,
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
    /// int4: accuracy_level (0 = f32 compute, 4 = int8 activations, faster on CPU; default 4).
    #[arg(long)]
    pub accuracy_level: Option<i64>,
    /// int4 (and the int8 lm_head) on --target cpu: st (ai.st.MatMulInt4 / MatMulInt8, f16 scales read
    /// in place, weights in column tiles for st's int8 GEMV/GEMM; default: faster, less memory) or nbits
    /// (com.microsoft.MatMulNBits, f32 scales, MLAS; runs in any ONNX Runtime).
    #[arg(long)]
    pub int4_op: Option<st_export::Int4Op>,
    /// Decoder attention: st (ai.st.GroupQueryAttention: st's CPU kernel per KV head, st's CUDA kernel
    /// on the GPU; the default on --target cuda, and on --target cpu with --int4-op st), gqa
    /// (com.microsoft.GroupQueryAttention; the default with --int4-op nbits; on CUDA ORT runs it on the
    /// CPU, as its CUDA kernel takes fp16 only), both appending to the KV cache in place, or standard
    /// (plain ONNX ops, any provider; the default on tensorrt).
    #[arg(long)]
    pub attention: Option<String>,
    /// Keep each MLP's gate and up projections as two linears with SiLU and Mul nodes between. By
    /// default, where st's tiled int4 op runs them (--target cpu, --int4-op st, accuracy_level 4), they
    /// are one ai.st.MatMulInt4 that writes silu(gate) · up itself.
    #[arg(long)]
    pub separate_mlp: bool,
    /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors, e.g. the
    /// `adapter/` of an `st finetune` run) merged into the weights before quantization.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Execution provider the graphs are meant for: cpu, cuda or tensorrt (recorded in the manifest).
    #[arg(long, default_value = "cpu")]
    pub target: st_export::Target,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let mut opts = match &args.recipe {
        Some(path) => st_export::Recipe::from_file(path)?.options(path)?,
        None => st_export::ExportOptions::new(args.precision.unwrap_or_default()),
    };
    if let Some(p) = args.precision
        && args.recipe.is_some()
    {
        opts.precision = p;
    }
    if let Some(block) = args.block {
        opts.linear.int4.block = block;
    }
    if args.asymmetric {
        opts.linear.int4.symmetric = false;
    }
    if let Some(level) = args.accuracy_level {
        opts.linear.accuracy_level = level;
    }
    if let Some(op) = args.int4_op {
        opts.linear.int4_op = op;
    }
    if args.separate_mlp {
        opts.linear.fused_mlp = false;
    }
    opts.target = args.target;
    opts.attention = match (args.attention.as_deref(), args.target) {
        (Some("st"), st_export::Target::Cpu | st_export::Target::Cuda) => st_export::Attention::StGroupQuery,
        (Some("st"), t) => anyhow::bail!("--attention st runs on --target cpu or cuda (not {t:?}): use gqa"),
        (Some("gqa"), _) => st_export::Attention::GroupQuery,
        (Some("standard"), _) => st_export::Attention::Standard,
        (Some(other), _) => anyhow::bail!("--attention {other:?}: expected st, gqa or standard"),
        (None, st_export::Target::TensorRt) => st_export::Attention::Standard,
        (None, st_export::Target::Cpu) if opts.linear.int4_op == st_export::Int4Op::St => {
            st_export::Attention::StGroupQuery
        }
        (None, st_export::Target::Cuda) => st_export::Attention::StGroupQuery,
        (None, _) => st_export::Attention::GroupQuery,
    };
    if let Some(p) = args.lm_head {
        opts.linear.lm_head = p;
    }
    if let Some(p) = args.embed {
        opts.embed = p;
    }
    if let Some(p) = args.vision {
        opts.vision = p;
    }
    opts.lora = args.lora.clone();
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
