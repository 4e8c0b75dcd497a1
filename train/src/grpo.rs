//! The GRPO objective (the first piece of `st finetune` without `--sft`): group advantages, the
//! token-level clipped surrogate with asymmetric clipping and dual clip, EasyR1's `low_var_kl`
//! to the reference policy, and the three loss aggregations. Pure functions over tensors, so
//! the same code serves rollouts sampled by the trainer and rollouts given in a file.
//!
//! Defaults are EasyR1's (what SpatialThinker ran): ε_low 0.2, ε_high 0.3, dual clip 3,
//! low_var_kl with coefficient 1e-2, token-mean aggregation.

use crate::error::{Error, Result};
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

/// Aggregate per-token values `[B, T]` under `mask` (f32 0/1) as `agg` says.
pub fn aggregate(values: &Tensor, mask: &Tensor, agg: LossAgg) -> Tensor {
    match agg {
        LossAgg::TokenMean => (values * mask).sum(Kind::Float) / mask.sum(Kind::Float).clamp_min(1.0),
        LossAgg::SeqMeanTokenMean => {
            let per = (values * mask).sum_dim_intlist(-1, false, Kind::Float)
                / mask.sum_dim_intlist(-1, false, Kind::Float).clamp_min(1.0);
            per.mean(Kind::Float)
        }
        LossAgg::SeqMeanTokenSumNorm => {
            let t = values.size()[1] as f64;
            ((values * mask).sum_dim_intlist(-1, false, Kind::Float) / t).mean(Kind::Float)
        }
    }
}

/// The GRPO loss over completion tokens. `logp`, `old_logp`, `ref_logp` `[B, T]` are the
/// log-probabilities of the sampled tokens under the current policy (with graph), the policy that
/// sampled them (recomputed by the training forward, detached) and the reference policy (the
/// adapter switched off; needed when `kl_coef` > 0); `advantages` `[B]`; `mask` `[B, T]` marks
/// completion tokens.
pub fn grpo_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    ref_logp: Option<&Tensor>,
    advantages: &Tensor,
    mask: &Tensor,
    cfg: &GrpoLossConfig,
) -> Result<LossParts> {
    let mask = mask.to_kind(Kind::Float);
    let adv = advantages.to_kind(Kind::Float).unsqueeze(-1);
    let ratio = (logp - old_logp).clamp(-20.0, 20.0).exp();
    let pg1 = -&adv * &ratio;
    let pg2 = -&adv * ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high);
    let clipped = pg1.maximum(&pg2);
    let clip_taken = pg2.gt_tensor(&pg1).to_kind(Kind::Float);
    let dual = (-&adv * cfg.dual_clip).expand_as(&clipped);
    let negative = adv.lt(0.0).expand_as(&clipped);
    let pg = clipped.minimum(&dual).f_where_self(&negative, &clipped)?;
    let pg_loss = aggregate(&pg, &mask, cfg.loss_agg);
    // The KL is measured whenever the reference log-probabilities are given (a metric even at
    // coefficient 0) and enters the loss only with a nonzero coefficient.
    let (loss, kl) = match ref_logp {
        Some(r) => {
            let k = (r - logp).clamp(-20.0, 20.0);
            let kld = (k.exp() - &k - 1.0).clamp(-10.0, 10.0);
            let kl = aggregate(&kld, &mask, cfg.loss_agg);
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
    let clip_frac = f64::try_from((&clip_taken * &mask).sum(Kind::Float) / mask.sum(Kind::Float).clamp_min(1.0))?;
    Ok(LossParts { pg_loss: f64::try_from(&pg_loss)?, loss, kl, clip_frac })
}
