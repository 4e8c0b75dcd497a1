//! int4 weights × int8 activations on the CPU: the decode GEMV (and small-M GEMM) that moves the weights
//! once, as bytes, with integer dot products.
//!
//! Each activation row is quantized once per call per group of 32 columns, as MatMulNBits'
//! `accuracy_level` 4 and llama.cpp's Q8_0 do: d = max|a| / 127, q = round(a / d) ∈ [−127, 127] (ties to even, as
//! their SIMD forms round). With the
//! weight's group scale s and zero point z (8 when symmetric) and its nibbles w ∈ [0, 15]:
//!
//! ```text
//! y = Σ_g s_g · d_g · (Σ_j w_j q_j − z_g Σ_j q_j)
//!   = Σ_g s_g d_g · dot_g  −  Σ_g s_g z_g · (d_g Σ_j q_j)
//! ```
//!
//! The first sum runs in the vector loop: 64 weight bytes (four groups of 32 nibbles) on AVX-512, 32
//! (two groups) on AVX2, load once, split into low and high nibbles, and meet the activations
//! pre-arranged in the same order ([`Quantized`]), through one `vpdpbusd` each (AVX-512 VNNI on 512-bit
//! registers, AVX-VNNI) or `vpmaddubsw`+`vpmaddwd` (AVX2); the i32 lanes turn into f32 scaled by s·d per
//! group, the products of one step's groups spread over the lanes by one permute. The second sum is a short dot product per row over the groups.
//! The i32 dot products are exact; only the f32 sums' order differs between the builds (lanes), so the
//! builds agree to f32 rounding, and the error against the float64 reference is that of quantizing the
//! activations (stated in docs/KERNELS.md).
//!
//! The loops are compiled per instruction set and picked at run time ([`int8_isa`]); a task owns
//! [`ROWS`] weight rows and runs every block of up to four activation rows over them while they are
//! in cache.

use super::features::Features;
use super::{Output, Parallel, dot};
use crate::error::{Error, Result};
use crate::layout::{Int4Weights, check_io};

/// Weight rows per task.
pub const ROWS: usize = 64;
/// Activation rows that share one pass over a weight row's bytes.
const MR: usize = 4;

/// A scale element type the int8 paths read (f32, or f16 as `ai.st.MatMulInt4` stores them).
pub trait Int4Scale: Copy + Sync {
    fn to_f32_slice(src: &[Self], dst: &mut [f32]);
    fn f32(self) -> f32;
    /// 16 consecutive scales widened to f32 in a register (`vcvtph2ps` for f16), for the tiled loop.
    ///
    /// # Safety
    /// `p` holds 16 values; the CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
    /// 8 consecutive scales widened to f32 in a register.
    ///
    /// # Safety
    /// `p` holds 8 values; the CPU has AVX and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}
impl Int4Scale for f32 {
    fn to_f32_slice(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}
impl Int4Scale for half::f16 {
    fn to_f32_slice(src: &[half::f16], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
    fn f32(self) -> f32 {
        self.to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const half::f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const half::f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }
}

/// The instruction set the int8 loop runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Isa {
    /// `vpdpbusd` on 512-bit registers (AVX-512 F/BW/VL/VNNI: Intel since Ice Lake, AMD Zen 4).
    Avx512Vnni,
    /// The VEX form of `vpdpbusd` (Intel Alder Lake, AMD Zen 5 without AVX-512 VNNI exposed).
    AvxVnni,
    /// `vpmaddubsw` + `vpmaddwd` (AVX2 + FMA: AMD Zen 1–3, Intel Haswell on).
    Avx2,
    /// Portable Rust.
    Baseline,
}

impl Int8Isa {
    /// The build's name and the CPU features it needs (none for the portable one).
    fn build(self) -> (&'static str, Option<Features>) {
        match self {
            Int8Isa::Avx512Vnni => ("AVX-512 VNNI", Some(Features::Avx512Vnni)),
            Int8Isa::AvxVnni => ("AVX-VNNI", Some(Features::AvxVnni)),
            Int8Isa::Avx2 => ("AVX2", Some(Features::Avx2)),
            Int8Isa::Baseline => ("portable", None),
        }
    }
    /// Whether this CPU can run the build.
    pub fn available(self) -> bool {
        super::features::runs(self.build().1)
    }
    /// The error for running this build on a CPU without its features.
    pub fn unsupported(self) -> Error {
        super::features::unsupported("int8 loop", self.build())
    }
    pub const ALL: [Int8Isa; 4] = [Int8Isa::Avx512Vnni, Int8Isa::AvxVnni, Int8Isa::Avx2, Int8Isa::Baseline];
}

/// The fastest build this CPU runs (under the [`super::ceiling`], if one is set).
pub fn int8_isa() -> Int8Isa {
    use super::ceiling::{BuildCeiling, allows};
    let level = |i: Int8Isa| match i {
        Int8Isa::Avx512Vnni => BuildCeiling::Avx512,
        Int8Isa::AvxVnni => BuildCeiling::AvxVnni,
        Int8Isa::Avx2 => BuildCeiling::Avx2,
        Int8Isa::Baseline => BuildCeiling::Portable,
    };
    Int8Isa::ALL.into_iter().find(|&i| allows(level(i)) && i.available()).unwrap_or(Int8Isa::Baseline)
}

/// Activation rows quantized per group of 32 and laid out like the weights' nibbles: for each quad of
/// groups (g0..g3), 128 bytes [even columns of g0, g1, g2, g3, then odd columns of g0, g1, g2, g3], so
/// that 64 weight bytes (four groups) meet their activations in two contiguous 64-byte loads and 32
/// (a pair) in two 32-byte loads. Rows are padded with zeros to whole quads.
pub struct Quantized {
    quads: usize,
    /// `m × quads × 128`
    q: Vec<i8>,
    /// `m × quads × 4`: each group's scale d (zero for padding).
    d: Vec<f32>,
    /// `m × quads × 16`: d spread to the i32 lanes of a step's dot products, four lanes per group
    /// ([d_g0 × 4, d_g1 × 4, d_g2 × 4, d_g3 × 4] per quad), so that a step scales its lanes with one load.
    dl: Vec<f32>,
    /// `m × k_blocks`: Σ over the weight block's groups of d · Σ q (the zero-point term).
    c: Vec<f32>,
}

/// Group `g`'s quantized values (even columns then odd ones, 16 each) and its scale d; the sum of
/// its values is returned.
struct GroupOut<'a> {
    even: &'a mut [i8; 16],
    odd: &'a mut [i8; 16],
}

/// Quantizes one group of 32 values (portable form): d = max|v| / 127 (NaN if any value is not
/// finite), q = round-half-even(v / d), in column order. Returns (q, d, Σ q).
#[inline(always)]
pub(crate) fn quantize32(vals: &[f32; 32]) -> ([i8; 32], f32, i32) {
    let amax = vals.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    // A NaN or inf activation makes d non-finite, and so the outputs NaN, as in f32.
    let finite = vals.iter().fold(true, |ok, v| ok & v.is_finite());
    let d = if finite { amax / 127.0 } else { f32::NAN };
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0i8; 32];
    let mut sum = 0i32;
    for (q, &v) in q.iter_mut().zip(vals) {
        let x = ((v * inv).round_ties_even() as i32).clamp(-127, 127);
        sum += x;
        *q = x as i8;
    }
    (q, d, sum)
}

