//! Supervised LoRA fine-tuning on ground-truth completions: cross-entropy on the completion
//! tokens only (the end-of-turn token included), token-mean over each optimizer step's batch
//! (exact under gradient accumulation over micro-batches), AdamW with warm-up + cosine, global
//! gradient clipping, optional per-layer gradient checkpointing, checkpoints that resume
//! bit-identically (data order, dropout masks and the LoRA init all derive from the seed).

use crate::error::{Error, Result};
use crate::model::{Batch, LoraOptions, TextModel};
use crate::optim::{self, AdamWConfig};
use crate::run::{RunDir, TrainerState};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{Kind, Tensor};

/// One training sequence: prompt + completion token ids, their M-RoPE positions (`[3][S]`,
/// axis-major, from `st::rope`), the label of each position (the next token where it belongs to
/// the completion, else -100), and the image embeddings of its `<|image_pad|>` tokens.
#[derive(Debug)]
pub struct SftSample {
    pub ids: Vec<i64>,
    pub positions: [Vec<i64>; 3],
    pub labels: Vec<i64>,
    /// `[image tokens, hidden]`, f32 on the CPU (shared between samples of one image).
    pub image_embeds: Option<Tensor>,
}

impl SftSample {
    /// Labels for `prompt_len` prompt tokens followed by the completion in `ids`.
    pub fn completion_labels(ids: &[i64], prompt_len: usize) -> Vec<i64> {
        (0..ids.len())
            .map(|i| if i + 1 >= prompt_len.max(1) && i + 1 < ids.len() { ids[i + 1] } else { -100 })
            .collect()
    }
    pub fn target_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != -100).count()
    }
}

/// Every SFT setting; written to the run's config.json, and a resume must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    pub steps: usize,
    /// Sequences per optimizer step.
    pub batch: usize,
    /// Sequences per forward/backward (gradient accumulation over batch / micro_batch).
    pub micro_batch: usize,
    pub warmup_steps: usize,
    pub max_grad_norm: f64,
    pub adamw: AdamWConfig,
    pub lora: LoraOptions,
    pub seed: u64,
    pub save_every: usize,
    pub gradient_checkpointing: bool,
    pub device: String,
    pub model: String,
    pub data: String,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            steps: 100,
            batch: 8,
            micro_batch: 2,
            warmup_steps: 10,
            max_grad_norm: 1.0,
            adamw: AdamWConfig { lr: 2e-4, weight_decay: 0.0, ..Default::default() },
            lora: LoraOptions::default(),
            seed: 0,
            save_every: 50,
            gradient_checkpointing: false,
            device: "cpu".into(),
            model: String::new(),
            data: String::new(),
        }
    }
}

impl SftConfig {
    pub fn check(&self) -> Result<()> {
        let bad = |name: &'static str, reason: &str| Err(Error::InvalidArgument { name, reason: reason.into() });
        if self.steps == 0 {
            return bad("--steps", "must be at least 1");
        }
        if self.batch == 0 || self.micro_batch == 0 {
            return bad("--batch", "batch and micro-batch must be at least 1");
        }
        if !(self.adamw.lr.is_finite() && self.adamw.lr > 0.0) {
            return bad("--lr", "must be a positive number");
        }
        if self.save_every == 0 {
            return bad("--save-every", "must be at least 1");
        }
        Ok(())
    }
}

