//! `st finetune --sft --model CHECKPOINT_DIR --data ROWS.jsonl --out RUN_DIR [options]`: LoRA
//! supervised fine-tuning on ground-truth completions (st-train, libtorch through tch), built
//! in with the `train` feature. Without `--sft`: GRPO, on rollouts sampled from the policy for
//! the rows of `--data`, or on completions given in a file (`--rollouts FILE`).

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct FinetuneArgs {
    /// Supervised fine-tuning on the rows' completions (built from their ground truth when absent).
    #[arg(long)]
    pub sft: bool,
    /// Hugging Face checkpoint directory (config.json + safetensors) to adapt.
    #[arg(long)]
    pub model: PathBuf,
    /// Training rows, STVQA JSON lines (what `st eval` reads and `st data synth` writes); SFT.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// GRPO on given completions: STVQA rows with `ground_truth` plus `completions` (G strings).
    #[arg(long)]
    pub rollouts: Option<PathBuf>,
    /// GRPO: prompts per optimizer step (each with its G completions).
    #[arg(long, default_value_t = 2)]
    pub prompts_per_step: usize,
    /// GRPO: optimizer steps on the same rollouts.
    #[arg(long, default_value_t = 1)]
    pub epochs_per_batch: usize,
    /// GRPO: coefficient of low_var_kl to the reference policy (the adapter switched off); 0 turns it off.
    #[arg(long, default_value_t = 1e-2)]
    pub kl_coef: f64,
    #[arg(long, default_value_t = 0.2)]
    pub clip_low: f64,
    #[arg(long, default_value_t = 0.3)]
    pub clip_high: f64,
    #[arg(long, default_value_t = 3.0)]
    pub dual_clip: f64,
    /// GRPO: token-mean, seq-mean-token-mean or seq-mean-token-sum-norm.
    #[arg(long, default_value = "token-mean")]
    pub loss_agg: String,
    /// GRPO: completions sampled per prompt (G) when they come from the policy.
    #[arg(long, default_value_t = 4)]
    pub group: usize,
    /// GRPO rollouts: sampling temperature (SpatialThinker: 1.0).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// GRPO rollouts: top-p (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// GRPO rollouts: new tokens at most per completion.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// GRPO rollouts constrained by the response grammar (always valid scene graphs); off by
    /// default, as in the paper.
    #[arg(long)]
    pub grammar: bool,
    /// GRPO: dense (SpatialThinker's reward with gating) or sparse (accuracy only).
    #[arg(long, default_value = "dense")]
    pub reward: String,
    /// Held-out rows: their loss is reported before, at each save and after training.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Run directory: adapter/, checkpoints/step-N/, metrics.jsonl, config.json, loss.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Peak learning rate (AdamW), reached after the warm-up, then cosine decay to 0 (default:
    /// 2e-4 for SFT, 2e-5 for GRPO).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f64,
    /// Gradient clipping: global L2 norm.
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// LoRA alpha (scale alpha / rank, or alpha / √rank with --rslora).
    #[arg(long, default_value_t = 32.0)]
    pub alpha: f64,
    #[arg(long, default_value_t = 0.05)]
    pub dropout: f64,
    #[arg(long)]
    pub rslora: bool,
    /// Comma-separated text linears to adapt.
    #[arg(long, default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Sequences per optimizer step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Sequences per forward/backward (gradients accumulate over batch / micro-batch).
    #[arg(long, default_value_t = 2)]
    pub micro_batch: usize,
    /// Keep only each decoder layer's input and recompute the layer in the backward pass.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Save a checkpoint every N optimizer steps (and at the end).
    #[arg(long, default_value_t = 50)]
    pub save_every: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Start from this PEFT adapter (e.g. an SFT run's `adapter/`) instead of a fresh one; its rank,
    /// alpha, dropout and targets replace --rank / --alpha / --dropout / --targets.
    #[arg(long)]
    pub init_adapter: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint (same settings required).
    #[arg(long)]
    pub resume: bool,
    /// Use at most N training rows.
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub pixels: super::PixelArgs,
    /// libonnxruntime.so.1.31.1 for the vision graph.
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
}

#[cfg(not(feature = "train"))]
pub fn run(_: FinetuneArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "st finetune needs the `train` feature: `make venv-train`, then LIBTORCH_USE_PYTORCH=1 cargo build --release --features train (see docs/TRAINING.md)"
    )
}