/// [`quantize32`] in AVX2: the same values bit for bit (`vcvtps2dq` rounds half to even under the
/// default MXCSR, as `round_ties_even`), the 32 values in column order in one register.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn quantize32_avx2(vals: &[f32; 32]) -> (std::arch::x86_64::__m256i, f32, i32) {
    use std::arch::x86_64::*;
    unsafe {
        let p = vals.as_ptr();
        let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
        let sign = _mm256_set1_ps(-0.0);
        let m = _mm256_max_ps(
            _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
            _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
        );
        let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        let amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
        // v − v is 0 for finite values and NaN for inf and NaN.
        // (No closures here: they would not inherit the caller's target features.)
        let zero = _mm256_setzero_ps();
        let mut all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        for x in v {
            all = _mm256_and_ps(all, _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_sub_ps(x, x), zero));
        }
        let d = if _mm256_movemask_ps(all) == 0xFF { amax / 127.0 } else { f32::NAN };
        let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
        let mut q = [_mm256_setzero_si256(); 4];
        for (q, x) in q.iter_mut().zip(v) {
            *q = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(x, inv)), lo), hi);
        }
        let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
        let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b10_11_00_01));
        // i32 → i8 in column order: the packs work per 128-bit lane, the permute restores the order.
        let b = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        (b, d, _mm_cvtsi128_si32(s4))
    }
}

/// One group quantized into the loop's order: 16 even columns, then 16 odd ones. Returns (d, Σ q).
#[inline(always)]
fn quantize_group(vals: &[f32; 32], out: GroupOut<'_>) -> (f32, i32) {
    let (q, d, sum) = quantize32(vals);
    for j in 0..16 {
        out.even[j] = q[2 * j];
        out.odd[j] = q[2 * j + 1];
    }
    (d, sum)
}

/// [`quantize_group`] in AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn quantize_group_avx2(vals: &[f32; 32], out: GroupOut<'_>) -> (f32, i32) {
    use std::arch::x86_64::*;
    unsafe {
        let (b, d, sum) = quantize32_avx2(vals);
        // Even bytes then odd bytes within each lane, then [evens of both lanes, odds of both].
        let split = _mm256_setr_epi8(
            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
        );
        let b = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(b, split));
        _mm_storeu_si128(out.even.as_mut_ptr() as *mut __m128i, _mm256_castsi256_si128(b));
        _mm_storeu_si128(out.odd.as_mut_ptr() as *mut __m128i, _mm256_extracti128_si256(b, 1));
        (d, sum)
    }
}

