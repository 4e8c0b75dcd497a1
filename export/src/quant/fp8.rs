//! FP8 E4M3FN weights with one f32 scale per output channel: scale = max|w[n, :]| / 448 (the
//! largest finite E4M3FN value), q = e4m3fn(w / scale) rounded to nearest even (the `float8`
//! crate's conversion, checked against PyTorch's through the goldens), w' = q · scale.
//! In graphs: `DequantizeLinear(q, scale, axis = 0)` (opset 21) feeding the matmul.

use float8::F8E4M3;

/// Largest finite E4M3FN value.
pub const E4M3_MAX: f32 = 448.0;

#[derive(Debug, Clone)]
pub struct Fp8Weight {
    pub n: usize,
    pub k: usize,
    /// [N, K] E4M3FN bit patterns.
    pub data: Vec<u8>,
    /// [N]
    pub scales: Vec<f32>,
}

impl Fp8Weight {
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.data.len());
        for (row, chunk) in self.data.chunks(self.k).enumerate() {
            let s = self.scales[row];
            out.extend(chunk.iter().map(|&b| F8E4M3::from_bits(b).to_f32() * s));
        }
        out
    }
}

/// Quantize a row-major [n, k] matrix per output channel.
pub fn quantize_per_channel(w: &[f32], n: usize, k: usize) -> Fp8Weight {
    let mut data = Vec::with_capacity(n * k);
    let mut scales = Vec::with_capacity(n);
    for row in w.chunks(k).take(n) {
        let amax = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = if amax > 0.0 { amax / E4M3_MAX } else { 1.0 };
        scales.push(scale);
        data.extend(row.iter().map(|&x| F8E4M3::from_f32(x / scale).to_bits()));
    }
    Fp8Weight { n, k, data, scales }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_within_e4m3_precision() {
        let (n, k) = (3, 50);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1 + i % 4) as f32).collect();
        let q = quantize_per_channel(&w, n, k);
        for (i, (&a, b)) in w.iter().zip(q.dequantize()).enumerate() {
            // 3 mantissa bits: relative spacing 2^-3, half of it for rounding; subnormals below 2^-6.
            let tol = a.abs() * 0.0625 + q.scales[i / k] * 2f32.powi(-9);
            assert!((a - b).abs() <= tol, "{a} → {b}");
        }
        // The largest magnitude of each row lands exactly on ±448·scale.
        let amax = w[..k].iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = q.dequantize();
        assert!(d[..k].iter().any(|v| (v.abs() - amax).abs() <= amax * 1e-6));
    }
}
