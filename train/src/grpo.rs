//! The GRPO objective (the first piece of `st finetune` without `--sft`): group advantages, the
//! token-level clipped surrogate with asymmetric clipping and dual clip, EasyR1's `low_var_kl`
//! to the reference policy, and the three loss aggregations. Pure functions over tensors, so
//! the same code serves rollouts sampled by the trainer and rollouts given in a file.
//!
//! Defaults are EasyR1's (what SpatialThinker ran): ε_low 0.2, ε_high 0.3, dual clip 3,
//! low_var_kl with coefficient 1e-2, token-mean aggregation.

use crate::error::{Error, Result};
use crate::model::TextModel;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How per-token losses become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossAgg {
    /// Masked mean over every completion token of the batch.
    TokenMean,
    /// Mean over sequences of each sequence's token mean.
    SeqMeanTokenMean,
    /// Mean over sequences of each sequence's token sum divided by the padded length (Dr. GRPO).
    SeqMeanTokenSumNorm,
}

impl std::str::FromStr for LossAgg {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "token-mean" => Ok(Self::TokenMean),
            "seq-mean-token-mean" => Ok(Self::SeqMeanTokenMean),
            "seq-mean-token-sum-norm" => Ok(Self::SeqMeanTokenSumNorm),
            _ => Err(Error::InvalidArgument {
                name: "--loss-agg",
                reason: format!("{s:?}: expected token-mean, seq-mean-token-mean or seq-mean-token-sum-norm"),
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpoLossConfig {
    pub clip_low: f64,
    pub clip_high: f64,
    /// For negative advantages the loss is at most `dual_clip · (−A)`.
    pub dual_clip: f64,
    /// Coefficient of `low_var_kl`; 0 turns the KL term (and the reference pass) off.
    pub kl_coef: f64,
    pub loss_agg: LossAgg,
}

impl Default for GrpoLossConfig {
    fn default() -> Self {
        Self { clip_low: 0.2, clip_high: 0.3, dual_clip: 3.0, kl_coef: 1e-2, loss_agg: LossAgg::TokenMean }
    }
}

/// Group-relative advantages: A = (r − mean) / (std + 1e-6) over each group of `group`
/// consecutive rewards, std with Bessel's correction (as EasyR1 and TRL). Returns the
/// advantages and how many groups had zero spread (their advantages are 0: they teach nothing).
pub fn group_advantages(rewards: &[f64], group: usize) -> Result<(Vec<f64>, usize)> {
    if group < 2 {
        return Err(Error::InvalidArgument {
            name: "--group",
            reason: format!(
                "{group}: GRPO needs at least 2 completions per prompt (the advantage is relative to the group)"
            ),
        });
    }
    if !rewards.len().is_multiple_of(group) {
        return Err(Error::InvalidArgument {
            name: "rewards",
            reason: format!("{} rewards do not split into groups of {group}", rewards.len()),
        });
    }
    let mut out = Vec::with_capacity(rewards.len());
    let mut flat = 0;
    for g in rewards.chunks(group) {
        let n = g.len() as f64;
        let mean = g.iter().sum::<f64>() / n;
        let var = g.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0);
        if var == 0.0 {
            flat += 1;
        }
        let std = var.sqrt();
        out.extend(g.iter().map(|r| (r - mean) / (std + 1e-6)));
    }
    Ok((out, flat))
}

/// The loss and what the metrics report about it.
#[derive(Debug)]
pub struct LossParts {
    /// Scalar to back-propagate: aggregated (pg + kl_coef · kl).
    pub loss: Tensor,
    pub pg_loss: f64,
    pub kl: f64,
    /// Fraction of completion tokens where the clipped branch was taken.
    pub clip_frac: f64,
}

/// The denominators of an aggregation over a whole batch, so that micro-batches summed give
/// exactly the batch's value: completion tokens, sequences, and the longest completion (Dr.
/// GRPO's normaliser).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Norm {
    pub tokens: f64,
    pub seqs: f64,
    pub max_len: f64,
}

impl Norm {
    /// The denominators of one batch given as a whole (`mask` [B, T]).
    pub fn of(mask: &Tensor) -> Result<Self> {
        let per = mask.to_kind(Kind::Float).sum_dim_intlist(-1, false, Kind::Float);
        Ok(Self {
            tokens: f64::try_from(per.sum(Kind::Float))?.max(1.0),
            seqs: mask.size()[0].max(1) as f64,
            max_len: mask.size()[1] as f64,
        })
    }
}

/// Aggregate per-token values `[B, T]` under `mask` (f32 0/1) as `agg` says, normalised by `norm`.
pub fn aggregate(values: &Tensor, mask: &Tensor, agg: LossAgg, norm: &Norm) -> Tensor {
    match agg {
        LossAgg::TokenMean => (values * mask).sum(Kind::Float) / norm.tokens,
        LossAgg::SeqMeanTokenMean => {
            let per = (values * mask).sum_dim_intlist(-1, false, Kind::Float)
                / mask.sum_dim_intlist(-1, false, Kind::Float).clamp_min(1.0);
            per.sum(Kind::Float) / norm.seqs
        }
        LossAgg::SeqMeanTokenSumNorm => {
            ((values * mask).sum_dim_intlist(-1, false, Kind::Float) / norm.max_len).sum(Kind::Float) / norm.seqs
        }
    }
}

/// The GRPO loss over completion tokens. `logp`, `old_logp`, `ref_logp` `[B, T]` are the
/// log-probabilities of the sampled tokens under the current policy (with graph), the policy that
/// sampled them (recomputed by the training forward, detached) and the reference policy (the
/// adapter switched off; needed when `kl_coef` > 0); `advantages` `[B]`; `mask` `[B, T]` marks
/// completion tokens. `norm`: the whole batch's denominators when this is one micro-batch of it
/// (None: this is the whole batch).
pub fn grpo_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    ref_logp: Option<&Tensor>,
    advantages: &Tensor,
    mask: &Tensor,
    cfg: &GrpoLossConfig,
    norm: Option<&Norm>,
) -> Result<LossParts> {
    let mask = mask.to_kind(Kind::Float);
    let norm = match norm {
        Some(n) => *n,
        None => Norm::of(&mask)?,
    };
    let adv = advantages.to_kind(Kind::Float).unsqueeze(-1);
    let ratio = (logp - old_logp).clamp(-20.0, 20.0).exp();
    let pg1 = -&adv * &ratio;
    let pg2 = -&adv * ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high);
    let clipped = pg1.maximum(&pg2);
    let clip_taken = pg2.gt_tensor(&pg1).to_kind(Kind::Float);
    let dual = (-&adv * cfg.dual_clip).expand_as(&clipped);
    let negative = adv.lt(0.0).expand_as(&clipped);
    let pg = clipped.minimum(&dual).f_where_self(&negative, &clipped)?;
    let pg_loss = aggregate(&pg, &mask, cfg.loss_agg, &norm);
    // The KL is measured whenever the reference log-probabilities are given (a metric even at
    // coefficient 0) and enters the loss only with a nonzero coefficient.
    let (loss, kl) = match ref_logp {
        Some(r) => {
            let k = (r - logp).clamp(-20.0, 20.0);
            let kld = (k.exp() - &k - 1.0).clamp(-10.0, 10.0);
            let kl = aggregate(&kld, &mask, cfg.loss_agg, &norm);
            let value = f64::try_from(&kl)?;
            let loss = if cfg.kl_coef > 0.0 { &pg_loss + kl * cfg.kl_coef } else { pg_loss.shallow_clone() };
            (loss, value)
        }
        None if cfg.kl_coef > 0.0 => {
            return Err(Error::InvalidArgument {
                name: "--kl-coef",
                reason: "a nonzero KL coefficient needs the reference policy's log-probabilities".into(),
            });
        }
        None => (pg_loss.shallow_clone(), 0.0),
    };
    // Summed over micro-batches this is the batch's fraction of clipped tokens.
    let clip_frac = f64::try_from((&clip_taken * &mask).sum(Kind::Float))? / norm.tokens;
    Ok(LossParts { pg_loss: f64::try_from(&pg_loss)?, loss, kl, clip_frac })
}