/// The `n` sample indices starting at stream position `pos` of the data stream: the rows in a
/// seeded shuffle per epoch, epoch after epoch.
pub fn stream_indices(len: usize, seed: u64, pos: usize, n: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(n);
    let mut epoch = usize::MAX;
    let mut order: Vec<usize> = Vec::new();
    for p in pos..pos + n {
        let e = p / len;
        if e != epoch {
            epoch = e;
            order = (0..len).collect();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (e as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            order.shuffle(&mut rng);
        }
        out.push(order[p % len]);
    }
    out
}

/// Stack samples into a right-padded batch (pads: token 0 or 1, whichever is not the image
/// token; positions continuing; label -100, so they add nothing to the loss and, being after
/// the real tokens, are never attended to under the causal mask).
pub fn collate(samples: &[&SftSample], image_token: i64) -> (Batch, Tensor) {
    let s = samples.iter().map(|x| x.ids.len()).max().unwrap_or(0);
    let pad = if image_token == 0 { 1 } else { 0 };
    let b = samples.len();
    let mut ids = Vec::with_capacity(b * s);
    let mut labels = Vec::with_capacity(b * s);
    let mut pos = [Vec::with_capacity(b * s), Vec::with_capacity(b * s), Vec::with_capacity(b * s)];
    let mut images = Vec::new();
    for x in samples {
        let n = x.ids.len();
        ids.extend_from_slice(&x.ids);
        ids.extend(std::iter::repeat_n(pad, s - n));
        labels.extend_from_slice(&x.labels);
        labels.extend(std::iter::repeat_n(-100, s - n));
        for (axis, src) in pos.iter_mut().zip(&x.positions) {
            let last = src.last().copied().unwrap_or(-1);
            axis.extend_from_slice(src);
            axis.extend((1..=(s - n) as i64).map(|k| last + k));
        }
        if let Some(e) = &x.image_embeds {
            images.push(e.shallow_clone());
        }
    }
    let (b, s) = (b as i64, s as i64);
    let positions: Vec<i64> = pos.concat();
    let batch = Batch {
        input_ids: Tensor::from_slice(&ids).view([b, s]),
        positions: Tensor::from_slice(&positions).view([3, b, s]),
        image_embeds: if images.is_empty() { None } else { Some(Tensor::cat(&images, 0)) },
    };
    (batch, Tensor::from_slice(&labels).view([b, s]))
}

/// Mean cross-entropy per completion token over `samples`, adapter on, no dropout, no graph.
pub fn eval_loss(model: &TextModel, samples: &[SftSample]) -> Result<f64> {
    let was = model.adapter_enabled();
    model.set_training(false);
    let (mut sum, mut n) = (0.0, 0i64);
    for x in samples {
        let (batch, labels) = collate(&[x], model.image_token_id);
        let (loss, count) = tch::no_grad(|| -> Result<(f64, i64)> {
            let h = model.hidden(&batch, None)?;
            let (l, c) = model.token_loss(&h, &labels)?;
            Ok((f64::try_from(&l)?, c))
        })?;
        sum += loss;
        n += count;
    }
    model.set_adapter_enabled(was);
    Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
}

/// What a run reports at its end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SftSummary {
    /// Optimizer steps done (all of them unless interrupted).
    pub steps: usize,
    /// Stopped by the hooks (Ctrl-C) before the last step; the last checkpoint holds the steps done.
    pub interrupted: bool,
    pub first_loss: f64,
    pub last_loss: f64,
    pub eval_loss_before: Option<f64>,
    pub eval_loss_after: Option<f64>,
    pub tokens_per_s: f64,
    pub seconds: f64,
}

/// Optional hooks for the caller: a progress bar and a way to stop cleanly (Ctrl-C).
pub struct Hooks<'a> {
    pub progress: Option<&'a indicatif::ProgressBar>,
    pub stop: Option<&'a std::sync::atomic::AtomicBool>,
}

impl Hooks<'_> {
    /// A run of `steps` begins at `start`.
    pub fn begin(&self, steps: usize, start: usize) {
        if let Some(p) = self.progress {
            p.set_length(steps as u64);
            p.set_position(start as u64);
        }
    }
    /// Whether the caller asked to stop.
    pub fn stopped(&self) -> bool {
        self.stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
    }
    /// Step `done` finished.
    pub fn step(&self, done: usize, message: String) {
        if let Some(p) = self.progress {
            p.set_position(done as u64);
            p.set_message(message);
        }
    }
}

