//! int4 weights in column tiles × int8 activations on the CPU: the decode GEMV and the prefill GEMM
//! from one layout.
//!
//! The weights of 16 consecutive output columns (a tile) are interleaved 4 bytes at a time, so that one
//! 64-byte load holds 8 consecutive k of all 16 columns: byte `4c + j` of step `s` has column c's
//! value at k = 8s + j in its low nibble and at 8s + 4 + j in its high nibble. Split into nibbles, the
//! two halves meet the activation row's 4 values at those k broadcast to every lane, one `vpdpbusd`
//! each (AVX-512 VNNI; AVX-VNNI, or `vpmaddubsw` + `vpmaddwd` on AVX2, on each 32-byte half); the
//! 16 lanes are the 16 columns' i32 dot products, so nothing is summed across lanes and one unpacked
//! weight register serves every activation row of a pass (the GEMM's reuse). ([`Int4Tiles`]; llama.cpp
//! repacks Q4_0 into interleaved blocks for the same reason.)
//!
//! The activations are quantized per group of 32 as in [`super::int8`] (d = max|a| / 127, q =
//! round(a / d)); per group the lanes' i32 sums turn into f32 times d, and per block they are scaled
//! by the 16 columns' weight scales after the zero-point term (z · d · Σ q, per block) is taken off:
//!
//! ```text
//! y_c = Σ_blocks s_c,b · ( Σ_{g ∈ b} d_g · dot_c,g  −  z_c,b · Σ_{g ∈ b} d_g Σ_j q_j )
//! ```
//!
//! **8-bit weights** (MatMulNBits' `bits` = 8, lm_head) take the same loop with a step of 8 k in 128 bytes:
//! byte `4c + j` of its first 64 holds column c at k = 8s + j, of its second 64 at 8s + 4 + j, a whole byte
//! each (zero point 128 when symmetric). The integer dot is of the signed values, Σ (w − 128) · q, so
//! the zero-point term above uses z − 128 (0 when symmetric): `vpdpbusd` takes the bytes unsigned and
//! the group's 128 · Σ q is taken off its lanes, AVX2 multiplies |w − 128| by q with w − 128's sign
//! (`vpmaddubsw` would saturate on 255 · 127 + 255 · 127).
//!
//! Every build does the same f32 operations in the same order per column (the portable one with
//! `mul_add` where the SIMD ones fuse), and the i32 dot products are exact, so all builds give the
//! same bits (tested).

use super::int8::{Int8Isa, quantize32};
use super::{Output, Parallel};
use crate::error::{Error, Result};
use crate::layout::check_io;

pub use super::int8::Int4Scale;

/// Output columns per tile (the lanes of a 512-bit register of i32).
pub const TILE: usize = 16;
/// Tiles per task: one decode pass.
const TASK_TILES: usize = 8;
/// Activation rows that share one pass over a tile's bytes (the GEMM's reuse), on every build: a 256-bit
/// loop holds a tile × row's three accumulators in 6 of its 16 registers, so at four rows some live in
/// L1; still, four rows a pass instead of two read the step's linears 7–14 % faster at 8–128 rows on AVX2
/// and AVX-VNNI, and 16–27 % at 2–4 rows with more tiles a pass ([`Loop::tiles_per_pass`];
/// docs/KERNELS.md).
const MR: usize = 4;

mod layout;
pub use layout::{Int4Tiles, TileLayout, Tiled, WeightBits, swiglu_pairs, tile, tile_int8};

/// Activation rows quantized per group of 32 in column order, padded with zeros to whole blocks.
struct Rows {
    /// Padded row length (k_blocks · block).
    kp: usize,
    /// `m × kp`
    q: Vec<i8>,
    /// `m × groups`
    d: Vec<f32>,
    /// `m × k_blocks`: Σ over the block's groups of d · Σ q.
    c: Vec<f32>,
    /// `m × groups`: 128 · Σ q, what `vpdpbusd` adds to an 8-bit weight group's dot by taking the bytes
    /// unsigned.
    bias128: Vec<i32>,
}

impl Rows {
    #[inline(always)]
    fn build(a: &[f32], m: usize, k: usize, kb: usize, block: usize, avx2: bool) -> Self {
        let kp = kb * block;
        let groups = kp / 32;
        let mut out = Rows {
            kp,
            q: vec![0; m * kp],
            d: vec![0.0; m * groups],
            c: vec![0.0; m * kb],
            bias128: vec![0; m * groups],
        };
        for i in 0..m {
            let row = &a[i * k..(i + 1) * k];
            for g in 0..groups {
                let (c0, c1) = ((32 * g).min(k), (32 * g + 32).min(k));
                let mut vals = [0.0f32; 32];
                vals[..c1 - c0].copy_from_slice(&row[c0..c1]);
                let dst = &mut out.q[i * kp + 32 * g..i * kp + 32 * g + 32];
                let (d, sum) = quantize_into(&vals, dst, avx2);
                out.d[i * groups + g] = d;
                out.bias128[i * groups + g] = 128 * sum;
                out.c[i * kb + (32 * g) / block] += d * sum as f32;
            }
        }
        out
    }
}