impl Quantized {
    /// Quantizes `m` rows of `k` values for weights of `k_blocks` blocks of `per_block` groups of 32,
    /// per group with the AVX2 form when `avx2` (the caller's CPU has it) or the portable one.
    #[inline(always)]
    fn build(a: &[f32], m: usize, k: usize, k_blocks: usize, per_block: usize, avx2: bool) -> Self {
        let groups = k_blocks * per_block;
        let quads = groups.div_ceil(4);
        let mut out = Quantized {
            quads,
            q: vec![0; m * quads * 128],
            d: vec![0.0; m * quads * 4],
            dl: vec![0.0; m * quads * 16],
            c: vec![0.0; m * k_blocks],
        };
        for i in 0..m {
            let row = &a[i * k..(i + 1) * k];
            let qrow = &mut out.q[i * quads * 128..(i + 1) * quads * 128];
            for (qd, chunk) in qrow.chunks_exact_mut(128).enumerate() {
                let (evens, odds) = chunk.split_at_mut(64);
                for (h, (even, odd)) in evens.chunks_exact_mut(16).zip(odds.chunks_exact_mut(16)).enumerate() {
                    let g = 4 * qd + h;
                    if g >= groups {
                        break;
                    }
                    let (c0, c1) = ((32 * g).min(k), (32 * g + 32).min(k));
                    // The group's values, the missing columns of a last partial group as zeros.
                    let mut vals = [0.0f32; 32];
                    vals[..c1 - c0].copy_from_slice(&row[c0..c1]);
                    let (Ok(even), Ok(odd)) = (<&mut [i8; 16]>::try_from(even), <&mut [i8; 16]>::try_from(odd)) else {
                        unreachable!()
                    };
                    let go = GroupOut { even, odd };
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the caller says the CPU has AVX2.
                    let (d, sum) =
                        if avx2 { unsafe { quantize_group_avx2(&vals, go) } } else { quantize_group(&vals, go) };
                    #[cfg(not(target_arch = "x86_64"))]
                    let (d, sum) = {
                        let _ = avx2;
                        quantize_group(&vals, go)
                    };
                    out.d[i * quads * 4 + g] = d;
                    out.dl[i * quads * 16 + 4 * g..][..4].fill(d);
                    out.c[i * k_blocks + g / per_block] += d * sum as f32;
                }
            }
        }
        out
    }

    /// Quantizes `m` rows of `k` values for weights of `k_blocks` blocks of `per_block` groups of 32
    /// (portable form).
    pub fn new(a: &[f32], m: usize, k: usize, k_blocks: usize, per_block: usize) -> Self {
        Self::build(a, m, k, k_blocks, per_block, false)
    }
}

