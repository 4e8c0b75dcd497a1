//! Block-wise round-to-nearest 4-bit quantization in ORT's `com.microsoft.MatMulNBits` layout.
//!
//! Per output row n and block b of `block` consecutive inputs (K padded with zeros to a whole
//! number of blocks):
//! - symmetric: the value of largest magnitude `v` maps to −8: scale = v / −8, zero point 8
//!   (MLAS' convention, so the full [−8, 7] range is used);
//! - asymmetric: range [min(w, 0), max(w, 0)]: scale = (max − min) / 15,
//!   zero point = clamp(round(−min / scale), 0, 15).
//!
//! Scales are rounded to f16 (SPEC §6) before quantizing, and kept as f32 numbers in graphs
//! with f32 activations. q = clamp(round_half_even(w / scale) + zp, 0, 15);
//! w' = (q − zp) · scale. Nibbles: element 2i in the low half of byte i, 2i+1 in the high half.

use half::f16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int4Scheme {
    pub block: usize,
    pub symmetric: bool,
}

impl Default for Int4Scheme {
    fn default() -> Self {
        Self { block: 32, symmetric: true }
    }
}

/// A quantized matrix in MatMulNBits' input layout.
#[derive(Debug, Clone)]
pub struct Int4Weight {
    pub n: usize,
    pub k: usize,
    pub block: usize,
    /// [N, k_blocks, block / 2]
    pub packed: Vec<u8>,
    /// [N · k_blocks], f16-representable
    pub scales: Vec<f32>,
    /// [N · ceil(k_blocks / 2)], two 4-bit zero points per byte; `None` when symmetric (zp 8).
    pub zero_points: Option<Vec<u8>>,
}

impl Int4Weight {
    pub fn k_blocks(&self) -> usize {
        self.k.div_ceil(self.block)
    }

    fn zero_point(&self, n: usize, b: usize) -> u8 {
        match &self.zero_points {
            None => 8,
            Some(z) => {
                let per_row = self.k_blocks().div_ceil(2);
                let byte = z[n * per_row + b / 2];
                if b % 2 == 0 { byte & 0x0F } else { byte >> 4 }
            }
        }
    }

    /// The weights the graph computes with, row-major [N, K].
    pub fn dequantize(&self) -> Vec<f32> {
        let kb = self.k_blocks();
        let mut out = vec![0f32; self.n * self.k];
        for n in 0..self.n {
            for b in 0..kb {
                let scale = self.scales[n * kb + b];
                let zp = self.zero_point(n, b) as f32;
                for j in 0..self.block {
                    let k = b * self.block + j;
                    if k >= self.k {
                        break;
                    }
                    let byte = self.packed[(n * kb + b) * (self.block / 2) + j / 2];
                    let q = if j % 2 == 0 { byte & 0x0F } else { byte >> 4 };
                    out[n * self.k + k] = (q as f32 - zp) * scale;
                }
            }
        }
        out
    }
}

fn f16_round(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Quantize a row-major [n, k] matrix.
pub fn quantize(w: &[f32], n: usize, k: usize, scheme: Int4Scheme) -> Int4Weight {
    let block = scheme.block;
    let kb = k.div_ceil(block);
    let mut packed = vec![0u8; n * kb * block / 2];
    let mut scales = vec![0f32; n * kb];
    let zp_row = kb.div_ceil(2);
    let mut zps = vec![0u8; n * zp_row];
    for row in 0..n {
        for b in 0..kb {
            let lo = b * block;
            let vals = &w[row * k + lo..row * k + (lo + block).min(k)];
            let (scale, zp) = if scheme.symmetric {
                let v = vals.iter().copied().fold(0f32, |m, x| if x.abs() > m.abs() { x } else { m });
                (f16_round(v / -8.0), 8u8)
            } else {
                let min = vals.iter().copied().fold(0f32, f32::min);
                let max = vals.iter().copied().fold(0f32, f32::max);
                let scale = f16_round((max - min) / 15.0);
                let zp = if scale == 0.0 { 8.0 } else { (-min / scale).round_ties_even().clamp(0.0, 15.0) };
                (scale, zp as u8)
            };
            scales[row * kb + b] = scale;
            let byte = &mut zps[row * zp_row + b / 2];
            *byte |= if b % 2 == 0 { zp } else { zp << 4 };
            for j in 0..block {
                let x = vals.get(j).copied().unwrap_or(0.0);
                let q =
                    if scale == 0.0 { zp as f32 } else { ((x / scale).round_ties_even() + zp as f32).clamp(0.0, 15.0) };
                let q = q as u8;
                let idx = (row * kb + b) * (block / 2) + j / 2;
                packed[idx] |= if j % 2 == 0 { q } else { q << 4 };
            }
        }
    }
    Int4Weight { n, k, block, packed, scales, zero_points: (!scheme.symmetric).then_some(zps) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_within_half_a_step() {
        let (n, k) = (5, 77); // K not a multiple of any block
        let w: Vec<f32> =
            (0..n * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 3) as f32)).collect();
        for block in [32, 64, 128] {
            for symmetric in [true, false] {
                let q = quantize(&w, n, k, Int4Scheme { block, symmetric });
                let d = q.dequantize();
                for row in 0..n {
                    for kk in 0..k {
                        let scale = q.scales[row * q.k_blocks() + kk / block].abs();
                        let err = (d[row * k + kk] - w[row * k + kk]).abs();
                        assert!(
                            err <= scale * 0.5 + 1e-6 || err <= scale * 1.0 + 1e-6 && symmetric,
                            "block {block} sym {symmetric}: err {err} scale {scale}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn symmetric_maps_the_largest_magnitude_to_minus_eight() {
        let w = [0.5f32, -2.0, 1.0, 0.25];
        let q = quantize(&w, 1, 4, Int4Scheme { block: 32, symmetric: true });
        assert_eq!(q.scales[0], 0.25);
        assert_eq!(q.packed[0] & 0x0F, 10); // 0.5 / 0.25 + 8
        assert_eq!(q.packed[0] >> 4, 0); // −2.0 → −8 + 8
        assert_eq!(q.dequantize(), w.to_vec());
    }
}