/// One group quantized into `dst` (32 bytes, column order), with the AVX2 form when `avx2` (the caller's
/// CPU has it) or the portable one (the same bits). Returns (d, Σ q).
#[inline(always)]
fn quantize_into(vals: &[f32; 32], dst: &mut [i8], avx2: bool) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if avx2 && dst.len() == 32 {
        // SAFETY: the caller says the CPU has AVX2; dst holds 32 bytes.
        unsafe {
            let (q, d, sum) = super::int8::quantize32_avx2(vals);
            std::arch::x86_64::_mm256_storeu_si256(dst.as_mut_ptr() as *mut _, q);
            return (d, sum);
        }
    }
    let _ = avx2;
    let (q, d, sum) = quantize32(vals);
    dst.copy_from_slice(&q);
    (d, sum)
}

/// What a pass reads: `T` tiles of weights, their scales and zero points (`[T][k_blocks][16]`, read
/// in place: f16 scales widen in the loop), and the block shape.
struct TaskIn<'a, S, const T: usize> {
    w: [&'a [u8]; T],
    s: &'a [S],
    /// None: symmetric (zero point 8).
    z: Option<&'a [u8]>,
    kb: usize,
    per_block: usize,
}

/// Portable form: per column, per group an exact i32 dot product; the f32 steps as the SIMD forms
/// take them (fused).
fn tiles_portable<S: Int4Scale, const T: usize, const B8: bool>(
    ti: &TaskIn<'_, S, T>,
    q: &Rows,
    i0: usize,
    mr: usize,
) -> [[[f32; TILE]; T]; MR] {
    let mut acc = [[[0.0f32; TILE]; T]; MR];
    let groups = ti.kb * ti.per_block;
    for (r, acc) in acc[..mr].iter_mut().enumerate() {
        let i = i0 + r;
        let qrow = &q.q[i * q.kp..(i + 1) * q.kp];
        for (t, acc) in acc.iter_mut().enumerate() {
            for (c, acc) in acc.iter_mut().enumerate() {
                let mut bacc = 0.0f32;
                for g in 0..groups {
                    let mut dot = 0i32;
                    for s in 4 * g..4 * g + 4 {
                        for j in 0..4 {
                            let (lo, hi) = if B8 {
                                let w = ti.w[t];
                                (w[128 * s + 4 * c + j] as i32 - 128, w[128 * s + 64 + 4 * c + j] as i32 - 128)
                            } else {
                                let byte = ti.w[t][64 * s + 4 * c + j];
                                ((byte & 0xF) as i32, (byte >> 4) as i32)
                            };
                            dot += lo * qrow[8 * s + j] as i32;
                            dot += hi * qrow[8 * s + 4 + j] as i32;
                        }
                    }
                    bacc = (dot as f32).mul_add(q.d[i * groups + g], bacc);
                    if (g + 1) % ti.per_block == 0 {
                        let blk = g / ti.per_block;
                        let at = (t * ti.kb + blk) * TILE + c;
                        let cb = q.c[i * ti.kb + blk];
                        let z = match (B8, ti.z) {
                            (false, z) => z.map_or(8.0, |z| z[at] as f32),
                            (true, z) => z.map_or(0.0, |z| (z[at] as i32 - 128) as f32),
                        };
                        *acc = (-z).mul_add(cb, bacc).mul_add(ti.s[at].f32(), *acc);
                        bacc = 0.0;
                    }
                }
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::int8::x86::Dot;
    use super::{Int4Scale, MR, Rows, TILE, TaskIn};
    use std::arch::x86_64::*;

    /// How far ahead of the loop each tile's weights are prefetched, in bytes.
    const PREFETCH: usize = 1024;

    /// One register width's form of a tile's 16 lanes: unpacking 64 weight bytes, the integer dot
    /// with broadcast activations, and the f32 steps.
    pub trait Lanes {
        /// 64 weight bytes split into low and high nibbles.
        type W: Copy;
        /// 4 activation bytes broadcast.
        type A: Copy;
        /// 16 i32 lanes.
        type I: Copy;
        /// 16 f32 lanes.
        type F: Copy;
        unsafe fn unpack(p: *const u8) -> (Self::W, Self::W);
        /// 128 bytes of whole-byte weights: the step's first 4 k and its last 4 k.
        unsafe fn load2(p: *const u8) -> (Self::W, Self::W);
        unsafe fn bcast(p: *const i8) -> Self::A;
        unsafe fn izero() -> Self::I;
        unsafe fn fzero() -> Self::F;
        /// ia + lo · alo + hi · ahi, per lane over 4 bytes each, in the build's accumulator form (at most a
        /// group's 4 steps from zero; [`Lanes::widen`] gives the i32 lanes).
        unsafe fn dot(ia: Self::I, lo: Self::W, hi: Self::W, alo: Self::A, ahi: Self::A) -> Self::I;
        /// Whether [`Lanes::dot_w8`] takes the bytes unsigned (Σ w · a; the caller takes 128 · Σ a off).
        const W8_UNSIGNED: bool;
        /// [`Lanes::dot`] over whole-byte weights: Σ w · a when [`Lanes::W8_UNSIGNED`], else Σ (w − 128) · a.
        unsafe fn dot_w8(ia: Self::I, lo: Self::W, hi: Self::W, alo: Self::A, ahi: Self::A) -> Self::I;
        /// [`Lanes::dot`]'s accumulator as 16 i32 lanes.
        unsafe fn widen(ia: Self::I) -> Self::I;
        /// ia − v, per lane.
        unsafe fn isub(ia: Self::I, v: i32) -> Self::I;
        /// f32(ia) · d + bacc, fused.
        unsafe fn group(ia: Self::I, d: f32, bacc: Self::F) -> Self::F;
        /// The tile's 16 scales (f32 or f16) and zero points (bytes, or 8 when `z` is null) as f32.
        unsafe fn scales<S: Int4Scale>(s: *const S) -> Self::F;
        unsafe fn zeros(z: *const u8) -> Self::F;
        /// 8-bit zero points less 128 (0 when `z` is null).
        unsafe fn zeros_w8(z: *const u8) -> Self::F;
        /// (bacc − z · c) · s + acc, both fused.
        unsafe fn block(bacc: Self::F, s: Self::F, z: Self::F, c: f32, acc: Self::F) -> Self::F;
        unsafe fn store(v: Self::F, out: &mut [f32; TILE]);
    }

    /// 512-bit registers, AVX-512 VNNI: a tile is one register.
    pub struct L512;
    impl Lanes for L512 {
        type W = __m512i;
        type A = __m512i;
        type I = __m512i;
        type F = __m512;
        #[inline(always)]
        unsafe fn unpack(p: *const u8) -> (__m512i, __m512i) {
            unsafe {
                let mask = _mm512_set1_epi8(0x0F);
                let raw = _mm512_loadu_si512(p as *const _);
                (_mm512_and_si512(raw, mask), _mm512_and_si512(_mm512_srli_epi16(raw, 4), mask))
            }
        }
        #[inline(always)]
        unsafe fn load2(p: *const u8) -> (__m512i, __m512i) {
            unsafe { (_mm512_loadu_si512(p as *const _), _mm512_loadu_si512(p.add(64) as *const _)) }
        }
        #[inline(always)]
        unsafe fn bcast(p: *const i8) -> __m512i {
            unsafe { _mm512_set1_epi32((p as *const i32).read_unaligned()) }
        }
        #[inline(always)]
        unsafe fn izero() -> __m512i {
            unsafe { _mm512_setzero_si512() }
        }
        #[inline(always)]
        unsafe fn fzero() -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn dot(ia: __m512i, lo: __m512i, hi: __m512i, alo: __m512i, ahi: __m512i) -> __m512i {
            unsafe { _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(ia, lo, alo), hi, ahi) }
        }
        #[inline(always)]
        unsafe fn widen(ia: __m512i) -> __m512i {
            ia
        }
        const W8_UNSIGNED: bool = true;
        #[inline(always)]
        unsafe fn dot_w8(ia: __m512i, lo: __m512i, hi: __m512i, alo: __m512i, ahi: __m512i) -> __m512i {
            unsafe { Self::dot(ia, lo, hi, alo, ahi) }
        }
        #[inline(always)]
        unsafe fn isub(ia: __m512i, v: i32) -> __m512i {
            unsafe { _mm512_sub_epi32(ia, _mm512_set1_epi32(v)) }
        }
        #[inline(always)]
        unsafe fn group(ia: __m512i, d: f32, bacc: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia), _mm512_set1_ps(d), bacc) }
        }
        #[inline(always)]
        unsafe fn scales<S: Int4Scale>(s: *const S) -> __m512 {
            unsafe { S::load16(s) }
        }
        #[inline(always)]
        unsafe fn zeros(z: *const u8) -> __m512 {
            unsafe {
                if z.is_null() {
                    _mm512_set1_ps(8.0)
                } else {
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(z as *const __m128i)))
                }
            }
        }
        #[inline(always)]
        unsafe fn zeros_w8(z: *const u8) -> __m512 {
            unsafe {
                if z.is_null() {
                    _mm512_setzero_ps()
                } else {
                    let z = _mm512_cvtepu8_epi32(_mm_loadu_si128(z as *const __m128i));
                    _mm512_cvtepi32_ps(_mm512_sub_epi32(z, _mm512_set1_epi32(128)))
                }
            }
        }
        #[inline(always)]
        unsafe fn block(bacc: __m512, s: __m512, z: __m512, c: f32, acc: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(_mm512_fnmadd_ps(z, _mm512_set1_ps(c), bacc), s, acc) }
        }
        #[inline(always)]
        unsafe fn store(v: __m512, out: &mut [f32; TILE]) {
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) }
        }
    }

    /// 256-bit registers (AVX2's `vpmaddubsw` + `vpmaddwd`, or AVX-VNNI): a tile is two registers,
    /// columns 0–7 and 8–15.
    pub struct L256<D>(std::marker::PhantomData<D>);
    impl<D: Dot> Lanes for L256<D> {
        type W = [__m256i; 2];
        type A = __m256i;
        type I = [__m256i; 2];
        type F = [__m256; 2];
        #[inline(always)]
        unsafe fn unpack(p: *const u8) -> ([__m256i; 2], [__m256i; 2]) {
            unsafe {
                let mask = _mm256_set1_epi8(0x0F);
                // (No closures: they would not inherit the caller's target features.)
                let (r0, r1) = (_mm256_loadu_si256(p as *const _), _mm256_loadu_si256(p.add(32) as *const _));
                let lo = [_mm256_and_si256(r0, mask), _mm256_and_si256(r1, mask)];
                let hi = [
                    _mm256_and_si256(_mm256_srli_epi16(r0, 4), mask),
                    _mm256_and_si256(_mm256_srli_epi16(r1, 4), mask),
                ];
                (lo, hi)
            }
        }
        #[inline(always)]
        unsafe fn load2(p: *const u8) -> ([__m256i; 2], [__m256i; 2]) {
            unsafe {
                let (a, b) = (_mm256_loadu_si256(p as *const _), _mm256_loadu_si256(p.add(32) as *const _));
                let (c, d) = (_mm256_loadu_si256(p.add(64) as *const _), _mm256_loadu_si256(p.add(96) as *const _));
                ([a, b], [c, d])
            }
        }
        #[inline(always)]
        unsafe fn bcast(p: *const i8) -> __m256i {
            unsafe { _mm256_set1_epi32((p as *const i32).read_unaligned()) }
        }
        #[inline(always)]
        unsafe fn izero() -> [__m256i; 2] {
            unsafe { [_mm256_setzero_si256(); 2] }
        }
        #[inline(always)]
        unsafe fn fzero() -> [__m256; 2] {
            unsafe { [_mm256_setzero_ps(); 2] }
        }
        #[inline(always)]
        unsafe fn dot(
            ia: [__m256i; 2],
            lo: [__m256i; 2],
            hi: [__m256i; 2],
            alo: __m256i,
            ahi: __m256i,
        ) -> [__m256i; 2] {
            unsafe { [D::dot2_nibbles(ia[0], lo[0], alo, hi[0], ahi), D::dot2_nibbles(ia[1], lo[1], alo, hi[1], ahi)] }
        }
        #[inline(always)]
        unsafe fn widen(ia: [__m256i; 2]) -> [__m256i; 2] {
            unsafe { [D::widen(ia[0]), D::widen(ia[1])] }
        }
        const W8_UNSIGNED: bool = D::W8_UNSIGNED;
        #[inline(always)]
        unsafe fn dot_w8(
            ia: [__m256i; 2],
            lo: [__m256i; 2],
            hi: [__m256i; 2],
            alo: __m256i,
            ahi: __m256i,
        ) -> [__m256i; 2] {
            unsafe { [D::dot2_w8(ia[0], lo[0], alo, hi[0], ahi), D::dot2_w8(ia[1], lo[1], alo, hi[1], ahi)] }
        }
        #[inline(always)]
        unsafe fn isub(ia: [__m256i; 2], v: i32) -> [__m256i; 2] {
            unsafe {
                let v = _mm256_set1_epi32(v);
                [_mm256_sub_epi32(ia[0], v), _mm256_sub_epi32(ia[1], v)]
            }
        }
        #[inline(always)]
        unsafe fn group(ia: [__m256i; 2], d: f32, bacc: [__m256; 2]) -> [__m256; 2] {
            unsafe {
                let d = _mm256_set1_ps(d);
                [
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[0]), d, bacc[0]),
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[1]), d, bacc[1]),
                ]
            }
        }
        #[inline(always)]
        unsafe fn scales<S: Int4Scale>(s: *const S) -> [__m256; 2] {
            unsafe { [S::load8(s), S::load8(s.add(8))] }
        }
        #[inline(always)]
        unsafe fn zeros(z: *const u8) -> [__m256; 2] {
            unsafe {
                if z.is_null() {
                    [_mm256_set1_ps(8.0); 2]
                } else {
                    // (No closure: it would not inherit the caller's target features.)
                    let lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64(z as *const __m128i));
                    let hi = _mm256_cvtepu8_epi32(_mm_loadl_epi64(z.add(8) as *const __m128i));
                    [_mm256_cvtepi32_ps(lo), _mm256_cvtepi32_ps(hi)]
                }
            }
        }
        #[inline(always)]
        unsafe fn zeros_w8(z: *const u8) -> [__m256; 2] {
            unsafe {
                if z.is_null() {
                    [_mm256_setzero_ps(); 2]
                } else {
                    let c = _mm256_set1_epi32(128);
                    let lo = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(z as *const __m128i)), c);
                    let hi = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(z.add(8) as *const __m128i)), c);
                    [_mm256_cvtepi32_ps(lo), _mm256_cvtepi32_ps(hi)]
                }
            }
        }
        #[inline(always)]
        unsafe fn block(bacc: [__m256; 2], s: [__m256; 2], z: [__m256; 2], c: f32, acc: [__m256; 2]) -> [__m256; 2] {
            unsafe {
                let c = _mm256_set1_ps(c);
                let x0 = _mm256_fnmadd_ps(z[0], c, bacc[0]);
                let x1 = _mm256_fnmadd_ps(z[1], c, bacc[1]);
                [_mm256_fmadd_ps(x0, s[0], acc[0]), _mm256_fmadd_ps(x1, s[1], acc[1])]
            }
        }
        #[inline(always)]
        unsafe fn store(v: [__m256; 2], out: &mut [f32; TILE]) {
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr(), v[0]);
                _mm256_storeu_ps(out.as_mut_ptr().add(8), v[1]);
            }
        }
    }

    /// `T` tiles × `R` activation rows from `i0` in one pass over the tiles' bytes (8-bit weights when
    /// `B8`).
    ///
    /// # Safety
    /// The CPU has the features `L` uses and AVX2 + FMA; the tiles hold `kb · per_block · 256` bytes
    /// each (twice that when `B8`), `ti.s` (and `ti.z`) `T · kb · 16` values, and `q` has rows
    /// `i0..i0 + R`.
    #[inline(always)]
    pub unsafe fn pass<L: Lanes, S: Int4Scale, const T: usize, const R: usize, const B8: bool>(
        ti: &TaskIn<'_, S, T>,
        q: &Rows,
        i0: usize,
    ) -> [[[f32; TILE]; T]; MR] {
        unsafe {
            let groups = ti.kb * ti.per_block;
            let qp: [*const i8; R] = std::array::from_fn(|r| q.q.as_ptr().add((i0 + r) * q.kp));
            let dp: [*const f32; R] = std::array::from_fn(|r| q.d.as_ptr().add((i0 + r) * groups));
            let cp: [*const f32; R] = std::array::from_fn(|r| q.c.as_ptr().add((i0 + r) * ti.kb));
            let bp: [*const i32; R] = std::array::from_fn(|r| q.bias128.as_ptr().add((i0 + r) * groups));
            let step = if B8 { 128 } else { 64 };
            let wp: [*const u8; T] = std::array::from_fn(|t| ti.w[t].as_ptr());
            let mut acc = [[L::fzero(); T]; R];
            let mut off = 0usize;
            let mut g = 0usize;
            for blk in 0..ti.kb {
                let mut bacc = [[L::fzero(); T]; R];
                for _ in 0..ti.per_block {
                    let mut ia = [[L::izero(); T]; R];
                    for st in 0..4 {
                        let k = 32 * g + 8 * st;
                        for w in wp {
                            _mm_prefetch::<_MM_HINT_T0>(w.add(off + PREFETCH) as *const i8);
                            if B8 {
                                _mm_prefetch::<_MM_HINT_T0>(w.add(off + PREFETCH + 64) as *const i8);
                            }
                        }
                        // (Loops, not array::from_fn: a closure would not inherit the target features.)
                        let (mut alo, mut ahi) = ([L::bcast(qp[0].add(k)); R], [L::bcast(qp[0].add(k + 4)); R]);
                        for r in 1..R {
                            alo[r] = L::bcast(qp[r].add(k));
                            ahi[r] = L::bcast(qp[r].add(k + 4));
                        }
                        for t in 0..T {
                            if B8 {
                                let (lo, hi) = L::load2(wp[t].add(off));
                                for r in 0..R {
                                    ia[r][t] = L::dot_w8(ia[r][t], lo, hi, alo[r], ahi[r]);
                                }
                            } else {
                                let (lo, hi) = L::unpack(wp[t].add(off));
                                for r in 0..R {
                                    ia[r][t] = L::dot(ia[r][t], lo, hi, alo[r], ahi[r]);
                                }
                            }
                        }
                        off += step;
                    }
                    for r in 0..R {
                        let d = *dp[r].add(g);
                        for t in 0..T {
                            let dot = match (B8, L::W8_UNSIGNED) {
                                (true, true) => L::isub(ia[r][t], *bp[r].add(g)),
                                (true, false) => ia[r][t],
                                (false, _) => L::widen(ia[r][t]),
                            };
                            bacc[r][t] = L::group(dot, d, bacc[r][t]);
                        }
                    }
                    g += 1;
                }
                for t in 0..T {
                    let at = (t * ti.kb + blk) * TILE;
                    let s = L::scales(ti.s.as_ptr().add(at));
                    let zp = ti.z.map_or(std::ptr::null(), |z| z.as_ptr().add(at));
                    let z = if B8 { L::zeros_w8(zp) } else { L::zeros(zp) };
                    for r in 0..R {
                        acc[r][t] = L::block(bacc[r][t], s, z, *cp[r].add(blk), acc[r][t]);
                    }
                }
            }
            let mut out = [[[0.0f32; TILE]; T]; MR];
            for r in 0..R {
                for t in 0..T {
                    L::store(acc[r][t], &mut out[r][t]);
                }
            }
            out
        }
    }
}

