//! A linear layer whose LoRA adapter is a property of the layer, not a second model:
//! y = x·Wᵀ + b + s·B(A·dropout(x)), W and b frozen, A [r, in] and B [out, r] trainable f32.

use tch::{Kind, Tensor};

/// LoRA settings of one model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraOptions {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// α / √r instead of α / r.
    pub rslora: bool,
    /// PEFT short names among `st_checkpoint::adapter::TEXT_LINEARS`.
    pub targets: Vec<String>,
}

impl Default for LoraOptions {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            dropout: 0.05,
            rslora: false,
            targets: st_checkpoint::adapter::TEXT_LINEARS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl LoraOptions {
    pub fn scale(&self) -> f64 {
        if self.rslora { self.alpha / (self.rank as f64).sqrt() } else { self.alpha / self.rank as f64 }
    }
}

/// The adapter of one linear.
#[derive(Debug)]
pub struct Lora {
    /// [r, in], f32, requires grad.
    pub a: Tensor,
    /// [out, r], f32, requires grad.
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f64,
}

#[derive(Debug)]
pub struct Linear {
    /// HF name of the module, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    /// [out, in], frozen, in the base kind (f32 on CPU, bf16 on CUDA).
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
}

/// Whether the adapters are applied and whether dropout is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub adapter: bool,
    pub train: bool,
}

impl Linear {
    pub fn in_features(&self) -> i64 {
        self.weight.size()[1]
    }
    pub fn out_features(&self) -> i64 {
        self.weight.size()[0]
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        let y = x.linear(&self.weight, self.bias.as_ref());
        match (&self.lora, mode.adapter) {
            (Some(l), true) => {
                // The adapter path in f32 (as PEFT casts x to lora_A's dtype), back to x's kind.
                let xin = x.to_kind(Kind::Float);
                let xin = if mode.train && l.dropout > 0.0 { xin.dropout(l.dropout, true) } else { xin };
                let delta = xin.linear::<Tensor>(&l.a, None).linear::<Tensor>(&l.b, None) * l.scale;
                y + delta.to_kind(x.kind())
            }
            _ => y,
        }
    }

    /// W + s·B·A in f32 (what `st export --lora` writes), or W when there is no adapter.
    pub fn merged_weight(&self) -> Tensor {
        let w = self.weight.to_kind(Kind::Float);
        match &self.lora {
            Some(l) => tch::no_grad(|| w + l.b.matmul(&l.a) * l.scale),
            None => w,
        }
    }
}