thread_local! {
    /// A task's scales as f32 (per block, and per group with each row padded to whole quads), kept per
    /// thread and reused so that a task allocates nothing.
    static SCRATCH: std::cell::Cell<(Vec<f32>, Vec<f32>)> = const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

/// Σ_g s_g d_g dot_g for up to [`MR`] activation rows starting at `i0` over one weight row
/// (`groups × 16` bytes; `sb` the row's block scales, `per_block` groups each). Portable form: per
/// group an exact i32 dot product.
#[inline(always)]
fn row_dots_portable(
    wb: &[u8],
    sb: &[f32],
    per_block: usize,
    q: &Quantized,
    i0: usize,
    mr: usize,
    groups: usize,
) -> [f32; MR] {
    let mut acc = [0.0f32; MR];
    // Block by block: a division per group costs more than the group's dot product.
    for (blk, &sblk) in sb.iter().enumerate() {
        for g in blk * per_block..((blk + 1) * per_block).min(groups) {
            let (qd, h) = (g / 4, g % 4);
            let bytes = &wb[16 * g..16 * g + 16];
            for (r, acc) in acc[..mr].iter_mut().enumerate() {
                let i = i0 + r;
                let chunk = &q.q[(i * q.quads + qd) * 128..(i * q.quads + qd + 1) * 128];
                let mut dotg = 0i32;
                for j in 0..16 {
                    dotg += (bytes[j] & 0xF) as i32 * chunk[16 * h + j] as i32;
                    dotg += (bytes[j] >> 4) as i32 * chunk[64 + 16 * h + j] as i32;
                }
                *acc += dotg as f32 * (sblk * q.d[i * q.quads * 4 + g]);
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::{MR, Quantized};

    /// How far ahead of the loop the weights are prefetched, in bytes.
    const PREFETCH: usize = 4096;
    use std::arch::x86_64::*;

    /// The integer dot product of 32 unsigned weight bytes with 32 signed activation bytes, summed in
    /// groups of four into the eight i32 lanes.
    pub trait Dot {
        unsafe fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i;
        /// acc + w0 · a0 + w1 · a1.
        #[inline(always)]
        unsafe fn dot2(acc: __m256i, w0: __m256i, a0: __m256i, w1: __m256i, a1: __m256i) -> __m256i {
            unsafe { Self::dot(Self::dot(acc, w0, a0), w1, a1) }
        }
        /// [`Dot::dot2`] for nibble weights (0..=15) into an accumulator in this build's own form, which
        /// [`Dot::widen`] turns into i32 lanes: the i32 lanes themselves, or on AVX2 i16 lane pairs that
        /// skip a `vpmaddwd` per step. At most 4 calls (one group of 32 k) between widenings.
        #[inline(always)]
        unsafe fn dot2_nibbles(acc: __m256i, w0: __m256i, a0: __m256i, w1: __m256i, a1: __m256i) -> __m256i {
            unsafe { Self::dot2(acc, w0, a0, w1, a1) }
        }
        /// [`Dot::dot2_nibbles`]'s accumulator as i32 lanes.
        #[inline(always)]
        unsafe fn widen(acc: __m256i) -> __m256i {
            acc
        }
        /// Whether [`Dot::dot2_w8`] takes the weight bytes unsigned (Σ w · a: the caller takes 128 · Σ a
        /// off) rather than as w − 128.
        const W8_UNSIGNED: bool;
        /// acc + w0 · a0 + w1 · a1 over whole-byte weights (0..=255, zero point 128): Σ w · a when
        /// [`Dot::W8_UNSIGNED`], else Σ (w − 128) · a.
        #[inline(always)]
        unsafe fn dot2_w8(acc: __m256i, w0: __m256i, a0: __m256i, w1: __m256i, a1: __m256i) -> __m256i {
            unsafe { Self::dot2(acc, w0, a0, w1, a1) }
        }
    }
    pub struct Avx2;
    pub struct AvxVnni;
    impl Dot for Avx2 {
        #[inline(always)]
        unsafe fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
            // |15·127 + 15·127| < 2¹⁵: vpmaddubsw never saturates here.
            unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1))) }
        }
        #[inline(always)]
        unsafe fn dot2(acc: __m256i, w0: __m256i, a0: __m256i, w1: __m256i, a1: __m256i) -> __m256i {
            // Both products summed in i16 first (4 · 15 · 127 < 2¹⁵), then one widening.
            unsafe {
                let p = _mm256_add_epi16(_mm256_maddubs_epi16(w0, a0), _mm256_maddubs_epi16(w1, a1));
                _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
            }
        }
        #[inline(always)]
        unsafe fn dot2_nibbles(acc: __m256i, w0: __m256i, a0: __m256i, w1: __m256i, a1: __m256i) -> __m256i {
            // Summed in i16 over a whole group: 4 calls · 4 products a lane · 15 · 127 = 30480 < 2¹⁵, so the
            // widening `vpmaddwd` runs once a group instead of once a call (9 multiplier ops a group instead of 12).
            unsafe {
                let p = _mm256_add_epi16(_mm256_maddubs_epi16(w0, a0), _mm256_maddubs_epi16(w1, a1));
                _mm256_add_epi16(acc, p)
            }
        }
        #[inline(always)]
        unsafe fn widen(acc: __m256i) -> __m256i {
            unsafe { _mm256_madd_epi16(acc, _mm256_set1_epi16(1)) }
        }
        const W8_UNSIGNED: bool = false;
        #[inline(always)]
        unsafe fn dot2_w8(acc: __m256i, w0: __m256i, a0: __m256i, w1: __m256i, a1: __m256i) -> __m256i {
            // vpmaddubsw would saturate on bytes up to 255 (255 · 127 · 2 > 2¹⁵): multiply |w − 128| ≤ 128
            // by a with w − 128's sign instead (2 · 128 · 127 < 2¹⁵), each pair sum widened on its own.
            unsafe {
                let flip = _mm256_set1_epi8(-128);
                let ones = _mm256_set1_epi16(1);
                let (s0, s1) = (_mm256_xor_si256(w0, flip), _mm256_xor_si256(w1, flip));
                let p0 = _mm256_maddubs_epi16(_mm256_abs_epi8(s0), _mm256_sign_epi8(a0, s0));
                let p1 = _mm256_maddubs_epi16(_mm256_abs_epi8(s1), _mm256_sign_epi8(a1, s1));
                let sum = _mm256_add_epi32(_mm256_madd_epi16(p0, ones), _mm256_madd_epi16(p1, ones));
                _mm256_add_epi32(acc, sum)
            }
        }
    }
    impl Dot for AvxVnni {
        #[inline(always)]
        unsafe fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
            unsafe { _mm256_dpbusd_avx_epi32(acc, w, a) }
        }
        const W8_UNSIGNED: bool = true;
    }

    /// Per-row pointers into the quantized activations: int8 values and group scales spread to lanes.
    pub struct Act<const R: usize> {
        q: [*const i8; R],
        d: [*const f32; R],
    }

    #[inline(always)]
    unsafe fn rows<const R: usize>(q: &Quantized, i0: usize) -> Act<R> {
        unsafe {
            let quads = q.quads;
            Act {
                q: std::array::from_fn(|r| q.q.as_ptr().add((i0 + r) * quads * 128)),
                d: std::array::from_fn(|r| q.dl.as_ptr().add((i0 + r) * quads * 16)),
            }
        }
    }

    /// A weight row's scales as the steps read them.
    #[derive(Clone, Copy)]
    pub enum RowScales<'a> {
        /// One scale per group, the row padded with zeros to whole quads (blocks narrower than a step).
        PerGroup(&'a [f32]),
        /// One scale per block of `1 << shift` groups, a block at least a step wide: a step's lanes
        /// share one scale, and no per-group copy of the scales is made.
        PerBlock { s: &'a [f32], shift: u32 },
    }

    /// One register width's form of the row loop: the groups (16 weight bytes each) a step takes,
    /// its loads, the step itself and the final sum.
    pub trait Width {
        const GROUPS: usize;
        type Raw: Copy;
        type Acc: Copy;
        unsafe fn zero() -> Self::Acc;
        unsafe fn load(p: *const u8) -> Self::Raw;
        /// The row's last `rem` (1..GROUPS) groups: their bytes only, the rest zero (the next row's
        /// bytes are not read; the missing groups' activations, scales and d are zero).
        unsafe fn load_tail(p: *const u8, rem: usize) -> Self::Raw;
        /// Step `i` (weight bytes `raw`) into accumulator `slot` of each activation row: per lane
        /// acc += f32(dot) · d · s, with `act.d` the rows' lane-spread activation scales.
        unsafe fn step<const R: usize, const PER_BLOCK: bool>(
            i: usize,
            raw: Self::Raw,
            s: &[f32],
            shift: u32,
            act: &Act<R>,
            acc: &mut [[Self::Acc; 2]; R],
            slot: usize,
        );
        unsafe fn sum(a: Self::Acc, b: Self::Acc) -> f32;
    }

    /// 256-bit registers (AVX2, or AVX-VNNI's dot): two groups (32 weight bytes) per step.
    pub struct W256<D>(std::marker::PhantomData<D>);
    /// 512-bit registers (AVX-512 F/BW/VL/VNNI): four groups (64 weight bytes) per step.
    pub struct W512;

    impl<D: Dot> Width for W256<D> {
        const GROUPS: usize = 2;
        type Raw = __m256i;
        type Acc = __m256;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load(p: *const u8) -> __m256i {
            unsafe { _mm256_loadu_si256(p as *const __m256i) }
        }
        #[inline(always)]
        unsafe fn load_tail(p: *const u8, _rem: usize) -> __m256i {
            // rem is 1: one group's 16 bytes in the low half.
            unsafe { _mm256_zextsi128_si256(_mm_loadu_si128(p as *const __m128i)) }
        }
        #[inline(always)]
        unsafe fn step<const R: usize, const PER_BLOCK: bool>(
            p: usize,
            raw: __m256i,
            s: &[f32],
            shift: u32,
            act: &Act<R>,
            acc: &mut [[__m256; 2]; R],
            slot: usize,
        ) {
            unsafe {
                let mask = _mm256_set1_epi8(0x0F);
                let lo = _mm256_and_si256(raw, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
                // The pair's weight scales in the i32 lanes' order [g0 × 4, g1 × 4].
                let sl = if PER_BLOCK {
                    _mm256_broadcast_ss(&*s.as_ptr().add((2 * p) >> shift))
                } else {
                    let s2 = _mm_castpd_ps(_mm_load_sd(s.as_ptr().add(2 * p) as *const f64));
                    _mm256_permutevar8x32_ps(_mm256_castps128_ps256(s2), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1))
                };
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = act.q[r].add(128 * (p / 2) + 32 * (p % 2));
                    let alo = _mm256_loadu_si256(a as *const __m256i);
                    let ahi = _mm256_loadu_si256(a.add(64) as *const __m256i);
                    let t = D::dot(D::dot(_mm256_setzero_si256(), lo, alo), hi, ahi);
                    let x = _mm256_mul_ps(_mm256_cvtepi32_ps(t), _mm256_loadu_ps(act.d[r].add(8 * p)));
                    acc[slot] = _mm256_fmadd_ps(x, sl, acc[slot]);
                }
            }
        }
        #[inline(always)]
        unsafe fn sum(a: __m256, b: __m256) -> f32 {
            unsafe {
                let v = _mm256_add_ps(a, b);
                let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)))
            }
        }
    }

    impl Width for W512 {
        const GROUPS: usize = 4;
        type Raw = __m512i;
        type Acc = __m512;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load(p: *const u8) -> __m512i {
            unsafe { _mm512_loadu_si512(p as *const _) }
        }
        #[inline(always)]
        unsafe fn load_tail(p: *const u8, rem: usize) -> __m512i {
            unsafe { _mm512_maskz_loadu_epi8((1u64 << (16 * rem)) - 1, p as *const i8) }
        }
        #[inline(always)]
        unsafe fn step<const R: usize, const PER_BLOCK: bool>(
            qd: usize,
            raw: __m512i,
            s: &[f32],
            shift: u32,
            act: &Act<R>,
            acc: &mut [[__m512; 2]; R],
            slot: usize,
        ) {
            unsafe {
                let mask = _mm512_set1_epi8(0x0F);
                let lo = _mm512_and_si512(raw, mask);
                let hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), mask);
                // The quad's weight scales in the i32 lanes' order [g0 × 4, g1 × 4, g2 × 4, g3 × 4].
                let sl = if PER_BLOCK {
                    _mm512_set1_ps(*s.as_ptr().add((4 * qd) >> shift))
                } else {
                    let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
                    _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_loadu_ps(s.as_ptr().add(4 * qd))))
                };
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = act.q[r].add(128 * qd);
                    let alo = _mm512_loadu_si512(a as *const _);
                    let ahi = _mm512_loadu_si512(a.add(64) as *const _);
                    let t = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, alo), hi, ahi);
                    let x = _mm512_mul_ps(_mm512_cvtepi32_ps(t), _mm512_loadu_ps(act.d[r].add(16 * qd)));
                    acc[slot] = _mm512_fmadd_ps(x, sl, acc[slot]);
                }
            }
        }
        #[inline(always)]
        unsafe fn sum(a: __m512, b: __m512) -> f32 {
            unsafe { _mm512_reduce_add_ps(_mm512_add_ps(a, b)) }
        }
    }

    /// Σ_g s_g d_g dot_g for `R` activation rows from `i0` over one weight row, `W::GROUPS` groups
    /// per step, two steps (two independent accumulators per activation row) per iteration.
    ///
    /// # Safety
    /// The CPU has the features `W` uses and AVX2 + FMA; `wb` holds `groups × 16` bytes, `s` the
    /// row's scales (per group padded to whole quads, or per block with blocks of at least
    /// `W::GROUPS` groups), and `q` was built for `groups` groups with rows `i0..i0 + R`.
    #[inline(always)]
    pub unsafe fn row_dots<W: Width, const R: usize>(
        wb: &[u8],
        s: RowScales<'_>,
        q: &Quantized,
        i0: usize,
        groups: usize,
    ) -> [f32; MR] {
        unsafe {
            match s {
                RowScales::PerBlock { s, shift } => row_loop::<W, R, true>(wb, s, shift, q, i0, groups),
                RowScales::PerGroup(s) => row_loop::<W, R, false>(wb, s, 0, q, i0, groups),
            }
        }
    }

    /// [`row_dots`] for one form of the scales.
    #[inline(always)]
    unsafe fn row_loop<W: Width, const R: usize, const PER_BLOCK: bool>(
        wb: &[u8],
        s: &[f32],
        shift: u32,
        q: &Quantized,
        i0: usize,
        groups: usize,
    ) -> [f32; MR] {
        unsafe {
            let bytes = 16 * W::GROUPS;
            let mut acc = [[W::zero(); 2]; R];
            let full = groups / W::GROUPS;
            let wp = wb.as_ptr();
            let act = rows::<R>(q, i0);
            let mut i = 0;
            while i + 1 < full {
                let at = wp.add(bytes * i);
                // The weights stream from DRAM once: ask for them PREFETCH bytes ahead, a cache line
                // at a time (the row's end runs into the next row, which the task reads next).
                for line in (0..2 * bytes).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(at.add(line + PREFETCH) as *const i8);
                }
                W::step::<R, PER_BLOCK>(i, W::load(at), s, shift, &act, &mut acc, 0);
                W::step::<R, PER_BLOCK>(i + 1, W::load(at.add(bytes)), s, shift, &act, &mut acc, 1);
                i += 2;
            }
            if i < full {
                W::step::<R, PER_BLOCK>(i, W::load(wp.add(bytes * i)), s, shift, &act, &mut acc, 0);
            }
            let rem = groups % W::GROUPS;
            if rem > 0 {
                W::step::<R, PER_BLOCK>(full, W::load_tail(wp.add(bytes * full), rem), s, shift, &act, &mut acc, 1);
            }
            let mut out = [0.0f32; MR];
            for r in 0..R {
                out[r] = W::sum(acc[r][0], acc[r][1]);
            }
            out
        }
    }
}