/// Which inner loop a task runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Loop {
    #[cfg(target_arch = "x86_64")]
    Vnni512,
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Loop {
    /// Tiles a pass takes for `m` rows. Each tile is a weight stream of its own, and more streams read
    /// DRAM faster (gate/up on AVX2, 2 threads: two 30, four 33–36 GB/s), which at a few rows matters
    /// more than the accumulators (three per tile and row) spilling to L1: at one row AVX-512 and
    /// AVX-VNNI take 8 tiles (the whole decode step outside ORT on an Intel Xeon, eight against four:
    /// −4 to −5 % AVX-512 VNNI, −0.4 to −3 % AVX-VNNI). The AVX2 loop takes 4 at one row: on the AVX2-only
    /// AMD EPYC it is written for (Zen 1 class, 256-bit ops split in two) its 8-tile pass is
    /// compute-bound with 16 i16 accumulators in 16 registers (the step outside ORT 147–148 ms at four
    /// against 160–162 at eight, in ORT 175–177 against 198–199 ms a token), although on an Intel host
    /// forced to AVX2 eight had read 2–5 % faster. At 2–4 rows (forced tokens, verified drafts) AVX-512
    /// takes 8 at 2–3 rows and 4 at 4 (8 × 4 rows spills too far: +24 %), AVX2 4 and AVX-VNNI 2
    /// (against one tile × two rows: −21 to −27 % and −16 to −25 %); from 5 rows on (compute-bound)
    /// AVX-512 takes 2 and the 256-bit loops 1. All measured on the step's linears outside ORT
    /// (docs/KERNELS.md).
    fn tiles_per_pass(self, m: usize) -> usize {
        match (self, m) {
            (Loop::Portable, _) => 1,
            #[cfg(target_arch = "x86_64")]
            (Loop::Vnni512 | Loop::AvxVnni, 1) | (Loop::Vnni512, 2..=3) => 8,
            #[cfg(target_arch = "x86_64")]
            (Loop::Vnni512, 4) | (Loop::Avx2, 1..=4) => 4,
            #[cfg(target_arch = "x86_64")]
            (Loop::Vnni512, _) | (Loop::AvxVnni, 2..=4) => 2,
            #[cfg(target_arch = "x86_64")]
            _ => 1,
        }
    }
}