/// Train `model` (LoRA added from the config unless it already has an adapter) on `train`,
/// writing into `run`; `resume` continues from the last checkpoint there.
pub fn train(
    model: &mut TextModel,
    train: &[SftSample],
    eval: &[SftSample],
    cfg: &SftConfig,
    run: &RunDir,
    resume: bool,
    hooks: &Hooks<'_>,
) -> Result<SftSummary> {
    cfg.check()?;
    if train.is_empty() {
        return Err(Error::InvalidArgument { name: "--data", reason: "no usable training rows".into() });
    }
    let config_json =
        serde_json::to_value(cfg).map_err(|e| Error::File { path: run.path("config.json"), reason: e.to_string() })?;
    if model.lora_options().is_none() {
        model.add_lora(&cfg.lora, cfg.seed as i64)?;
    }
    let (start, mut opt) = crate::run::start_or_resume(model, run, &config_json, resume, &cfg.adamw)?;
    let params: Vec<Tensor> = model.lora_parameters().into_iter().map(|(_, t)| t.shallow_clone()).collect();
    let params: Vec<&Tensor> = params.iter().collect();
    let base = cfg.model.clone();
    let state_at = |step: usize| TrainerState {
        step,
        config: config_json.clone(),
        data_position: step * cfg.batch,
        seed: cfg.seed,
        extra: serde_json::Value::Null,
    };
    let eval_before = if eval.is_empty() { None } else { Some(eval_loss(model, eval)?) };
    if start == 0 {
        run.save_checkpoint(model, Some(&opt), &state_at(0), &base)?;
    }
    let t0 = Instant::now();
    let (mut first_loss, mut last_loss, mut tokens_total) = (f64::NAN, f64::NAN, 0usize);
    let (mut finished, mut saved) = (start, start);
    hooks.begin(cfg.steps, start);
    for step in start..cfg.steps {
        if hooks.stopped() {
            break;
        }
        let ts = Instant::now();
        let lr = optim::lr_at(cfg.adamw.lr, step, cfg.warmup_steps, cfg.steps);
        optim::zero_grad(&params);
        model.set_training(true);
        let idx = stream_indices(train.len(), cfg.seed, step * cfg.batch, cfg.batch);
        let picked: Vec<&SftSample> = idx.iter().map(|&i| &train[i]).collect();
        let tokens: usize = picked.iter().map(|x| x.target_tokens()).sum();
        let mut loss_sum = 0.0;
        for (m, chunk) in picked.chunks(cfg.micro_batch).enumerate() {
            let (batch, labels) = collate(chunk, model.image_token_id);
            model.set_dropout_seed(Some(dropout_seed(cfg.seed, step, m)));
            let (l, _) =
                model.forward_backward(&batch, &labels, 1.0 / tokens.max(1) as f64, cfg.gradient_checkpointing)?;
            loss_sum += l;
        }
        model.set_dropout_seed(None);
        model.set_training(false);
        let loss = loss_sum / tokens.max(1) as f64;
        if !loss.is_finite() {
            return Err(Error::NonFiniteLoss {
                step: step + 1,
                value: loss,
                last_checkpoint: run.last_checkpoint_name(),
            });
        }
        let grad_norm = optim::clip_grad_norm(&params, cfg.max_grad_norm)?;
        if !grad_norm.is_finite() {
            return Err(Error::NonFiniteLoss {
                step: step + 1,
                value: grad_norm,
                last_checkpoint: run.last_checkpoint_name(),
            });
        }
        opt.step(&params, lr);
        if step == start {
            first_loss = loss;
        }
        last_loss = loss;
        tokens_total += tokens;
        let done = step + 1;
        let mut line = serde_json::json!({
            "step": done, "loss": loss, "grad_norm": grad_norm, "lr": lr, "tokens": tokens,
            "seconds": ts.elapsed().as_secs_f64(),
        });
        if done % cfg.save_every == 0 || done == cfg.steps {
            if !eval.is_empty() {
                line["eval_loss"] = serde_json::json!(eval_loss(model, eval)?);
            }
            run.save_checkpoint(model, Some(&opt), &state_at(done), &base)?;
            saved = done;
        }
        run.append_metrics(&line)?;
        finished = done;
        hooks.step(done, format!("loss {loss:.4}"));
    }
    let interrupted = finished < cfg.steps;
    if interrupted && finished > saved {
        // Stopped between checkpoints: keep the finished steps (a resume continues from here).
        run.save_checkpoint(model, Some(&opt), &state_at(finished), &base)?;
    }
    let eval_after = if eval.is_empty() || interrupted { None } else { Some(eval_loss(model, eval)?) };
    let seconds = t0.elapsed().as_secs_f64();
    let metrics = run.read_metrics()?;
    crate::plot::curve(&run.path("loss.png"), "SFT loss", &metrics, &["loss", "eval_loss"])?;
    Ok(SftSummary {
        steps: finished,
        interrupted,
        first_loss,
        last_loss,
        eval_loss_before: eval_before,
        eval_loss_after: eval_after,
        tokens_per_s: tokens_total as f64 / seconds.max(1e-9),
        seconds,
    })
}

fn dropout_seed(seed: u64, step: usize, micro: usize) -> i64 {
    let x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ((step as u64) << 20) ^ (micro as u64) << 8;
    (x >> 1) as i64 & 0x0fff_ffff_ffff
}

/// Replace the model's LoRA tensors by the adapter's values in place (same shapes: the resume
/// check guarantees the same rank and targets).
pub fn copy_adapter(model: &TextModel, adapter: &st_checkpoint::LoraAdapter) -> Result<()> {
    tch::no_grad(|| {
        for (name, p) in model.lora_parameters() {
            let (module, which) = name.rsplit_once('.').unwrap_or((&name, ""));
            let pair = adapter.modules.get(module).ok_or_else(|| Error::Adapter {
                name: format!("{module}.{which}.weight"),
                reason: "missing from the checkpoint's adapter".into(),
            })?;
            let (values, shape) = if which == "lora_A" { (&pair.a, pair.a_shape) } else { (&pair.b, pair.b_shape) };
            let src = Tensor::from_slice(values).view([shape[0] as i64, shape[1] as i64]).to_kind(Kind::Float);
            if src.size() != p.size() {
                return Err(Error::Adapter {
                    name: format!("{module}.{which}.weight"),
                    reason: format!("shape {:?}, the model's is {:?}", src.size(), p.size()),
                });
            }
            let mut p = p.shallow_clone();
            p.copy_(&src.to_device(p.device()));
        }
        Ok(())
    })
}

/// Where a finished SFT run's adapter lives.
pub fn adapter_dir(run: &Path) -> std::path::PathBuf {
    run.join(crate::run::ADAPTER)
}
