//! int4 weights × int8 activations on the CPU: the decode GEMV (and small-M GEMM) that moves the weights
//! once, as bytes, with integer dot products.
//!
//! Each activation row is quantized once per call per group of 32 columns, as MatMulNBits'
//! `accuracy_level` 4 and llama.cpp's Q8_0 do: d = max|a| / 127, q = round(a / d) ∈ [−127, 127]. With the
//! weight's group scale s and zero point z (8 when symmetric) and its nibbles w ∈ [0, 15]:
//!
//! ```text
//! y = Σ_g s_g · d_g · (Σ_j w_j q_j − z_g Σ_j q_j)
//!   = Σ_g s_g d_g · dot_g  −  Σ_g s_g z_g · (d_g Σ_j q_j)
//! ```
//!
//! The first sum runs in the vector loop: 32 weight bytes (two groups of 32 nibbles) load once, split
//! into low and high nibbles, and meet the activations pre-arranged in the same order ([`Quantized`]),
//! through `vpmaddubsw`+`vpmaddwd` (AVX2) or one `vpdpbusd` (AVX-512 VNNI / AVX-VNNI); the i32 lanes turn
//! into f32 scaled by s·d per group. The second sum is a short dot product per row over the groups.
//! The i32 dot products are exact; only the f32 sums' order differs between the builds (lanes), so the
//! builds agree to f32 rounding, and the error against the float64 reference is that of quantizing the
//! activations (stated in docs/KERNELS.md).
//!
//! The loops are compiled per instruction set and picked at run time ([`int8_isa`]); a task owns
//! [`ROWS`] weight rows and runs every block of up to four activation rows over them while they are
//! in cache.

use super::{Output, Parallel, dot};
use crate::error::{Error, Result};
use crate::layout::{Int4Weights, check_io};

/// Weight rows per task.
pub const ROWS: usize = 64;
/// Activation rows that share one pass over a weight row's bytes.
const MR: usize = 4;

/// A scale element type the int8 path reads (f32, or f16 as `ai.st.MatMulInt4` stores them).
pub trait Int4Scale: Copy + Sync {
    fn to_f32_slice(src: &[Self], dst: &mut [f32]);
}
impl Int4Scale for f32 {
    fn to_f32_slice(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}
impl Int4Scale for half::f16 {
    fn to_f32_slice(src: &[half::f16], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
}

/// The instruction set the int8 loop runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Isa {
    /// `vpdpbusd` on 256-bit registers (AVX-512 VNNI + VL: Intel since Ice Lake, AMD Zen 4).
    Avx512Vnni,
    /// The VEX form of `vpdpbusd` (Intel Alder Lake, AMD Zen 5 without AVX-512 VNNI exposed).
    AvxVnni,
    /// `vpmaddubsw` + `vpmaddwd` (AVX2 + FMA: AMD Zen 1–3, Intel Haswell on).
    Avx2,
    /// Portable Rust.
    Baseline,
}

impl Int8Isa {
    /// Whether this CPU can run the build.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            match self {
                Int8Isa::Avx512Vnni => avx2 && has!("avx512f") && has!("avx512vl") && has!("avx512vnni"),
                Int8Isa::AvxVnni => avx2 && has!("avxvnni"),
                Int8Isa::Avx2 => avx2,
                Int8Isa::Baseline => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Int8Isa::Baseline
        }
    }
    pub const ALL: [Int8Isa; 4] = [Int8Isa::Avx512Vnni, Int8Isa::AvxVnni, Int8Isa::Avx2, Int8Isa::Baseline];
}

/// The fastest build this CPU runs.
pub fn int8_isa() -> Int8Isa {
    Int8Isa::ALL.into_iter().find(|i| i.available()).unwrap_or(Int8Isa::Baseline)
}