/// One pass: `T` tiles × `mr` rows from `i0`.
#[inline(always)]
fn pass<S: Int4Scale, const T: usize, const B8: bool>(
    lp: Loop,
    ti: &TaskIn<'_, S, T>,
    q: &Rows,
    i0: usize,
    mr: usize,
) -> [[[f32; TILE]; T]; MR] {
    #[cfg(target_arch = "x86_64")]
    macro_rules! by_rows {
        ($l:ty) => {
            // SAFETY: the caller checked the loop's features; lengths as documented.
            unsafe {
                match mr {
                    1 => x86::pass::<$l, S, T, 1, B8>(ti, q, i0),
                    2 => x86::pass::<$l, S, T, 2, B8>(ti, q, i0),
                    3 => x86::pass::<$l, S, T, 3, B8>(ti, q, i0),
                    _ => x86::pass::<$l, S, T, 4, B8>(ti, q, i0),
                }
            }
        };
    }
    match lp {
        #[cfg(target_arch = "x86_64")]
        Loop::Vnni512 => by_rows!(x86::L512),
        #[cfg(target_arch = "x86_64")]
        Loop::AvxVnni => by_rows!(x86::L256<super::int8::x86::AvxVnni>),
        #[cfg(target_arch = "x86_64")]
        Loop::Avx2 => by_rows!(x86::L256<super::int8::x86::Avx2>),
        Loop::Portable => tiles_portable::<S, T, B8>(ti, q, i0, mr),
    }
}