/// One completion to learn from: its prompt + completion tokens as an [`SftSample`] (labels on the
/// completion tokens, the end-of-turn token included) and its group advantage.
#[derive(Debug)]
pub struct GrpoSequence {
    pub sample: crate::sft::SftSample,
    pub advantage: f64,
}

/// Settings of one GRPO update over a batch of rollouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfig {
    pub loss: GrpoLossConfig,
    /// Optimizer steps on the same rollouts (the old log-probs stay those of before the first).
    pub epochs_per_batch: usize,
    pub micro_batch: usize,
    pub max_grad_norm: f64,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self { loss: GrpoLossConfig::default(), epochs_per_batch: 1, micro_batch: 4, max_grad_norm: 1.0 }
    }
}

/// What one inner update measured (before its optimizer step).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateStats {
    pub loss: f64,
    pub pg_loss: f64,
    pub kl: f64,
    pub clip_frac: f64,
    pub grad_norm: f64,
}

/// Log-probabilities `[B, S]` of each micro-batch's labels, without a graph; with `adapter` off for
/// the reference policy.
fn logprobs_no_grad(model: &TextModel, chunks: &[Vec<&crate::sft::SftSample>], adapter: bool) -> Result<Vec<Tensor>> {
    let was = model.adapter_enabled();
    model.set_adapter_enabled(adapter);
    let out = chunks
        .iter()
        .map(|c| {
            let (batch, labels) = crate::sft::collate(c, model.image_token_id);
            tch::no_grad(|| model.hidden(&batch, None).and_then(|h| model.token_logprobs(&h, &labels)))
        })
        .collect();
    model.set_adapter_enabled(was);
    out
}