#[cfg(feature = "train")]
pub fn run(args: FinetuneArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use st_train::sft::{Hooks, SftConfig};
    if !args.sft {
        return grpo(args);
    }
    let data = args.data.clone().ok_or_else(|| anyhow::anyhow!("--sft needs --data ROWS.jsonl"))?;
    let device = st_train::parse_device(&args.device)?;
    let ckpt = st_checkpoint::Checkpoint::open(&args.model)?;
    let engine = engine_for(&args)?;
    let report = |what: &str, p: &crate::finetune::Prepared| {
        for s in &p.skipped {
            eprintln!("{what} line {} skipped: {}", s.line, s.reason);
        }
        eprintln!("{what}: {} rows used, {} skipped, {} images encoded", p.samples.len(), p.skipped.len(), p.images);
    };
    let train = crate::finetune::prepare(&engine, &data, args.limit).with_context(|| "--data")?;
    report("--data", &train);
    let eval = match &args.eval {
        Some(p) => {
            let e = crate::finetune::prepare(&engine, p, None).with_context(|| "--eval")?;
            report("--eval", &e);
            e.samples
        }
        None => Vec::new(),
    };
    let cfg = SftConfig {
        steps: args.steps,
        batch: args.batch,
        micro_batch: args.micro_batch.min(args.batch),
        warmup_steps: args.warmup,
        max_grad_norm: args.max_grad_norm,
        adamw: args.adamw(2e-4),
        lora: args.lora(),
        seed: args.seed,
        save_every: args.save_every,
        gradient_checkpointing: args.gradient_checkpointing,
        device: args.device.clone(),
        model: args.model.display().to_string(),
        data: data.display().to_string(),
    };
    let mut model = st_train::TextModel::load(&ckpt, &st_train::LoadOptions { device, kind: None })?;
    let run = st_train::run::RunDir::create(&args.out)?;
    let (bar, stop) = progress_and_stop("sft", cfg.steps);
    let hooks = Hooks { progress: Some(&bar), stop: Some(&stop) };
    let summary = st_train::sft::train(&mut model, &train.samples, &eval, &cfg, &run, args.resume, &hooks)?;
    bar.finish_and_clear();
    if summary.interrupted {
        interrupted(&run);
    }
    let fmt = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.4}"));
    println!(
        "steps {}  loss {:.4} → {:.4}  held-out loss {} → {}  {:.0} tokens/s  {:.1} s",
        summary.steps,
        summary.first_loss,
        summary.last_loss,
        fmt(summary.eval_loss_before),
        fmt(summary.eval_loss_after),
        summary.tokens_per_s,
        summary.seconds
    );
    let summary_json = serde_json::to_vec_pretty(&summary)?;
    super::write_then_rename(&run.path("summary.json"), &summary_json, "summary")?;
    println!("adapter: {}", run.path("adapter").display());
    println!("next: st export {} OUT_DIR --lora {}", args.model.display(), run.path("adapter").display());
    Ok(())
}

#[cfg(feature = "train")]
fn engine_for(args: &FinetuneArgs) -> anyhow::Result<crate::engine::Engine> {
    let opts = crate::engine::SessionOptions { ort_lib: args.ort_lib.clone(), ..Default::default() };
    let mut engine = crate::engine::Engine::open(&args.model, &opts)?;
    let b = &mut engine.preprocessor.options.pixels;
    b.min_pixels = args.pixels.min_pixels.unwrap_or(b.min_pixels);
    b.max_pixels = args.pixels.max_pixels.unwrap_or(b.max_pixels);
    Ok(engine)
}