/// What a task writes from its tiles' columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Epilogue {
    /// Each column as computed: `y` is `[m, n]`.
    Plain,
    /// SwiGLU over tile pairs: tiles 2j and 2j + 1 hold the gate's and the up projection's columns
    /// 16j..16j + 16 (what `st export` writes for an MLP's gate and up as one linear), and `y` is
    /// `[m, n / 2]` with `y[i][16j + c] = silu(gate) · up` — the MLP's `act_fn(gate_proj(x)) · up_proj(x)`
    /// without the two `[m, n / 2]` tensors and the two nodes between (n a multiple of 32).
    SwiGlu,
}

/// The task's view of `T` tiles from `t0`.
#[inline(always)]
fn task_in<'a, S: Int4Scale, const T: usize>(w: &Int4Tiles<'a, S>, t0: usize) -> TaskIn<'a, S, T> {
    let l = w.layout;
    let (kb, tb) = (l.0.k_blocks(), l.tile_bytes());
    let per = kb * TILE;
    TaskIn::<S, T> {
        w: std::array::from_fn(|t| &w.b[(t0 + t) * tb..(t0 + t + 1) * tb]),
        s: &w.scales[t0 * per..(t0 + T) * per],
        z: w.zero_points.map(|z| &z[t0 * per..(t0 + T) * per]),
        kb,
        per_block: l.0.block / 32,
    }
}

