//! M-RoPE in tch: the positions come from `st::rope` ([3, batch, seq]: t, h, w); the rotary
//! slots of each head are taken from the three axes by `mrope_section` (HF
//! `apply_multimodal_rotary_pos_emb`), computed in f32 as the reference does.

use tch::{Device, Kind, Tensor};

#[derive(Debug)]
pub struct Rotary {
    /// [head_dim / 2], f32.
    inv_freq: Tensor,
    /// Head-dim slot → axis, `[head_dim]` i64 (both halves).
    axis_of: Vec<i64>,
    head_dim: i64,
}

/// cos and sin for one forward, [batch, 1, seq, head_dim] in the activations' kind.
#[derive(Debug)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl Rotary {
    pub fn new(head_dim: usize, theta: f64, mrope_section: &[usize], device: Device) -> Self {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half).map(|j| 1.0f32 / (theta as f32).powf((2 * j) as f32 / head_dim as f32)).collect();
        let axis_half: Vec<i64> =
            mrope_section.iter().enumerate().flat_map(|(a, &n)| std::iter::repeat_n(a as i64, n)).collect();
        let axis_of = axis_half.iter().chain(axis_half.iter()).copied().collect();
        Self { inv_freq: Tensor::from_slice(&inv).to_device(device), axis_of, head_dim: head_dim as i64 }
    }

    /// Tables for positions `[3, batch, seq]` (i64).
    pub fn tables(&self, positions: &Tensor, kind: Kind) -> RopeTables {
        let device = self.inv_freq.device();
        let pos = positions.to_device(device).to_kind(Kind::Float); // [3, B, S]
        let freqs = pos.unsqueeze(-1) * self.inv_freq.view([1, 1, 1, -1]); // [3, B, S, D/2]
        let emb = Tensor::cat(&[&freqs, &freqs], -1); // [3, B, S, D]
        // Slot j takes axis axis_of[j]: gather over the first dim.
        let (b, s) = (emb.size()[1], emb.size()[2]);
        let idx = Tensor::from_slice(&self.axis_of)
            .to_device(device)
            .view([1, 1, 1, self.head_dim])
            .expand([1, b, s, self.head_dim], false);
        let picked = emb.gather(0, &idx, false).squeeze_dim(0); // [B, S, D]
        RopeTables { cos: picked.cos().to_kind(kind).unsqueeze(1), sin: picked.sin().to_kind(kind).unsqueeze(1) }
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[&(-x2), &x1], -1)
}

/// x·cos + rotate_half(x)·sin for x [batch, heads, seq, head_dim].
pub fn apply(x: &Tensor, t: &RopeTables) -> Tensor {
    x * &t.cos + rotate_half(x) * &t.sin
}
