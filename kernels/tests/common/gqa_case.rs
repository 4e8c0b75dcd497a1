//! A random grouped-query attention call for the attention tests (CPU kernel, GPU kernel in the host
//! emulation): packed q/k/v rows, cos/sin tables of `2 · tokens + 1` rows looked up at random position ids
//! (as the exporter's per-call tables are), and a cache of `past + tokens + 3` positions of random values
//! (so positions the call must not touch are recognisable).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use st_kernels::cpu::{GqaShape, GqaTokens};

/// Max |error| against the float64 reference: outputs of magnitude ≲ 1 from f32 dot products of ≤ 256
/// products and an f32 softmax (relative error ~1e-7 a step, ≲ 1e-6 worst case).
pub const BOUND: f64 = 2e-6;

pub struct Case {
    pub shape: GqaShape,
    pub tokens: usize,
    pub past: usize,
    pub capacity: usize,
    /// `[tokens][(heads + 2 kv) · hd]` packed.
    pub qkv: Vec<f32>,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub positions: Vec<i64>,
    pub cache_k: Vec<f32>,
    pub cache_v: Vec<f32>,
}

impl Case {
    pub fn new(seed: u64, heads: usize, kv: usize, hd: usize, tokens: usize, past: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let capacity = past + tokens + 3;
        let width = (heads + 2 * kv) * hd;
        let rows = 2 * tokens + 1;
        let angle: Vec<f32> = (0..rows * hd / 2).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        Case {
            shape: GqaShape { heads, kv_heads: kv, head_dim: hd, scale: 0.0 },
            tokens,
            past,
            capacity,
            qkv: (0..tokens * width).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
            cos: angle.iter().map(|a| a.cos()).collect(),
            sin: angle.iter().map(|a| a.sin()).collect(),
            positions: (0..tokens).map(|_| rng.random_range(0..rows as i64)).collect(),
            cache_k: (0..kv * capacity * hd).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
            cache_v: (0..kv * capacity * hd).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
        }
    }

    pub fn width(&self) -> usize {
        (self.shape.heads + 2 * self.shape.kv_heads) * self.shape.head_dim
    }

    pub fn out_len(&self) -> usize {
        self.tokens * self.shape.heads * self.shape.head_dim
    }

    /// The call's rows, packed.
    pub fn tokens(&self) -> GqaTokens<'_> {
        let s = self.shape;
        let (qw, kw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
        GqaTokens {
            tokens: self.tokens,
            q: &self.qkv,
            q_stride: self.width(),
            k: &self.qkv[qw..],
            v: &self.qkv[qw + kw..],
            kv_stride: self.width(),
            cos: &self.cos,
            sin: &self.sin,
            positions: &self.positions,
        }
    }

    /// The float64 reference (`st_kernels::reference::gqa`): (output, cache k, cache v).
    pub fn reference(&self) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        st_kernels::reference::gqa(self.shape, &self.tokens(), &self.cache_k, &self.cache_v, self.capacity, self.past)
    }

    /// Panics unless every cache position outside `past..past + tokens` kept its bytes.
    pub fn assert_untouched(&self, what: &str, k: &[f32], v: &[f32]) {
        let hd = self.shape.head_dim;
        for g in 0..self.shape.kv_heads {
            for p in (0..self.past).chain(self.past + self.tokens..self.capacity) {
                let r = (g * self.capacity + p) * hd..(g * self.capacity + p + 1) * hd;
                assert_eq!(k[r.clone()], self.cache_k[r.clone()], "{what}: k position {p} changed");
                assert_eq!(v[r.clone()], self.cache_v[r], "{what}: v position {p} changed");
            }
        }
    }
}

pub fn max_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max)
}