/// One pass's rows `i0..i0 + mr` over `ti`'s tiles.
#[inline(always)]
fn pass_rows<S: Int4Scale, const T: usize>(
    lp: Loop,
    bits: WeightBits,
    ti: &TaskIn<'_, S, T>,
    q: &Rows,
    i0: usize,
    mr: usize,
) -> [[[f32; TILE]; T]; MR] {
    match bits {
        WeightBits::Four => pass::<S, T, false>(lp, ti, q, i0, mr),
        WeightBits::Eight => pass::<S, T, true>(lp, ti, q, i0, mr),
    }
}

/// Writes row `i`'s silu(gate) · up for the tile pair whose gate tile is `gate_tile` (even).
#[inline(always)]
fn write_swiglu(y: &Output, n: usize, i: usize, gate_tile: usize, gate: &[f32; TILE], up: &[f32; TILE]) {
    let mut v = [0f32; TILE];
    super::expf::silu_mul(gate, up, &mut v);
    // SAFETY: the pair's columns belong to this task alone.
    unsafe { y.write_slice(i * (n / 2) + gate_tile / 2 * TILE, &v) };
}

/// Runs `T` tiles from `t0` over every activation row, writing their columns (for [`Epilogue::SwiGlu`],
/// `t0` and `T` even: the pairs' products).
#[inline(always)]
fn run_tiles<S: Int4Scale, const T: usize>(
    lp: Loop,
    w: &Int4Tiles<'_, S>,
    t0: usize,
    q: &Rows,
    m: usize,
    y: &Output,
    epilogue: Epilogue,
) {
    let l = w.layout;
    let n = l.0.n;
    let ti = task_in::<S, T>(w, t0);
    for i0 in (0..m).step_by(MR) {
        let mr = MR.min(m - i0);
        let out = pass_rows(lp, l.1, &ti, q, i0, mr);
        for (r, out) in out[..mr].iter().enumerate() {
            match epilogue {
                Epilogue::Plain => {
                    for (t, out) in out.iter().enumerate() {
                        let c0 = (t0 + t) * TILE;
                        let cols = TILE.min(n - c0);
                        // SAFETY: the columns of tiles t0.. belong to this task alone.
                        unsafe { y.write_slice((i0 + r) * n + c0, &out[..cols]) };
                    }
                }
                Epilogue::SwiGlu => {
                    for p in 0..T / 2 {
                        write_swiglu(y, n, i0 + r, t0 + 2 * p, &out[2 * p], &out[2 * p + 1]);
                    }
                }
            }
        }
    }
}