/// Which row loop a task runs.
#[derive(Clone, Copy)]
enum Loop {
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Vnni512,
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    Portable,
}

impl Loop {
    /// Groups of 32 one step of the loop takes.
    fn step_groups(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Loop::Vnni512 => 4,
            #[cfg(target_arch = "x86_64")]
            Loop::Avx2 | Loop::AvxVnni => 2,
            Loop::Portable => 1,
        }
    }
}

/// A weight row's scales for [`row_dots`]: per group (padded to whole quads), or per block when a
/// block spans whole steps.
#[derive(Clone, Copy)]
struct Scales<'a> {
    /// Per block, `k_blocks` long.
    block: &'a [f32],
    /// Per group padded to whole quads; empty when the steps read the block scales (SIMD loops only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    group: &'a [f32],
    per_block: usize,
}

/// One weight row's dots for `mr` (1..=4) activation rows on the chosen loop, unrolled per count.
///
/// # Safety
/// The CPU has the loop's features; lengths as [`x86::row_dots`] documents.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_unsafe))]
unsafe fn row_dots(
    lp: Loop,
    wb: &[u8],
    sc: Scales<'_>,
    q: &Quantized,
    i0: usize,
    mr: usize,
    groups: usize,
) -> [f32; MR] {
    unsafe {
        #[cfg(target_arch = "x86_64")]
        let s = if sc.group.is_empty() {
            x86::RowScales::PerBlock { s: sc.block, shift: sc.per_block.trailing_zeros() }
        } else {
            x86::RowScales::PerGroup(sc.group)
        };
        // `x86::row_dots::<W, R>` for the run-time row count `mr` (1..=4).
        #[cfg(target_arch = "x86_64")]
        macro_rules! by_rows {
            ($w:ty) => {
                match mr {
                    1 => x86::row_dots::<$w, 1>(wb, s, q, i0, groups),
                    2 => x86::row_dots::<$w, 2>(wb, s, q, i0, groups),
                    3 => x86::row_dots::<$w, 3>(wb, s, q, i0, groups),
                    _ => x86::row_dots::<$w, 4>(wb, s, q, i0, groups),
                }
            };
        }
        match lp {
            #[cfg(target_arch = "x86_64")]
            Loop::Avx2 => by_rows!(x86::W256<x86::Avx2>),
            #[cfg(target_arch = "x86_64")]
            Loop::AvxVnni => by_rows!(x86::W256<x86::AvxVnni>),
            #[cfg(target_arch = "x86_64")]
            Loop::Vnni512 => by_rows!(x86::W512),
            Loop::Portable => row_dots_portable(wb, sc.block, sc.per_block, q, i0, mr, groups),
        }
    }
}

