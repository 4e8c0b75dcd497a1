//! Block-wise round-to-nearest 4- and 8-bit quantization in ORT's `com.microsoft.MatMulNBits`
//! layout (int4 for the decoder's linears, int8 for lm_head).
//!
//! With m = 2^(bits−1) and qmax = 2^bits − 1, per output row n and block b of `block`
//! consecutive inputs (K padded with zeros to a whole number of blocks):
//! - symmetric: the value of largest magnitude `v` maps to −m: scale = v / −m, zero point m
//!   (MLAS' convention, so the full [−m, m − 1] range is used);
//! - asymmetric: range [min(w, 0), max(w, 0)]: scale = (max − min) / qmax,
//!   zero point = clamp(round(−min / scale), 0, qmax).
//!
//! Scales are rounded to f16 (docs/FORMATS.md#precisions) before quantizing, and kept as f32 numbers in graphs
//! with f32 activations. q = clamp(round_half_even(w / scale) + zp, 0, qmax);
//! w' = (q − zp) · scale. 4 bits: element 2i in the low nibble of byte i, 2i+1 in the high one;
//! zero points likewise two per byte. 8 bits: one value (and one zero point) per byte.

use half::f16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NBitsScheme {
    pub bits: u32,
    pub block: usize,
    pub symmetric: bool,
}

impl Default for NBitsScheme {
    /// int4, block 128, symmetric: the export's default. Block 128 reads fewer scale bytes than llama.cpp
    /// Q4_0, and MLAS's blklen-128 int8 kernels are 1.5× its blklen-32 ones at prefill on the 7B
    /// (docs/PERFORMANCE.md); each block's rounding error is in docs/PARITY.md. Block 32 keeps Q4_0's.
    fn default() -> Self {
        Self { bits: 4, block: 128, symmetric: true }
    }
}

impl NBitsScheme {
    fn per_byte(&self) -> usize {
        (8 / self.bits) as usize
    }
}

/// A quantized matrix in MatMulNBits' input layout.
#[derive(Debug, Clone)]
pub struct NBitsWeight {
    pub n: usize,
    pub k: usize,
    pub scheme: NBitsScheme,
    /// [N, k_blocks, block · bits / 8]
    pub packed: Vec<u8>,
    /// [N · k_blocks], f16-representable
    pub scales: Vec<f32>,
    /// [N · ceil(k_blocks · bits / 8)]; `None` when symmetric (zero point 2^(bits−1)).
    pub zero_points: Option<Vec<u8>>,
}

/// Value `i` of a packed byte run.
fn unpack(bytes: &[u8], i: usize, bits: u32) -> u8 {
    if bits == 8 {
        bytes[i]
    } else {
        let byte = bytes[i / 2];
        if i.is_multiple_of(2) { byte & 0x0F } else { byte >> 4 }
    }
}

fn pack(bytes: &mut [u8], i: usize, v: u8, bits: u32) {
    if bits == 8 {
        bytes[i] = v;
    } else {
        bytes[i / 2] |= if i.is_multiple_of(2) { v } else { v << 4 };
    }
}

impl NBitsWeight {
    pub fn k_blocks(&self) -> usize {
        self.k.div_ceil(self.scheme.block)
    }

    /// Bytes per block of packed values.
    pub fn blob_size(&self) -> usize {
        self.scheme.block / self.scheme.per_byte()
    }

    fn zero_point(&self, n: usize, b: usize) -> u8 {
        match &self.zero_points {
            None => 1 << (self.scheme.bits - 1),
            Some(z) => {
                let per_row = self.k_blocks().div_ceil(self.scheme.per_byte());
                unpack(&z[n * per_row..(n + 1) * per_row], b, self.scheme.bits)
            }
        }
    }

