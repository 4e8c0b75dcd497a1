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