/// One task: weight rows `task · ROWS ..`, every activation row.
#[inline(always)]
fn task_body<S: Int4Scale, const FMA: bool>(
    w: &Int4Weights<'_, S>,
    q: &Quantized,
    m: usize,
    task: usize,
    y: &Output,
    lp: Loop,
) {
    let l = w.layout;
    let (n, kb) = (l.n, l.k_blocks());
    let per_block = l.block / 32;
    let groups = kb * per_block;
    let gq = q.quads * 4;
    let r0 = task * ROWS;
    let rows = ROWS.min(n - r0);
    // Taken out of the thread-local rather than used inside a closure: a closure does not inherit the
    // caller's target features, and the intrinsics below would not inline.
    let (mut sb, mut sg) = SCRATCH.take();
    sb.resize(rows * kb, 0.0);
    S::to_f32_slice(&w.scales[r0 * kb..(r0 + rows) * kb], &mut sb[..rows * kb]);
    // A block as wide as a step (or wider) gives all the step's lanes one scale, read in place; a
    // narrower one needs the scales per group, each row padded with zeros to whole quads.
    let per_group = !(per_block >= lp.step_groups() && per_block.is_power_of_two());
    if per_group {
        sg.resize(rows * gq, 0.0);
        for r in 0..rows {
            let row = &mut sg[r * gq..(r + 1) * gq];
            // Block by block (a division per group here cost more than the row's dot products at block 128).
            for (dst, &v) in row[..groups].chunks_exact_mut(per_block).zip(&sb[r * kb..(r + 1) * kb]) {
                dst.fill(v);
            }
            row[groups..].fill(0.0);
        }
    }
    let row_bytes = groups * 16;
    for i0 in (0..m).step_by(MR) {
        let mr = MR.min(m - i0);
        for r in 0..rows {
            let wb = &w.b[(r0 + r) * row_bytes..(r0 + r + 1) * row_bytes];
            let s = &sb[r * kb..(r + 1) * kb];
            let sc = Scales { block: s, group: if per_group { &sg[r * gq..(r + 1) * gq] } else { &[] }, per_block };
            // SAFETY: the caller checked the loop's features (Int8Isa::available); lengths as documented.
            let acc = unsafe { row_dots(lp, wb, sc, q, i0, mr, groups) };
            for (r_i, v) in acc[..mr].iter().enumerate() {
                let i = i0 + r_i;
                let c = &q.c[i * kb..(i + 1) * kb];
                let corr = match w.zero_points {
                    None => 8.0 * dot::<FMA>(s, c),
                    Some(zp) => {
                        let zrow = &zp[(r0 + r) * kb.div_ceil(2)..(r0 + r + 1) * kb.div_ceil(2)];
                        let mut corr = 0.0f32;
                        for (blk, (&s, &c)) in s.iter().zip(c).enumerate() {
                            let z = if blk.is_multiple_of(2) { zrow[blk / 2] & 0xF } else { zrow[blk / 2] >> 4 };
                            corr += s * z as f32 * c;
                        }
                        corr
                    }
                };
                // SAFETY: column r0 + r belongs to this task alone.
                unsafe { y.write(i * n + r0 + r, v - corr) };
            }
        }
    }
    SCRATCH.set((sb, sg));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn task_vnni512<S: Int4Scale>(w: &Int4Weights<'_, S>, q: &Quantized, m: usize, t: usize, y: &Output) {
    task_body::<S, true>(w, q, m, t, y, Loop::Vnni512)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avxvnni,avx2,fma,f16c")]
unsafe fn task_avxvnni<S: Int4Scale>(w: &Int4Weights<'_, S>, q: &Quantized, m: usize, t: usize, y: &Output) {
    task_body::<S, true>(w, q, m, t, y, Loop::AvxVnni)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn task_avx2<S: Int4Scale>(w: &Int4Weights<'_, S>, q: &Quantized, m: usize, t: usize, y: &Output) {
    task_body::<S, true>(w, q, m, t, y, Loop::Avx2)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn quantize_avx512(a: &[f32], m: usize, k: usize, kb: usize, per_block: usize) -> Quantized {
    Quantized::build(a, m, k, kb, per_block, true)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_avx2(a: &[f32], m: usize, k: usize, kb: usize, per_block: usize) -> Quantized {
    Quantized::build(a, m, k, kb, per_block, true)
}

/// `y[m, n] = a[m, k] · Wᵀ` with the activations quantized to int8 per group of 32, on the fastest
/// build this CPU runs.
pub fn int4_matmul_int8<S: Int4Scale>(
    a: &[f32],
    m: usize,
    w: &Int4Weights<'_, S>,
    y: &mut [f32],
    par: &dyn Parallel,
) -> Result<()> {
    int4_matmul_int8_on(int8_isa(), a, m, w, y, par)
}

/// [`int4_matmul_int8`] on a chosen build (tests and benches compare them); an error when this CPU
/// lacks its features.
pub fn int4_matmul_int8_on<S: Int4Scale>(
    isa: Int8Isa,
    a: &[f32],
    m: usize,
    w: &Int4Weights<'_, S>,
    y: &mut [f32],
    par: &dyn Parallel,
) -> Result<()> {
    w.validate()?;
    check_io(m, w.layout.n, w.layout.k, a.len(), y.len())?;
    if !isa.available() {
        return Err(isa.unsupported());
    }
    if m == 0 {
        return Ok(());
    }
    let (k, kb, per_block) = (w.layout.k, w.layout.k_blocks(), w.layout.block / 32);
    let q = match isa {
        // SAFETY: the CPU has the features (checked above).
        #[cfg(target_arch = "x86_64")]
        Int8Isa::Avx512Vnni => unsafe { quantize_avx512(a, m, k, kb, per_block) },
        #[cfg(target_arch = "x86_64")]
        Int8Isa::AvxVnni | Int8Isa::Avx2 => unsafe { quantize_avx2(a, m, k, kb, per_block) },
        _ => Quantized::new(a, m, k, kb, per_block),
    };
    let out = Output { ptr: y.as_mut_ptr(), len: y.len() };
    let tasks = w.layout.n.div_ceil(ROWS);
    par.run(tasks, &|t| match isa {
        // SAFETY: the CPU has the features (checked above).
        #[cfg(target_arch = "x86_64")]
        Int8Isa::Avx512Vnni => unsafe { task_vnni512(w, &q, m, t, &out) },
        #[cfg(target_arch = "x86_64")]
        Int8Isa::AvxVnni => unsafe { task_avxvnni(w, &q, m, t, &out) },
        #[cfg(target_arch = "x86_64")]
        Int8Isa::Avx2 => unsafe { task_avx2(w, &q, m, t, &out) },
        _ => task_body::<S, false>(w, &q, m, t, &out, Loop::Portable),
    });
    Ok(())
}