/// Activation rows quantized per group of 32 and laid out like the weights' nibbles: for each pair of
/// groups (g0, g1), 64 bytes [even columns of g0, even of g1, odd of g0, odd of g1]. Rows are padded
/// with zeros to whole pairs.
pub struct Quantized {
    pairs: usize,
    /// `m × pairs × 64`
    q: Vec<i8>,
    /// `m × pairs × 8`: each pair's two scales d as [d0 × 4, d1 × 4] (the i32 lanes' order).
    d_lanes: Vec<f32>,
    /// `m × k_blocks`: Σ over the weight block's groups of d · Σ q (the zero-point term).
    c: Vec<f32>,
}

impl Quantized {
    /// Quantizes `m` rows of `k` values for weights of `k_blocks` blocks of `per_block` groups of 32.
    pub fn new(a: &[f32], m: usize, k: usize, k_blocks: usize, per_block: usize) -> Self {
        let groups = k_blocks * per_block;
        let pairs = groups.div_ceil(2);
        let mut out = Quantized {
            pairs,
            q: vec![0; m * pairs * 64],
            d_lanes: vec![0.0; m * pairs * 8],
            c: vec![0.0; m * k_blocks],
        };
        for i in 0..m {
            let row = &a[i * k..(i + 1) * k];
            for g in 0..groups {
                let (c0, c1) = ((32 * g).min(k), (32 * g + 32).min(k));
                let vals = &row[c0..c1];
                let amax = vals.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                // A NaN or inf activation makes d non-finite, and so the outputs NaN, as in f32.
                let amax = if vals.iter().any(|v| !v.is_finite()) { f32::NAN } else { amax };
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                let (p, h) = (g / 2, g % 2);
                let chunk = &mut out.q[(i * pairs + p) * 64..(i * pairs + p + 1) * 64];
                let mut sum = 0i32;
                for (j, &v) in vals.iter().enumerate() {
                    let q = (v * inv).round().clamp(-127.0, 127.0) as i8;
                    sum += q as i32;
                    chunk[if j % 2 == 0 { 16 * h + j / 2 } else { 32 + 16 * h + j / 2 }] = q;
                }
                out.d_lanes[(i * pairs + p) * 8 + 4 * h..(i * pairs + p) * 8 + 4 * h + 4].fill(d);
                out.c[i * k_blocks + g / per_block] += d * sum as f32;
            }
        }
        out
    }
}

