//! Sampling stages over a logits row. Each stage masks (sets to −∞) or rescales logits in place;
//! `accept` tells every stage the token that was chosen. Semantics follow transformers' logits
//! processors exactly (checked against them in tests/sampling.rs).

use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One stage of the chain.
pub trait Stage: Send {
    fn name(&self) -> &'static str;
    /// Transform `logits` given every token so far (prompt then generated).
    fn apply(&mut self, logits: &mut [f32], history: &[u32]) -> Result<()>;
    /// The token chosen after this stage ran (or forced).
    fn accept(&mut self, _token: u32) -> Result<()> {
        Ok(())
    }
    /// Tokens this stage forces next (appended without sampling, in one decoder pass).
    fn forced(&mut self) -> Result<Vec<u32>> {
        Ok(Vec::new())
    }
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: every token already in the history (prompt
/// included) has its logit divided by `penalty` when positive, multiplied when negative.
pub struct RepetitionPenalty(pub f32);

impl Stage for RepetitionPenalty {
    fn name(&self) -> &'static str {
        "repetition_penalty"
    }
    fn apply(&mut self, logits: &mut [f32], history: &[u32]) -> Result<()> {
        let mut seen = vec![false; logits.len()];
        for &t in history {
            if let Some(s) = seen.get_mut(t as usize) {
                *s = true;
            }
        }
        for (l, _) in logits.iter_mut().zip(&seen).filter(|(_, s)| **s) {
            *l = if *l < 0.0 { *l * self.0 } else { *l / self.0 };
        }
        Ok(())
    }
}

/// Divide logits by the temperature.
pub struct Temperature(pub f32);

impl Stage for Temperature {
    fn name(&self) -> &'static str {
        "temperature"
    }
    fn apply(&mut self, logits: &mut [f32], _: &[u32]) -> Result<()> {
        logits.iter_mut().for_each(|l| *l /= self.0);
        Ok(())
    }
}

/// Keep the `k` largest logits (and any tied with the k-th), as transformers' `TopKLogitsWarper`.
pub struct TopK(pub usize);

impl Stage for TopK {
    fn name(&self) -> &'static str {
        "top_k"
    }
    fn apply(&mut self, logits: &mut [f32], _: &[u32]) -> Result<()> {
        let k = self.0.min(logits.len());
        if k == 0 || k == logits.len() {
            return Ok(());
        }
        let mut sorted = logits.to_vec();
        sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let kth = sorted[k - 1];
        logits.iter_mut().filter(|l| **l < kth).for_each(|l| *l = f32::NEG_INFINITY);
        Ok(())
    }
}

/// Nucleus sampling as transformers' `TopPLogitsWarper`: sort ascending, drop the tokens whose
/// cumulative probability is ≤ 1 − p, always keeping the most likely one.
pub struct TopP(pub f32);

impl Stage for TopP {
    fn name(&self) -> &'static str {
        "top_p"
    }
    fn apply(&mut self, logits: &mut [f32], _: &[u32]) -> Result<()> {
        if self.0 >= 1.0 {
            return Ok(());
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        // Ascending; a stable sort keeps equal logits in index order as torch.sort does on CPU.
        order.sort_by(|&a, &b| logits[a].total_cmp(&logits[b]));
        let probs = softmax(logits);
        let mut cum = 0.0f32;
        let last = order.len().saturating_sub(1);
        for (rank, &i) in order.iter().enumerate() {
            cum += probs[i];
            if cum <= 1.0 - self.0 && rank < last {
                logits[i] = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }
}

/// Softmax of a row in f32 (−∞ → 0).
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// How the final token is taken from the processed logits.
pub enum Pick {
    /// The largest logit (the first on ties, like `torch.argmax`).
    Greedy,
    /// A draw from the softmax, reproducible for a seed.
    Random(Box<ChaCha8Rng>),
}

/// Generation settings of the sampling chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// `None` or 0: greedy.
    pub temperature: Option<f32>,
    /// 0: off.
    pub top_k: usize,
    /// 1: off.
    pub top_p: f32,
    /// 1: off.
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: None, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    fn check(&self) -> Result<()> {
        let bad = |name, reason: &str| Err(Error::InvalidArgument { name, reason: reason.into() });
        if let Some(t) = self.temperature
            && !(t.is_finite() && t >= 0.0)
        {
            return bad("temperature", "must be a finite number ≥ 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty", "must be a finite number > 0");
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature.is_none_or(|t| t == 0.0)
    }
}

/// The chain: stages in order, then the pick.
pub struct Sampler {
    stages: Vec<Box<dyn Stage>>,
    pick: Pick,
}

impl Sampler {
    /// The chain for `params`: repetition penalty, then (when sampling) temperature, top-k,
    /// top-p and a seeded draw; greedy otherwise.
    pub fn new(params: &SamplingParams) -> Result<Self> {
        params.check()?;
        let mut stages: Vec<Box<dyn Stage>> = Vec::new();
        if params.repetition_penalty != 1.0 {
            stages.push(Box::new(RepetitionPenalty(params.repetition_penalty)));
        }
        let pick = if params.is_greedy() {
            Pick::Greedy
        } else {
            stages.push(Box::new(Temperature(params.temperature.unwrap_or(1.0))));
            if params.top_k > 0 {
                stages.push(Box::new(TopK(params.top_k)));
            }
            if params.top_p < 1.0 {
                stages.push(Box::new(TopP(params.top_p)));
            }
            Pick::Random(Box::new(ChaCha8Rng::seed_from_u64(params.seed)))
        };
        Ok(Self { stages, pick })
    }

    /// Put `stage` first (a grammar mask runs before any rescaling).
    pub fn push_front(&mut self, stage: Box<dyn Stage>) {
        self.stages.insert(0, stage);
    }

    pub fn stage_names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    /// Run every stage over `logits` in place (what the pick then draws from).
    pub fn process(&mut self, logits: &mut [f32], history: &[u32]) -> Result<()> {
        for s in &mut self.stages {
            s.apply(logits, history)?;
        }
        Ok(())
    }

    /// Process `logits` and choose a token; the caller then calls [`Sampler::accept`].
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32> {
        self.process(logits, history)?;
        let none = || Error::InvalidArgument { name: "logits", reason: "every token was masked out".into() };
        let best = logits.iter().enumerate().fold(None, |b: Option<(usize, f32)>, (i, &v)| match b {
            Some((_, bv)) if v <= bv => b,
            _ if v == f32::NEG_INFINITY || v.is_nan() => b,
            _ => Some((i, v)),
        });
        let (argmax, _) = best.ok_or_else(none)?;
        let id = match &mut self.pick {
            Pick::Greedy => argmax,
            Pick::Random(rng) => {
                let probs = softmax(logits);
                let total: f64 = probs.iter().map(|&p| f64::from(p)).sum();
                let mut u = rng.random::<f64>() * total;
                let mut chosen = argmax;
                for (i, &p) in probs.iter().enumerate() {
                    if p > 0.0 {
                        chosen = i;
                        u -= f64::from(p);
                        if u < 0.0 {
                            break;
                        }
                    }
                }
                chosen
            }
        };
        Ok(id as u32)
    }

    /// Tokens a stage forces next (the first stage that forces any).
    pub fn forced(&mut self) -> Result<Vec<u32>> {
        for s in &mut self.stages {
            let f = s.forced()?;
            if !f.is_empty() {
                return Ok(f);
            }
        }
        Ok(Vec::new())
    }

    /// Tell every stage which token was chosen (or forced).
    pub fn accept(&mut self, token: u32) -> Result<()> {
        self.stages.iter_mut().try_for_each(|s| s.accept(token))
    }
}
