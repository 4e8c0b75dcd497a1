//! AdamW over the LoRA tensors with state we own (so a checkpoint can hold it and `--resume` is
//! bit-identical), in torch.optim.AdamW's exact order of operations; global-norm gradient
//! clipping as `clip_grad_norm_`; linear warm-up then cosine decay.

use crate::error::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 2e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// First and second moments of every parameter, in the parameters' order.
#[derive(Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: i64,
    pub exp_avg: Vec<Tensor>,
    pub exp_avg_sq: Vec<Tensor>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, params: &[&Tensor]) -> Self {
        let zeros = |p: &&Tensor| p.zeros_like().set_requires_grad(false);
        Self {
            config,
            step: 0,
            exp_avg: params.iter().map(zeros).collect(),
            exp_avg_sq: params.iter().map(zeros).collect(),
        }
    }

    /// One update with learning rate `lr` (the schedule's value for this step).
    pub fn step(&mut self, params: &[&Tensor], lr: f64) {
        self.step += 1;
        let c = &self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        tch::no_grad(|| {
            for (i, p) in params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                let _ = p.f_mul_scalar_(1.0 - lr * c.weight_decay);
                let m = &mut self.exp_avg[i];
                let _ = m.f_lerp_(&g, 1.0 - c.beta1);
                let v = &mut self.exp_avg_sq[i];
                let _ = v.f_mul_scalar_(c.beta2);
                let _ = v.f_add_(&(&g * (1.0 - c.beta2) * &g));
                let denom = v.sqrt() / bc2.sqrt() + c.eps;
                let _ = p.f_add_(&((&*m / denom) * -(lr / bc1)));
            }
        });
    }
}

/// Zero (undefine) every gradient.
pub fn zero_grad(params: &[&Tensor]) {
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.f_detach_();
            let _ = g.f_zero_();
        }
    }
}

/// Global L2 norm of the gradients (before clipping); scales them by max_norm / (norm + 1e-6)
/// when that is below 1, as torch's `clip_grad_norm_`.
pub fn clip_grad_norm(params: &[&Tensor], max_norm: f64) -> Result<f64> {
    let mut total = 0.0f64;
    for p in params {
        let g = p.grad();
        if g.defined() {
            total += f64::try_from(g.to_kind(Kind::Double).pow_tensor_scalar(2).sum(Kind::Double))?;
        }
    }
    let norm = total.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if max_norm > 0.0 && coef < 1.0 {
        tch::no_grad(|| {
            for p in params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.f_mul_scalar_(coef);
                }
            }
        });
    }
    Ok(norm)
}

/// Learning rate of optimizer step `step` (0-based) of `total`: linear warm-up over `warmup`
/// steps reaching `lr` at step `warmup − 1`, then cosine decay towards 0 at `total`.
pub fn lr_at(lr: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}
