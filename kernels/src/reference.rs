//! A float64 reference of both matmuls (dequantize every weight exactly, multiply in f64) and of the
//! grouped-query attention (from the formula). The oracle of the kernel tests and of `gpu-check`.

use crate::layout::{Fp8Scales, Fp8Weights, Int4Weights, fp8_to_f32};

/// A scale element type read as f64.
pub trait Scale: Copy {
    fn to_f64(self) -> f64;
}
impl Scale for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
}
impl Scale for half::f16 {
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
}
impl Scale for half::bf16 {
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
}

/// Weight `[n][k]` of int4 weights, dequantized in f64.
pub fn int4_weight<S: Scale>(w: &Int4Weights<'_, S>, n: usize, k: usize) -> f64 {
    let l = w.layout;
    let kb = l.k_blocks();
    let blk = k / l.block;
    let byte = w.b[n * kb * l.block / 2 + k / 2];
    let q = if k.is_multiple_of(2) { byte & 0xF } else { byte >> 4 };
    let z = match w.zero_points {
        Some(zp) => {
            let zb = zp[n * kb.div_ceil(2) + blk / 2];
            if blk.is_multiple_of(2) { zb & 0xF } else { zb >> 4 }
        }
        None => 8,
    };
    (q as f64 - z as f64) * w.scales[n * kb + blk].to_f64()
}

/// Weight `[n][k]` of fp8 weights, dequantized in f64.
pub fn fp8_weight<S: Scale>(w: &Fp8Weights<'_, S>, n: usize, k: usize) -> f64 {
    let l = w.layout;
    let s = match l.scales {
        Fp8Scales::PerChannel => w.scales[n],
        Fp8Scales::PerBlock(b) => w.scales[n * l.k.div_ceil(b) + k / b],
    };
    fp8_to_f32(w.w[n * l.k + k]) as f64 * s.to_f64()
}

/// `y[m, n] = Σ_k a[m, k] · weight(n, k)` in f64.
pub fn matmul(a: &[f64], m: usize, n: usize, k: usize, weight: impl Fn(usize, usize) -> f64) -> Vec<f64> {
    let mut y = vec![0.0; m * n];
    for j in 0..n {
        let row: Vec<f64> = (0..k).map(|kk| weight(j, kk)).collect();
        for i in 0..m {
            y[i * n + j] = a[i * k..(i + 1) * k].iter().zip(&row).map(|(x, w)| x * w).sum();
        }
    }
    y
}

/// Normalised mean squared error Σ(got − want)² / Σ want² (llama.cpp's test-backend-ops measure). NaN in
/// `got` gives NaN, which fails every `<=` bound.
pub fn nmse(got: impl IntoIterator<Item = f64>, want: &[f64]) -> f64 {
    let (mut err, mut norm) = (0.0, 0.0);
    let mut count = 0;
    for (g, w) in got.into_iter().zip(want) {
        err += (g - w) * (g - w);
        norm += w * w;
        count += 1;
    }
    if count != want.len() {
        return f64::NAN;
    }
    err / norm.max(f64::MIN_POSITIVE)
}

/// The NMSE bound of a kernel for activations of `dtype`, on the GEMM (`gemm`) or GEMV path.
///
/// Inputs are already in the kernel's types, so only the kernel's own error counts: fp32 accumulation
/// (≈ K·2⁻⁴⁸ in NMSE, negligible), the rounding of y to the activation type, and on the GEMM path the
/// rounding of each dequantized weight (and, for f32 activations, each activation) to the tensor-core
/// type. A rounding with unit roundoff u adds at most u²/3 to the NMSE (relative error uniform in ±u):
/// fp16 (u = 2⁻¹¹) 8e-8, bf16 (u = 2⁻⁸) 5e-6. The bounds allow two roundings and a factor 4: fp16 6e-7,
/// bf16 4e-5; f32 on the GEMV path rounds nothing but the accumulation: 1e-9. A wrong fragment index, a
/// missed block or an unwritten (NaN-poisoned) output gives NMSE ≈ 1 or NaN.
pub fn nmse_bound(dtype: crate::Dtype, gemm: bool) -> f64 {
    match (dtype, gemm) {
        (crate::Dtype::F16, _) => 6e-7,
        (crate::Dtype::Bf16, _) | (crate::Dtype::F32, true) => 4e-5,
        (crate::Dtype::F32, false) => 1e-9,
    }
}

/// Grouped-query attention from the formula in f64 (module doc of [`crate::cpu::attention`]): `x`'s
/// tokens rotated by the cos / sin rows their position ids pick and appended to the cache after `past`,
/// each query head's causal softmax of scale · q·k over its KV head's positions `0..=past + t`, times v.
/// Returns (output `[tokens][heads · hd]`, cache k, cache v). The caller gives valid lengths and ids.
pub fn gqa(
    shape: crate::cpu::GqaShape,
    x: &crate::cpu::GqaTokens<'_>,
    cache_k: &[f32],
    cache_v: &[f32],
    capacity: usize,
    past: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (h, kvh, hd) = (shape.heads, shape.kv_heads, shape.head_dim);
    let half = hd / 2;
    let rot = |row: &[f32], p: i64| -> Vec<f64> {
        let at = p as usize * half;
        let mut o = vec![0.0; hd];
        for i in 0..half {
            let (c, sn) = (x.cos[at + i] as f64, x.sin[at + i] as f64);
            let (a, b) = (row[i] as f64, row[i + half] as f64);
            o[i] = a * c - b * sn;
            o[i + half] = b * c + a * sn;
        }
        o
    };
    let mut ck: Vec<f64> = cache_k.iter().map(|&v| v as f64).collect();
    let mut cv: Vec<f64> = cache_v.iter().map(|&v| v as f64).collect();
    for t in 0..x.tokens {
        let (k, v) = (&x.k[t * x.kv_stride..], &x.v[t * x.kv_stride..]);
        for g in 0..kvh {
            let o = (g * capacity + past + t) * hd;
            ck[o..o + hd].copy_from_slice(&rot(&k[g * hd..(g + 1) * hd], x.positions[t]));
            for i in 0..hd {
                cv[o + i] = v[g * hd + i] as f64;
            }
        }
    }
    let scale = if shape.scale == 0.0 { 1.0 / (hd as f64).sqrt() } else { shape.scale as f64 };
    let mut out = vec![0.0; x.tokens * h * hd];
    for t in 0..x.tokens {
        let q_row = &x.q[t * x.q_stride..];
        for head in 0..h {
            let g = head / (h / kvh);
            let q = rot(&q_row[head * hd..(head + 1) * hd], x.positions[t]);
            let key = |p: usize| (g * capacity + p) * hd;
            let scores: Vec<f64> = (0..past + t + 1)
                .map(|p| scale * q.iter().zip(&ck[key(p)..key(p) + hd]).map(|(a, b)| a * b).sum::<f64>())
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (p, e) in e.iter().enumerate() {
                for i in 0..hd {
                    out[(t * h + head) * hd + i] += e / sum * cv[key(p) + i];
                }
            }
        }
    }
    (out, ck, cv)
}