thread_local! {
    /// A task's block scales as f32, kept per thread and reused so that a task allocates nothing.
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Σ_g s_g d_g dot_g for up to [`MR`] activation rows starting at `i0` over one weight row
/// (`groups × 16` bytes; group g's scale is `s[g >> sh]`). Portable form: per group an exact i32 dot
/// product.
#[inline(always)]
fn row_dots_portable(wb: &[u8], s: &[f32], sh: u32, q: &Quantized, i0: usize, mr: usize, groups: usize) -> [f32; MR] {
    let mut acc = [0.0f32; MR];
    for g in 0..groups {
        let (p, h) = (g / 2, g % 2);
        let bytes = &wb[16 * g..16 * g + 16];
        for (r, acc) in acc[..mr].iter_mut().enumerate() {
            let i = i0 + r;
            let chunk = &q.q[(i * q.pairs + p) * 64..(i * q.pairs + p + 1) * 64];
            let mut dotg = 0i32;
            for j in 0..16 {
                dotg += (bytes[j] & 0xF) as i32 * chunk[16 * h + j] as i32;
                dotg += (bytes[j] >> 4) as i32 * chunk[32 + 16 * h + j] as i32;
            }
            *acc += dotg as f32 * (s[g >> sh] * q.d_lanes[(i * q.pairs + p) * 8 + 4 * h]);
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MR, Quantized};

    /// How far ahead of the loop the weights are prefetched, in bytes.
    const PREFETCH: usize = 2048;
    use std::arch::x86_64::*;

    /// The integer dot product of 32 unsigned weight bytes with 32 signed activation bytes, summed in
    /// groups of four into the eight i32 lanes.
    pub trait Dot {
        unsafe fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i;
    }
    pub struct Avx2;
    pub struct Vnni512;
    pub struct AvxVnni;
    impl Dot for Avx2 {
        #[inline(always)]
        unsafe fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
            // |15·127 + 15·127| < 2¹⁵: vpmaddubsw never saturates here.
            unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1))) }
        }
    }
    impl Dot for Vnni512 {
        #[inline(always)]
        unsafe fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
            unsafe { _mm256_dpbusd_epi32(acc, w, a) }
        }
    }
    impl Dot for AvxVnni {
        #[inline(always)]
        unsafe fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
            unsafe { _mm256_dpbusd_avx_epi32(acc, w, a) }
        }
    }

    /// Σ_g s_g d_g dot_g for `R` activation rows from `i0` over one weight row: two groups (32 weight
    /// bytes) per step, two independent accumulators per activation row.
    ///
    /// # Safety
    /// The CPU has the features `D` uses and AVX2 + FMA; `wb` holds `groups × 16` bytes, `s` the
    /// row's block scales (group g's is `s[g >> sh]`) and one more readable value (read for a lone last
    /// group's empty partner), and `q` was built for `groups` groups with rows `i0..i0 + R`.
    #[inline(always)]
    pub unsafe fn row_dots<D: Dot, const R: usize>(
        wb: &[u8],
        s: &[f32],
        sh: u32,
        q: &Quantized,
        i0: usize,
        groups: usize,
    ) -> [f32; MR] {
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let pairs = q.pairs;
            let full = groups / 2;
            let wp = wb.as_ptr();
            let qs: [*const i8; R] = std::array::from_fn(|r| q.q.as_ptr().add((i0 + r) * pairs * 64));
            let ds: [*const f32; R] = std::array::from_fn(|r| q.d_lanes.as_ptr().add((i0 + r) * pairs * 8));
            let mut p = 0;
            while p + 1 < full {
                // The weights stream from DRAM once: ask for them PREFETCH bytes ahead (the row's end
                // runs into the next row, which the task reads next).
                _mm_prefetch::<_MM_HINT_T0>(wp.add(32 * p + PREFETCH) as *const i8);
                step::<D, R>(p, _mm256_loadu_si256(wp.add(32 * p) as *const __m256i), s, sh, &qs, &ds, &mut acc, 0);
                let raw = _mm256_loadu_si256(wp.add(32 * (p + 1)) as *const __m256i);
                step::<D, R>(p + 1, raw, s, sh, &qs, &ds, &mut acc, 1);
                p += 2;
            }
            if p < full {
                step::<D, R>(p, _mm256_loadu_si256(wp.add(32 * p) as *const __m256i), s, sh, &qs, &ds, &mut acc, 0);
            }
            if groups % 2 == 1 {
                // The row's last group alone: its 16 bytes in the low half (the missing group's
                // activations are zero).
                let raw = _mm256_zextsi128_si256(_mm_loadu_si128(wp.add(32 * full) as *const __m128i));
                step::<D, R>(full, raw, s, sh, &qs, &ds, &mut acc, 1);
            }
            let mut out = [0.0f32; MR];
            for r in 0..R {
                let v = _mm256_add_ps(acc[r][0], acc[r][1]);
                let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                let h = _mm_add_ss(h, _mm_movehdup_ps(h));
                out[r] = _mm_cvtss_f32(h);
            }
            out
        }
    }

    /// Pair `p` of groups (weight bytes `raw`) into accumulator `slot` of each activation row.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)] // the loop's registers, passed to an always-inlined body
    unsafe fn step<D: Dot, const R: usize>(
        p: usize,
        raw: __m256i,
        s: &[f32],
        sh: u32,
        qs: &[*const i8; R],
        ds: &[*const f32; R],
        acc: &mut [[__m256; 2]; R],
        slot: usize,
    ) {
        unsafe {
            let mask = _mm256_set1_epi8(0x0F);
            let lo = _mm256_and_si256(raw, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
            let sp = s.as_ptr();
            let sw = _mm256_set_m128(
                _mm_broadcast_ss(&*sp.add((2 * p + 1) >> sh)),
                _mm_broadcast_ss(&*sp.add((2 * p) >> sh)),
            );
            for r in 0..R {
                let a = qs[r].add(64 * p);
                let alo = _mm256_loadu_si256(a as *const __m256i);
                let ahi = _mm256_loadu_si256(a.add(32) as *const __m256i);
                let t = D::dot(D::dot(_mm256_setzero_si256(), lo, alo), hi, ahi);
                let scale = _mm256_mul_ps(sw, _mm256_loadu_ps(ds[r].add(8 * p)));
                acc[r][slot] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), scale, acc[r][slot]);
            }
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

/// [`x86::row_dots`] for `mr` (1..=4) rows, unrolled per count.
///
/// # Safety
/// As [`x86::row_dots`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn x86_rows<D: x86::Dot>(
    wb: &[u8],
    s: &[f32],
    sh: u32,
    q: &Quantized,
    i0: usize,
    mr: usize,
    groups: usize,
) -> [f32; MR] {
    unsafe {
        match mr {
            1 => x86::row_dots::<D, 1>(wb, s, sh, q, i0, groups),
            2 => x86::row_dots::<D, 2>(wb, s, sh, q, i0, groups),
            3 => x86::row_dots::<D, 3>(wb, s, sh, q, i0, groups),
            _ => x86::row_dots::<D, 4>(wb, s, sh, q, i0, groups),
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
    let groups = kb * l.block / 32;
    let r0 = task * ROWS;
    let rows = ROWS.min(n - r0);
    let sh = (l.block / 32).trailing_zeros();
    // Taken out of the thread-local rather than used inside a closure: a closure does not inherit the
    // caller's target features, and the intrinsics below would not inline.
    let mut sc = SCRATCH.take();
    // The task's rows' scales are contiguous: one conversion, plus one value of padding.
    sc.resize(rows * kb + 1, 0.0);
    S::to_f32_slice(&w.scales[r0 * kb..(r0 + rows) * kb], &mut sc[..rows * kb]);
    let row_bytes = groups * 16;
    for i0 in (0..m).step_by(MR) {
        let mr = MR.min(m - i0);
        for r in 0..rows {
            let wb = &w.b[(r0 + r) * row_bytes..(r0 + r + 1) * row_bytes];
            let s = &sc[r * kb..(r + 1) * kb + 1];
            let acc = match lp {
                // SAFETY: the caller checked the features (Int8Isa::available); lengths as documented.
                #[cfg(target_arch = "x86_64")]
                Loop::Avx2 => unsafe { x86_rows::<x86::Avx2>(wb, s, sh, q, i0, mr, groups) },
                #[cfg(target_arch = "x86_64")]
                Loop::Vnni512 => unsafe { x86_rows::<x86::Vnni512>(wb, s, sh, q, i0, mr, groups) },
                #[cfg(target_arch = "x86_64")]
                Loop::AvxVnni => unsafe { x86_rows::<x86::AvxVnni>(wb, s, sh, q, i0, mr, groups) },
                Loop::Portable => row_dots_portable(wb, s, sh, q, i0, mr, groups),
            };
            let s = &s[..kb];
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
    SCRATCH.set(sc);
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
        let (build, features) = match isa {
            Int8Isa::Avx512Vnni => ("AVX-512 VNNI", "avx512f + avx512vl + avx512vnni + avx2 + fma"),
            Int8Isa::AvxVnni => ("AVX-VNNI", "avxvnni + avx2 + fma"),
            Int8Isa::Avx2 => ("AVX2", "avx2 + fma"),
            Int8Isa::Baseline => ("portable", "nothing"),
        };
        return Err(Error::Unsupported { build, features });
    }
    if m == 0 {
        return Ok(());
    }
    let per_block = w.layout.block / 32;
    let q = Quantized::new(a, m, w.layout.k, w.layout.k_blocks(), per_block);
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