    /// The weights the graph computes with, row-major [N, K].
    pub fn dequantize(&self) -> Vec<f32> {
        let (kb, blob, block) = (self.k_blocks(), self.blob_size(), self.scheme.block);
        let mut out = vec![0f32; self.n * self.k];
        for n in 0..self.n {
            for b in 0..kb {
                let scale = self.scales[n * kb + b];
                let zp = self.zero_point(n, b) as f32;
                let bytes = &self.packed[(n * kb + b) * blob..(n * kb + b + 1) * blob];
                for j in 0..block {
                    let k = b * block + j;
                    if k >= self.k {
                        break;
                    }
                    let q = unpack(bytes, j, self.scheme.bits);
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

/// Quantize a row-major [n, k] matrix (bits 4 or 8).
pub fn quantize(w: &[f32], n: usize, k: usize, scheme: NBitsScheme) -> NBitsWeight {
    let (block, bits) = (scheme.block, scheme.bits);
    let per_byte = scheme.per_byte();
    let (mid, qmax) = ((1u32 << (bits - 1)) as f32, ((1u32 << bits) - 1) as f32);
    let kb = k.div_ceil(block);
    let blob = block / per_byte;
    let mut packed = vec![0u8; n * kb * blob];
    let mut scales = vec![0f32; n * kb];
    let zp_row = kb.div_ceil(per_byte);
    let mut zps = vec![0u8; n * zp_row];
    for row in 0..n {
        for b in 0..kb {
            let lo = b * block;
            let vals = &w[row * k + lo..row * k + (lo + block).min(k)];
            let (scale, zp) = if scheme.symmetric {
                let v = vals.iter().copied().fold(0f32, |m, x| if x.abs() > m.abs() { x } else { m });
                (f16_round(v / -mid), mid)
            } else {
                let min = vals.iter().copied().fold(0f32, f32::min);
                let max = vals.iter().copied().fold(0f32, f32::max);
                let scale = f16_round((max - min) / qmax);
                let zp = if scale == 0.0 { mid } else { (-min / scale).round_ties_even().clamp(0.0, qmax) };
                (scale, zp)
            };
            scales[row * kb + b] = scale;
            pack(&mut zps[row * zp_row..(row + 1) * zp_row], b, zp as u8, bits);
            let out = &mut packed[(row * kb + b) * blob..(row * kb + b + 1) * blob];
            for j in 0..block {
                let x = vals.get(j).copied().unwrap_or(0.0);
                let q = if scale == 0.0 { zp } else { ((x / scale).round_ties_even() + zp).clamp(0.0, qmax) };
                pack(out, j, q as u8, bits);
            }
        }
    }
    NBitsWeight { n, k, scheme, packed, scales, zero_points: (!scheme.symmetric).then_some(zps) }
}

/// [`quantize`] with the rows split over up to `threads` scoped threads: the same bytes, as rows are
/// quantized independently (the export's quantizer otherwise runs on one core).
pub fn quantize_parallel(w: &[f32], n: usize, k: usize, scheme: NBitsScheme, threads: usize) -> NBitsWeight {
    let parts = threads.clamp(1, n.max(1));
    if parts == 1 {
        return quantize(w, n, k, scheme);
    }
    let per = n.div_ceil(parts);
    let pieces: Vec<NBitsWeight> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(per)
            .map(|r0| {
                let r1 = (r0 + per).min(n);
                let rows = &w[r0 * k..r1 * k];
                s.spawn(move || quantize(rows, r1 - r0, k, scheme))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    let mut out = NBitsWeight {
        n,
        k,
        scheme,
        packed: Vec::with_capacity(pieces.iter().map(|p| p.packed.len()).sum()),
        scales: Vec::with_capacity(pieces.iter().map(|p| p.scales.len()).sum()),
        zero_points: (!scheme.symmetric).then(Vec::new),
    };
    for p in pieces {
        out.packed.extend_from_slice(&p.packed);
        out.scales.extend_from_slice(&p.scales);
        if let (Some(all), Some(z)) = (out.zero_points.as_mut(), p.zero_points) {
            all.extend_from_slice(&z); // whole rows of zero points: row-major like the values
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parallel_quantizer_writes_the_serial_ones_bytes() {
        let (n, k) = (37, 300); // rows not a multiple of the thread count, K not of the block
        let w: Vec<f32> =
            (0..n * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 5) as f32)).collect();
        for (bits, block, symmetric) in [(4, 32, true), (4, 128, false), (8, 64, true), (8, 32, false)] {
            let scheme = NBitsScheme { bits, block, symmetric };
            let want = quantize(&w, n, k, scheme);
            for threads in [1, 2, 3, 8, 64] {
                let got = quantize_parallel(&w, n, k, scheme, threads);
                assert_eq!(
                    (&got.packed, &got.scales, &got.zero_points),
                    (&want.packed, &want.scales, &want.zero_points),
                    "bits {bits} block {block} sym {symmetric} threads {threads}"
                );
            }
        }
    }

    #[test]
    fn round_trip_error_is_within_one_step() {
        let (n, k) = (5, 77); // K not a multiple of any block
        let w: Vec<f32> =
            (0..n * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 3) as f32)).collect();
        let schemes =
            [32, 64, 128].into_iter().flat_map(|b| [(4, b, true), (4, b, false), (8, b, true), (8, b, false)]);
        for (bits, block, symmetric) in schemes {
            {
                let q = quantize(&w, n, k, NBitsScheme { bits, block, symmetric });
                let d = q.dequantize();
                for row in 0..n {
                    for kk in 0..k {
                        let scale = q.scales[row * q.k_blocks() + kk / block].abs();
                        let err = (d[row * k + kk] - w[row * k + kk]).abs();
                        // Half a step from rounding; up to one where the range clips: the positive
                        // end of a symmetric block, or an asymmetric one whose f16-rounded scale or
                        // rounded zero point moved an end of the grid inside the data.
                        assert!(
                            err <= scale + 1e-6,
                            "bits {bits} block {block} sym {symmetric}: err {err} scale {scale}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn symmetric_maps_the_largest_magnitude_to_minus_eight() {
        let w = [0.5f32, -2.0, 1.0, 0.25];
        let q = quantize(&w, 1, 4, NBitsScheme { bits: 4, block: 32, symmetric: true });
        assert_eq!(q.scales[0], 0.25);
        assert_eq!(q.packed[0] & 0x0F, 10); // 0.5 / 0.25 + 8
        assert_eq!(q.packed[0] >> 4, 0); // −2.0 → −8 + 8
        assert_eq!(q.dequantize(), w.to_vec());
    }
}