/// GRPO update(s) on `seqs`: old log-probs recomputed by the training forward before the first
/// update (so the ratio is exact), reference log-probs with the adapter off (when the KL is used),
/// then `epochs_per_batch` optimizer steps, each accumulating the loss over micro-batches with the
/// whole batch's denominators, clipping, and one AdamW step at `lr`. Dropout is off.
pub fn update(
    model: &TextModel,
    opt: &mut crate::optim::AdamW,
    seqs: &[GrpoSequence],
    cfg: &UpdateConfig,
    lr: f64,
) -> Result<Vec<UpdateStats>> {
    if seqs.is_empty() {
        return Err(Error::InvalidArgument { name: "rollouts", reason: "no sequences to learn from".into() });
    }
    model.set_training(false);
    let mb = cfg.micro_batch.max(1);
    let chunks: Vec<Vec<&crate::sft::SftSample>> =
        seqs.chunks(mb).map(|c| c.iter().map(|s| &s.sample).collect()).collect();
    let advs: Vec<Tensor> = seqs
        .chunks(mb)
        .map(|c| Tensor::from_slice(&c.iter().map(|s| s.advantage as f32).collect::<Vec<_>>()).to_device(model.device))
        .collect();
    let lengths: Vec<usize> = seqs.iter().map(|s| s.sample.target_tokens()).collect();
    let norm = Norm {
        tokens: lengths.iter().sum::<usize>().max(1) as f64,
        seqs: seqs.len() as f64,
        max_len: lengths.iter().copied().max().unwrap_or(1).max(1) as f64,
    };
    let old = logprobs_no_grad(model, &chunks, true)?;
    let reference = if cfg.loss.kl_coef > 0.0 { Some(logprobs_no_grad(model, &chunks, false)?) } else { None };
    let params: Vec<Tensor> = model.lora_parameters().into_iter().map(|(_, t)| t.shallow_clone()).collect();
    let params: Vec<&Tensor> = params.iter().collect();
    let mut stats = Vec::with_capacity(cfg.epochs_per_batch);
    for _ in 0..cfg.epochs_per_batch.max(1) {
        crate::optim::zero_grad(&params);
        let (mut loss, mut pg, mut kl, mut clip) = (0.0, 0.0, 0.0, 0.0);
        for (i, chunk) in chunks.iter().enumerate() {
            let (batch, labels) = crate::sft::collate(chunk, model.image_token_id);
            let h = model.hidden(&batch, None)?;
            let logp = model.token_logprobs(&h, &labels)?;
            let mask = labels.to_device(model.device).ne(-100).to_kind(Kind::Float);
            let r = reference.as_ref().map(|r| &r[i]);
            let parts = grpo_loss(&logp, &old[i], r, &advs[i], &mask, &cfg.loss, Some(&norm))?;
            loss += f64::try_from(&parts.loss)?;
            pg += parts.pg_loss;
            kl += parts.kl;
            clip += parts.clip_frac;
            parts.loss.f_backward()?;
        }
        if !loss.is_finite() {
            return Err(Error::NonFiniteLoss {
                step: stats.len() + 1,
                value: loss,
                last_checkpoint: "see the run directory".into(),
            });
        }
        let grad_norm = crate::optim::clip_grad_norm(&params, cfg.max_grad_norm)?;
        opt.step(&params, lr);
        stats.push(UpdateStats { loss, pg_loss: pg, kl, clip_frac: clip, grad_norm });
    }
    Ok(stats)
}