/// GRPO: rollouts sampled from the policy (`--data`) or given in a file (`--rollouts`).
#[cfg(feature = "train")]
fn grpo(args: FinetuneArgs) -> anyhow::Result<()> {
    use st_train::grpo::{GrpoConfig, GrpoLossConfig, UpdateConfig};
    let sparse = match args.reward.as_str() {
        "dense" => false,
        "sparse" => true,
        other => anyhow::bail!("--reward {other:?}: expected dense or sparse"),
    };
    enum Source {
        File(crate::finetune::rollouts::RolloutFile),
        Policy(Box<crate::finetune::policy::PolicyRollouts>),
    }
    let (source, data, group, rollouts_cfg) = match (&args.rollouts, &args.data) {
        (Some(path), _) => {
            let file = crate::finetune::rollouts::RolloutFile::open(path)?;
            let g = file.group;
            let cfg =
                serde_json::json!({ "source": "file", "file": path.display().to_string(), "reward": args.reward });
            (Source::File(file), path.clone(), g, cfg)
        }
        (None, Some(path)) => {
            let rows = crate::finetune::policy::PolicyRollouts::rows_from(path)?;
            let base = path.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
            let p = crate::finetune::policy::PolicyRollouts {
                rows,
                base,
                group: args.group,
                prompts: args.prompts_per_step,
                max_new_tokens: args.max_new_tokens,
                temperature: args.temperature,
                top_p: args.top_p,
                grammar: args.grammar,
                sparse,
                seed: args.seed,
                cache: Default::default(),
            };
            let cfg = serde_json::json!({
                "source": "policy", "temperature": args.temperature, "top_p": args.top_p,
                "max_new_tokens": args.max_new_tokens, "grammar": args.grammar, "reward": args.reward,
            });
            (Source::Policy(Box::new(p)), path.clone(), args.group, cfg)
        }
        (None, None) => {
            anyhow::bail!("GRPO needs --data ROWS.jsonl (rollouts sampled from the policy) or --rollouts FILE")
        }
    };
    let device = st_train::parse_device(&args.device)?;
    let ckpt = st_checkpoint::Checkpoint::open(&args.model)?;
    let engine = engine_for(&args)?;
    let cfg = GrpoConfig {
        steps: args.steps,
        group,
        prompts_per_step: args.prompts_per_step,
        update: UpdateConfig {
            loss: GrpoLossConfig {
                clip_low: args.clip_low,
                clip_high: args.clip_high,
                dual_clip: args.dual_clip,
                kl_coef: args.kl_coef,
                loss_agg: args.loss_agg.parse()?,
            },
            epochs_per_batch: args.epochs_per_batch,
            micro_batch: args.micro_batch,
            max_grad_norm: args.max_grad_norm,
        },
        adamw: args.adamw(2e-5),
        warmup_steps: args.warmup,
        lora: args.lora(),
        seed: args.seed,
        save_every: args.save_every,
        device: args.device.clone(),
        model: args.model.display().to_string(),
        data: data.display().to_string(),
        rollouts: rollouts_cfg,
    };
    let mut model = st_train::TextModel::load(&ckpt, &st_train::LoadOptions { device, kind: None })?;
    let mut cfg = cfg;
    if let Some(dir) = &args.init_adapter {
        let adapter = st_checkpoint::LoraAdapter::open(dir)?;
        st_train::peft::load(&mut model, &adapter, &ckpt.config)?;
        if let Some(l) = model.lora_options() {
            cfg.lora = l.clone();
        }
        cfg.rollouts["init_adapter"] = serde_json::json!(dir.display().to_string());
    }
    let run = st_train::run::RunDir::create(&args.out)?;
    let (bar, stop) = progress_and_stop("grpo", cfg.steps);
    let hooks = st_train::sft::Hooks { progress: Some(&bar), stop: Some(&stop) };
    let mut cache = crate::finetune::samples::ImageCache::default();
    let prompts = cfg.prompts_per_step;
    let mut source = source;
    let mut next = |policy: &st_train::TextModel, step: usize| match &mut source {
        Source::File(file) => file.step(&engine, &mut cache, step, prompts, sparse),
        Source::Policy(p) => p.step(&engine, policy, step),
    };
    let summary = st_train::grpo::train(&mut model, &cfg, &run, args.resume, &hooks, &mut next)?;
    bar.finish_and_clear();
    if summary.interrupted {
        interrupted(&run);
    }
    println!(
        "steps {}  reward {:.4} → {:.4}  zero-spread groups {}  {:.1} s",
        summary.steps, summary.first_reward, summary.last_reward, summary.flat_groups, summary.seconds
    );
    super::write_then_rename(&run.path("summary.json"), &serde_json::to_vec_pretty(&summary)?, "summary")?;
    println!("adapter: {}", run.path("adapter").display());
    Ok(())
}

/// Ctrl-C stopped the run: say where it stands and exit 130 (no summary: the run is not finished).
#[cfg(feature = "train")]
fn interrupted(run: &st_train::run::RunDir) -> ! {
    eprintln!("interrupted: the last checkpoint is {}; continue with --resume", run.last_checkpoint_name());
    std::process::exit(130);
}

/// The progress bar of a run and the flag Ctrl-C sets (the trainer stops after the current step,
/// leaving the last checkpoint).
#[cfg(feature = "train")]
fn progress_and_stop(
    kind: &str,
    steps: usize,
) -> (indicatif::ProgressBar, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&stop);
    // The first Ctrl-C stops after the current step (which is then saved); a second one exits at
    // once (every save is a temp folder + rename, so the last checkpoint stays whole).
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, std::sync::atomic::Ordering::Relaxed) {
            eprintln!("\ninterrupted twice: exiting now; --resume continues from the last checkpoint");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing the current step and saving it (Ctrl-C again to exit at once)");
    });
    let bar = indicatif::ProgressBar::new(steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{kind} [{{bar:40}}] {{pos}}/{{len}} steps {{msg}} {{elapsed}} (eta {{eta}})"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    (bar, stop)
}

#[cfg(feature = "train")]
impl FinetuneArgs {
    /// AdamW settings from the flags; `default_lr` when `--lr` is not given.
    fn adamw(&self, default_lr: f64) -> st_train::optim::AdamWConfig {
        st_train::optim::AdamWConfig {
            lr: self.lr.unwrap_or(default_lr),
            beta1: self.beta1,
            beta2: self.beta2,
            eps: 1e-8,
            weight_decay: self.weight_decay,
        }
    }

    /// LoRA settings from the flags.
    fn lora(&self) -> st_train::LoraOptions {
        st_train::LoraOptions {
            rank: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
            rslora: self.rslora,
            targets: self.targets.clone(),
        }
    }
}
