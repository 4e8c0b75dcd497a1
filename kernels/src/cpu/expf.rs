//! e^x in f32 by Cephes' `expf` reduction and polynomial: x = n·ln 2 + r with |r| ≤ ln 2 / 2, e^r by a
//! degree-6 polynomial (relative error ~1e-7), times 2^n. The attention's SIMD softmax takes the same
//! constants lane-wise; [`exp`] is the scalar form with every step fused as the SIMD forms fuse it, so a
//! loop over it gives the same bits whether the compiler vectorizes it or not (the tiles' SwiGLU).

/// ln 2 in two parts (`LN2_HI` exact in a few bits, so n · `LN2_HI` is exact).
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// The polynomial's coefficients, highest first.
pub(crate) const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];
/// Below it (2^−126) the softmax's exponential is 0; [`exp`] clamps to it.
pub(crate) const EXP_MIN: f32 = -87.3;
/// [`exp`] clamps to it (e^88 ≈ 1.65e38, n = 127: 2^n still a normal f32).
const EXP_MAX: f32 = 88.0;

/// e^x for x clamped to [−87.3, 88]: Cephes' reduction and polynomial with fused multiply-adds, 2^n
/// built in the exponent bits. NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = (-n).mul_add(LN2_HI, x);
    let r = (-n).mul_add(LN2_LO, r);
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p.mul_add(r, *c);
    }
    let y = (p * r).mul_add(r, r) + 1.0;
    // n ∈ [−126, 127] after the clamp (NaN casts to 0).
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// SwiGLU's product silu(g) · u = g / (1 + e^−g) · u (transformers' `act_fn(gate) * up` for Qwen2's
/// `silu`), per lane.
#[inline(always)]
pub(crate) fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

#[cfg(test)]
mod tests {
    /// Against f64's exp over the range the clamp keeps, every 1/64: within 2 ulp-ish (3e-7 relative).
    #[test]
    fn exp_against_f64() {
        let mut worst = 0f64;
        for i in -87 * 64..88 * 64 {
            let x = i as f32 / 64.0;
            let e = (x as f64).exp();
            worst = worst.max(((super::exp(x) as f64 - e) / e).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert_eq!(super::exp(-1000.0), super::exp(super::EXP_MIN));
        assert!(super::exp(f32::NAN).is_nan());
    }
}