/// One scored completion of a prompt, ready to learn from.
#[derive(Debug)]
pub struct Rollout {
    pub sample: crate::sft::SftSample,
    pub text: String,
    /// Dense (or sparse) reward; 0 when scoring failed (then `error` says why).
    pub reward: f64,
    /// The reward's format, count, accuracy and spatial components.
    pub components: [f64; 4],
    /// Whether the completion is a valid response (every syntactic and semantic rule; the
    /// runtime's validator).
    pub valid: bool,
    pub error: Option<String>,
}

/// Every GRPO setting; written to the run's config.json, and a resume must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpoConfig {
    pub steps: usize,
    /// Completions per prompt (G).
    pub group: usize,
    pub prompts_per_step: usize,
    pub update: UpdateConfig,
    pub adamw: crate::optim::AdamWConfig,
    pub warmup_steps: usize,
    pub lora: crate::model::LoraOptions,
    pub seed: u64,
    pub save_every: usize,
    pub device: String,
    pub model: String,
    pub data: String,
    /// Where rollouts come from and how they are scored (sampling settings, reward, rollouts file).
    pub rollouts: serde_json::Value,
}

/// What a GRPO run reports at its end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrpoSummary {
    /// Optimizer steps done (all of them unless interrupted).
    pub steps: usize,
    /// Stopped by the hooks (Ctrl-C) before the last step; the last checkpoint holds the steps done.
    pub interrupted: bool,
    pub first_reward: f64,
    pub last_reward: f64,
    pub flat_groups: usize,
    pub seconds: f64,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt())
}