/// [`Epilogue::SwiGlu`] where a pass takes one tile: the gate tile `t0` and the up tile `t0 + 1` pass
/// in turn over each group of rows (both tiles' bytes stay in L2 between them).
#[inline(always)]
fn run_pair_in_turn<S: Int4Scale>(lp: Loop, w: &Int4Tiles<'_, S>, t0: usize, q: &Rows, m: usize, y: &Output) {
    let l = w.layout;
    let (gate, up) = (task_in::<S, 1>(w, t0), task_in::<S, 1>(w, t0 + 1));
    for i0 in (0..m).step_by(MR) {
        let mr = MR.min(m - i0);
        let g = pass_rows(lp, l.1, &gate, q, i0, mr);
        let u = pass_rows(lp, l.1, &up, q, i0, mr);
        for r in 0..mr {
            write_swiglu(y, l.0.n, i0 + r, t0, &g[r][0], &u[r][0]);
        }
    }
}

/// One task: tiles `task · TASK_TILES ..`, every activation row; eight tiles a pass for one row, fewer for
/// several (the registers hold tiles × rows accumulators); a remainder in passes of 4, 3, 2, 1.
/// A task's tiles start even and number an even count when n is a multiple of 32, so SwiGLU's pairs
/// never straddle tasks or passes.
#[inline(always)]
fn task_body<S: Int4Scale>(w: &Int4Tiles<'_, S>, q: &Rows, m: usize, task: usize, y: &Output, lp: Loop, e: Epilogue) {
    let l = w.layout;
    let first = task * TASK_TILES;
    let tiles = TASK_TILES.min(l.tiles() - first);
    let per_pass = lp.tiles_per_pass(m);
    let mut t = first;
    let end = first + tiles;
    while t < end {
        let take = match per_pass.min(end - t) {
            8.. => 8,
            4..8 => 4,
            n => n,
        };
        match (take, e) {
            (8, _) => run_tiles::<S, 8>(lp, w, t, q, m, y, e),
            (4, _) => run_tiles::<S, 4>(lp, w, t, q, m, y, e),
            (3, Epilogue::Plain) => run_tiles::<S, 3>(lp, w, t, q, m, y, e),
            (2, _) => run_tiles::<S, 2>(lp, w, t, q, m, y, e),
            (_, Epilogue::Plain) => run_tiles::<S, 1>(lp, w, t, q, m, y, e),
            (_, Epilogue::SwiGlu) => {
                run_pair_in_turn::<S>(lp, w, t, q, m, y);
                t += 2;
                continue;
            }
        }
        t += take;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn task_vnni512<S: Int4Scale>(w: &Int4Tiles<'_, S>, q: &Rows, m: usize, t: usize, y: &Output, e: Epilogue) {
    task_body::<S>(w, q, m, t, y, Loop::Vnni512, e)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avxvnni,avx2,fma,f16c")]
unsafe fn task_avxvnni<S: Int4Scale>(w: &Int4Tiles<'_, S>, q: &Rows, m: usize, t: usize, y: &Output, e: Epilogue) {
    task_body::<S>(w, q, m, t, y, Loop::AvxVnni, e)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn task_avx2<S: Int4Scale>(w: &Int4Tiles<'_, S>, q: &Rows, m: usize, t: usize, y: &Output, e: Epilogue) {
    task_body::<S>(w, q, m, t, y, Loop::Avx2, e)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_avx2(a: &[f32], m: usize, k: usize, kb: usize, block: usize) -> Rows {
    Rows::build(a, m, k, kb, block, true)
}

/// `y[m, n] = a[m, k] · Wᵀ` with tiled weights and the activations quantized to int8 per group of 32,
/// on the fastest build this CPU runs.
pub fn int4_tiles_matmul_int8<S: Int4Scale>(
    a: &[f32],
    m: usize,
    w: &Int4Tiles<'_, S>,
    y: &mut [f32],
    par: &dyn Parallel,
) -> Result<()> {
    int4_tiles_matmul_int8_on(super::int8_isa(), a, m, w, y, par)
}

/// [`int4_tiles_matmul_int8`] on a chosen build (an error when this CPU lacks its features).
pub fn int4_tiles_matmul_int8_on<S: Int4Scale>(
    isa: Int8Isa,
    a: &[f32],
    m: usize,
    w: &Int4Tiles<'_, S>,
    y: &mut [f32],
    par: &dyn Parallel,
) -> Result<()> {
    tiles_int8(isa, Epilogue::Plain, a, m, w, y, par)
}

/// An MLP's `silu(gate) · up` from one tiled linear whose tiles alternate gate and up: tiles 2j and
/// 2j + 1 hold the gate's and the up projection's columns 16j..16j + 16 (n = 2 × the MLP's width, a
/// multiple of 32), and `y[m, n / 2]` gets `silu(a · gateᵀ) · (a · upᵀ)` — the products of
/// [`int4_tiles_matmul_int8`] on the same weights, combined by each task before it writes (no `[m, n]`
/// tensor, no second pass); on the fastest build this CPU runs.
pub fn int4_tiles_swiglu_int8<S: Int4Scale>(
    a: &[f32],
    m: usize,
    w: &Int4Tiles<'_, S>,
    y: &mut [f32],
    par: &dyn Parallel,
) -> Result<()> {
    int4_tiles_swiglu_int8_on(super::int8_isa(), a, m, w, y, par)
}

/// [`int4_tiles_swiglu_int8`] on a chosen build (an error when this CPU lacks its features).
pub fn int4_tiles_swiglu_int8_on<S: Int4Scale>(
    isa: Int8Isa,
    a: &[f32],
    m: usize,
    w: &Int4Tiles<'_, S>,
    y: &mut [f32],
    par: &dyn Parallel,
) -> Result<()> {
    tiles_int8(isa, Epilogue::SwiGlu, a, m, w, y, par)
}

fn tiles_int8<S: Int4Scale>(
    isa: Int8Isa,
    epilogue: Epilogue,
    a: &[f32],
    m: usize,
    w: &Int4Tiles<'_, S>,
    y: &mut [f32],
    par: &dyn Parallel,
) -> Result<()> {
    w.validate()?;
    let l = w.layout.0;
    let n_out = match epilogue {
        Epilogue::Plain => l.n,
        Epilogue::SwiGlu if l.n.is_multiple_of(2 * TILE) => l.n / 2,
        Epilogue::SwiGlu => {
            return Err(Error::Shape(format!(
                "SwiGLU over column tiles: n = {} (expected a multiple of {}: gate and up tiles in pairs)",
                l.n,
                2 * TILE
            )));
        }
    };
    check_io(m, n_out, l.k, a.len(), y.len())?;
    if !isa.available() {
        return Err(isa.unsupported());
    }
    let lp = match isa {
        #[cfg(target_arch = "x86_64")]
        Int8Isa::Avx512Vnni => Loop::Vnni512,
        #[cfg(target_arch = "x86_64")]
        Int8Isa::AvxVnni => Loop::AvxVnni,
        #[cfg(target_arch = "x86_64")]
        Int8Isa::Avx2 => Loop::Avx2,
        _ => Loop::Portable,
    };
    #[cfg(target_arch = "x86_64")]
    // SAFETY: every build but the portable one runs on AVX2 (checked above).
    let q = if isa != Int8Isa::Baseline {
        unsafe { quantize_avx2(a, m, l.k, l.k_blocks(), l.block) }
    } else {
        Rows::build(a, m, l.k, l.k_blocks(), l.block, false)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let q = Rows::build(a, m, l.k, l.k_blocks(), l.block, false);
    let out = Output { ptr: y.as_mut_ptr(), len: y.len() };
    par.run(w.layout.tiles().div_ceil(TASK_TILES), &|t| match lp {
        // SAFETY: the CPU has the features (checked above).
        #[cfg(target_arch = "x86_64")]
        Loop::Vnni512 => unsafe { task_vnni512(w, &q, m, t, &out, epilogue) },
        #[cfg(target_arch = "x86_64")]
        Loop::AvxVnni => unsafe { task_avxvnni(w, &q, m, t, &out, epilogue) },
        #[cfg(target_arch = "x86_64")]
        Loop::Avx2 => unsafe { task_avx2(w, &q, m, t, &out, epilogue) },
        Loop::Portable => task_body::<S>(w, &q, m, t, &out, Loop::Portable, epilogue),
    });
    Ok(())
}