/// GRPO with LoRA: per step, `rollouts(policy, step)` gives `prompts_per_step · group` scored completions
/// (prompt by prompt, deterministic in `step` so a resume sees the same ones); group advantages;
/// [`update`]; metrics, samples and checkpoints in `run` (step 0's adapter is saved before the
/// first update).
pub fn train(
    model: &mut TextModel,
    cfg: &GrpoConfig,
    run: &crate::run::RunDir,
    resume: bool,
    hooks: &crate::sft::Hooks<'_>,
    rollouts: &mut dyn FnMut(&TextModel, usize) -> Result<Vec<Rollout>>,
) -> Result<GrpoSummary> {
    if cfg.group < 2 {
        group_advantages(&[0.0], cfg.group)?;
    }
    if cfg.steps == 0 || cfg.prompts_per_step == 0 || cfg.save_every == 0 {
        return Err(Error::InvalidArgument {
            name: "--steps",
            reason: "steps, prompts per step and --save-every must be at least 1".into(),
        });
    }
    let config_json = serde_json::to_value(cfg)
        .map_err(|e| Error::File { path: run.path(crate::run::CONFIG), reason: e.to_string() })?;
    if model.lora_options().is_none() {
        model.add_lora(&cfg.lora, cfg.seed as i64)?;
    }
    let (start, mut opt) = crate::run::start_or_resume(model, run, &config_json, resume, &cfg.adamw)?;
    let state_at = |step: usize, flat: usize| crate::run::TrainerState {
        step,
        config: config_json.clone(),
        data_position: step * cfg.prompts_per_step,
        seed: cfg.seed,
        extra: serde_json::json!({ "flat_groups": flat }),
    };
    // A resumed run counts the zero-spread groups of the steps before its checkpoint too.
    let mut flat_total = match start {
        0 => 0,
        _ => run.latest_checkpoint()?.and_then(|(_, s)| s.extra["flat_groups"].as_u64()).unwrap_or(0) as usize,
    };
    if start == 0 {
        run.save_checkpoint(model, Some(&opt), &state_at(0, 0), &cfg.model)?;
    }
    let t0 = std::time::Instant::now();
    let (mut first, mut last) = (f64::NAN, f64::NAN);
    let mut rewards_seen: Vec<f64> = Vec::new();
    let (mut finished, mut saved) = (start, start);
    hooks.begin(cfg.steps, start);
    for step in start..cfg.steps {
        if hooks.stopped() {
            break;
        }
        let tr = std::time::Instant::now();
        let batch = rollouts(model, step)?;
        let rollout_seconds = tr.elapsed().as_secs_f64();
        if batch.len() != cfg.prompts_per_step * cfg.group {
            return Err(Error::InvalidArgument {
                name: "rollouts",
                reason: format!(
                    "step {}: {} completions, expected {} prompts × {}",
                    step + 1,
                    batch.len(),
                    cfg.prompts_per_step,
                    cfg.group
                ),
            });
        }
        let rewards: Vec<f64> = batch.iter().map(|r| r.reward).collect();
        let (adv, flat) = group_advantages(&rewards, cfg.group)?;
        flat_total += flat;
        rewards_seen.extend_from_slice(&rewards);
        let samples_lines: Vec<serde_json::Value> = batch
            .iter()
            .enumerate()
            // The first prompt's group (up to 4), and every completion whose reward failed.
            .filter(|(i, r)| *i < cfg.group.min(4) || r.error.is_some())
            .map(|(_, r)| r)
            .map(|r| serde_json::json!({ "step": step + 1, "reward": r.reward, "format": r.components[0], "count": r.components[1], "accuracy": r.components[2], "spatial": r.components[3], "valid": r.valid, "completion": r.text, "error": r.error }))
            .collect();
        let comp = |i: usize| batch.iter().map(|r| r.components[i]).sum::<f64>() / batch.len() as f64;
        let (format, count, accuracy, spatial) = (comp(0), comp(1), comp(2), comp(3));
        let length = batch.iter().map(|r| r.sample.target_tokens() as f64).sum::<f64>() / batch.len() as f64;
        let errors = batch.iter().filter(|r| r.error.is_some()).count();
        let valid_rate = batch.iter().filter(|r| r.valid).count() as f64 / batch.len() as f64;
        let seqs: Vec<GrpoSequence> =
            batch.into_iter().zip(&adv).map(|(r, &advantage)| GrpoSequence { sample: r.sample, advantage }).collect();
        let lr = crate::optim::lr_at(cfg.adamw.lr, step, cfg.warmup_steps, cfg.steps);
        let tt = std::time::Instant::now();
        let stats = update(model, &mut opt, &seqs, &cfg.update, lr)?;
        let s = stats.last().cloned().unwrap_or(UpdateStats {
            loss: 0.0,
            pg_loss: 0.0,
            kl: 0.0,
            clip_frac: 0.0,
            grad_norm: 0.0,
        });
        let (reward_mean, reward_std) = mean_std(&rewards);
        if step == start {
            first = reward_mean;
        }
        last = reward_mean;
        let done = step + 1;
        let line = serde_json::json!({
            "step": done, "loss": s.loss, "pg_loss": s.pg_loss, "kl": s.kl, "clip_frac": s.clip_frac,
            "grad_norm": s.grad_norm, "reward_mean": reward_mean, "reward_std": reward_std, "format": format,
            "count": count, "accuracy": accuracy, "spatial": spatial, "completion_length": length,
            "zero_spread_groups": flat, "reward_errors": errors, "valid_rate": valid_rate, "lr": lr, "inner_updates": stats.len(),
            "rollout_seconds": rollout_seconds, "train_seconds": tt.elapsed().as_secs_f64(),
        });
        if !s.loss.is_finite() {
            return Err(Error::NonFiniteLoss {
                step: done,
                value: s.loss,
                last_checkpoint: run.last_checkpoint_name(),
            });
        }
        for l in &samples_lines {
            append_line(&run.path(crate::run::SAMPLES), l)?;
        }
        if done % cfg.save_every == 0 || done == cfg.steps {
            run.save_checkpoint(model, Some(&opt), &state_at(done, flat_total), &cfg.model)?;
            saved = done;
        }
        run.append_metrics(&line)?;
        finished = done;
        hooks.step(done, format!("reward {reward_mean:.3}"));
    }
    let interrupted = finished < cfg.steps;
    if interrupted && finished > saved {
        // Stopped between checkpoints: keep the finished steps (a resume continues from here).
        run.save_checkpoint(model, Some(&opt), &state_at(finished, flat_total), &cfg.model)?;
    }
    if rewards_seen.len() > 1 && rewards_seen.iter().all(|&r| r == rewards_seen[0]) {
        tracing_warn(&format!(
            "every reward of the run was {}: GRPO learned nothing (check the reward and the rows)",
            rewards_seen[0]
        ));
    }
    let metrics = run.read_metrics()?;
    crate::plot::curve(&run.path("reward.png"), "GRPO reward", &metrics, &["reward_mean", "accuracy", "format"])?;
    Ok(GrpoSummary {
        steps: finished,
        interrupted,
        first_reward: first,
        last_reward: last,
        flat_groups: flat_total,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn tracing_warn(msg: &str) {
    eprintln!("warning: {msg}");
}

fn append_line(path: &std::path::Path, v: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(Error::io(path))?;
    writeln!(f, "{v}").and_then(|_| f.flush()).map_err(Error::io(path))
}
