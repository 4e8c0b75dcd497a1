//! Grouped-query attention over a KV cache appended in place, on the CPU: what ORT's
//! `com.microsoft.GroupQueryAttention` computes with `do_rotary` = 1 (non-interleaved rotary from a
//! cos/sin cache looked up by position id, causal, scale 1/√hd), with the work grouped by KV head.
//!
//! ORT's CPU kernel runs one GEMM per *query* head, so each KV head's keys and values are packed and
//! read once per query head of its group (7 times for Qwen2.5-7B) and a decode step's attention grows
//! by ~0.7 µs per cached position and layer. Here the group's query rows (its heads × the call's
//! tokens) are one matrix: per KV head (and block of tokens) one `Q·Kᵀ` GEMM, a causal softmax per row
//! and one `P·V` GEMM, through `matrixmultiply`'s sgemm, with the tasks on the caller's pool.
//!
//! ```text
//! q', k' = rotate(q, k)            x'[i] = x[i]·cos[p,i] − x[i+h]·sin[p,i],  x'[i+h] = x[i+h]·cos[p,i] + x[i]·sin[p,i]
//! cache[past + s] = k', v          (positions 0..past are the cached ones)
//! out[s, head] = softmax_{t ≤ past+s}(scale · q'[s, head] · cache_k[t]) · cache_v
//! ```

use super::Parallel;
use super::features::Features;
use crate::error::{Error, Result};

/// Heads and head size of the attention.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GqaShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Scale of the scores (ORT's `scale` attribute; 0 means 1/√head_dim).
    pub scale: f32,
}

impl GqaShape {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.heads == 0 || self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::Attention(format!(
                "heads {} with kv heads {} (expected kv heads ≥ 1 dividing heads)",
                self.heads, self.kv_heads
            )));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(Error::Attention(format!("head_dim {} (expected even, > 0)", self.head_dim)));
        }
        Ok(())
    }
    fn scale(&self) -> f32 {
        if self.scale == 0.0 { 1.0 / (self.head_dim as f32).sqrt() } else { self.scale }
    }
}

/// One call's new tokens: q, k and v rows (`tokens` rows each, `*_stride` floats apart: a packed
/// projection is one buffer at three offsets) and their rotary rows.
#[derive(Debug, Clone, Copy)]
pub struct GqaTokens<'a> {
    pub tokens: usize,
    /// `[tokens][heads · hd]` at a stride of `q_stride`.
    pub q: &'a [f32],
    pub q_stride: usize,
    /// `[tokens][kv_heads · hd]` at a stride of `kv_stride`.
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub kv_stride: usize,
    /// `[rows][hd / 2]` each.
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    /// `[tokens]` rows of `cos` / `sin`.
    pub positions: &'a [i64],
}

impl GqaTokens<'_> {
    /// Checks `shape` and every length against it: the rows at their strides, one position id a token,
    /// equal cos / sin tables of whole rows, a cache of `capacity` positions a KV head with room for the
    /// new tokens after `past`, and the output. (Position ids are checked by the caller: the CPU kernel
    /// refuses ids outside the tables, the GPU's gives NaN for them.)
    pub fn check(
        &self,
        shape: GqaShape,
        capacity: usize,
        past: usize,
        cache_k: usize,
        cache_v: usize,
        out: usize,
    ) -> Result<()> {
        shape.validate()?;
        let (h, kvh, hd, s_len) = (shape.heads, shape.kv_heads, shape.head_dim, self.tokens);
        if past + s_len > capacity {
            return Err(Error::Attention(format!(
                "{past} cached + {s_len} new positions exceed the cache's capacity {capacity}"
            )));
        }
        let need = |what: &'static str, len: usize, stride: usize, width: usize| -> Result<()> {
            let want = if s_len == 0 { 0 } else { (s_len - 1) * stride + width };
            if stride < width || len < want {
                return Err(Error::Attention(format!(
                    "{what}: {len} floats at a stride of {stride} for {s_len} tokens of {width}"
                )));
            }
            Ok(())
        };
        need("q", self.q.len(), self.q_stride, h * hd)?;
        need("k", self.k.len(), self.kv_stride, kvh * hd)?;
        need("v", self.v.len(), self.kv_stride, kvh * hd)?;
        crate::layout::expect_len("attention position_ids", s_len, self.positions.len())?;
        crate::layout::expect_len("attention cache k", kvh * capacity * hd, cache_k)?;
        crate::layout::expect_len("attention cache v", kvh * capacity * hd, cache_v)?;
        crate::layout::expect_len("attention output", s_len * h * hd, out)?;
        let half = hd / 2;
        if self.cos.len() != self.sin.len() || !self.cos.len().is_multiple_of(half) {
            return Err(Error::Attention(format!(
                "rotary caches: cos {} and sin {} floats (expected equal, rows of {half})",
                self.cos.len(),
                self.sin.len()
            )));
        }
        Ok(())
    }
}

/// The KV cache: `[kv_heads][capacity][hd]` each, positions `0..past` filled.
pub struct KvCache<'a> {
    pub k: &'a mut [f32],
    pub v: &'a mut [f32],
    pub capacity: usize,
    pub past: usize,
}

/// Query tokens per task (a task is one KV head and a block of tokens).
const TOKEN_BLOCK: usize = 16;

/// The builds of the attention's loops (the GEMMs are `matrixmultiply`'s, which picks its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionBuild {
    /// Plain f32 (libm's `expf`).
    Portable,
    /// AVX2 + FMA: 8-lane dot products, weighted sums and exponentials.
    Avx2,
    /// AVX-512F: the same in 16 lanes.
    Avx512,
}

impl AttentionBuild {
    pub const ALL: [AttentionBuild; 3] = [AttentionBuild::Portable, AttentionBuild::Avx2, AttentionBuild::Avx512];
    /// The build's name and the CPU features it needs (none for the portable one).
    fn build(self) -> (&'static str, Option<Features>) {
        match self {
            AttentionBuild::Portable => ("portable", None),
            AttentionBuild::Avx2 => ("AVX2", Some(Features::Avx2)),
            AttentionBuild::Avx512 => ("AVX-512", Some(Features::Avx512)),
        }
    }
    /// Whether this CPU runs the build.
    pub fn available(self) -> bool {
        super::features::runs(self.build().1)
    }
    /// The fastest build this CPU runs (under the [`super::ceiling`], if one is set).
    pub fn best() -> Self {
        use super::ceiling::{BuildCeiling, allows};
        [(AttentionBuild::Avx512, BuildCeiling::Avx512), (AttentionBuild::Avx2, BuildCeiling::Avx2)]
            .into_iter()
            .find(|&(b, level)| allows(level) && b.available())
            .map_or(AttentionBuild::Portable, |(b, _)| b)
    }
}

/// Appends the call's rotated keys and values to `cache` at `past..past + tokens` and writes the
/// attention of each token over positions `0..=past + s` to `out` (`[tokens][heads · hd]`), with the
/// fastest build this CPU runs.
pub fn gqa(
    shape: GqaShape,
    x: &GqaTokens<'_>,
    cache: &mut KvCache<'_>,
    out: &mut [f32],
    par: &dyn Parallel,
) -> Result<()> {
    gqa_on(AttentionBuild::best(), shape, x, cache, out, par)
}

/// [`gqa`] with the loops of `build` (an error when this CPU lacks it).
pub fn gqa_on(
    build: AttentionBuild,
    shape: GqaShape,
    x: &GqaTokens<'_>,
    cache: &mut KvCache<'_>,
    out: &mut [f32],
    par: &dyn Parallel,
) -> Result<()> {
    if !build.available() {
        return Err(super::features::unsupported("attention", build.build()));
    }
    x.check(shape, cache.capacity, cache.past, cache.k.len(), cache.v.len(), out.len())?;
    let (h, kvh, hd) = (shape.heads, shape.kv_heads, shape.head_dim);
    let (s_len, half, group) = (x.tokens, hd / 2, h / kvh);
    let rows = x.cos.len() / half;
    let mut table = Vec::with_capacity(s_len);
    for (s, &p) in x.positions.iter().enumerate() {
        match usize::try_from(p) {
            Ok(p) if p < rows => table.push(p * half),
            _ => {
                return Err(Error::Attention(format!(
                    "position_ids[{s}] = {p} outside the rotary cache's {rows} rows"
                )));
            }
        }
    }
    if s_len == 0 {
        return Ok(());
    }

    // Rotated queries grouped by KV head, `[kv_heads][tokens][group][hd]`: a task's rows are contiguous.
    let mut qr = vec![0.0f32; s_len * h * hd];
    let rotate = |src: &[f32], dst: &mut [f32], at: usize| {
        let (cos, sin) = (&x.cos[at..at + half], &x.sin[at..at + half]);
        for i in 0..half {
            let (a, b) = (src[i], src[i + half]);
            dst[i] = a * cos[i] - b * sin[i];
            dst[i + half] = b * cos[i] + a * sin[i];
        }
    };
    for (s, &at) in table.iter().enumerate() {
        let q = &x.q[s * x.q_stride..s * x.q_stride + h * hd];
        for (head, src) in q.chunks_exact(hd).enumerate() {
            let (g, j) = (head / group, head % group);
            let o = ((g * s_len + s) * group + j) * hd;
            rotate(src, &mut qr[o..o + hd], at);
        }
        let k = &x.k[s * x.kv_stride..s * x.kv_stride + kvh * hd];
        let v = &x.v[s * x.kv_stride..s * x.kv_stride + kvh * hd];
        for g in 0..kvh {
            let o = (g * cache.capacity + cache.past + s) * hd;
            rotate(&k[g * hd..(g + 1) * hd], &mut cache.k[o..o + hd], at);
            cache.v[o..o + hd].copy_from_slice(&v[g * hd..(g + 1) * hd]);
        }
    }

    let (kc, vc, cap, past) = (&*cache.k, &*cache.v, cache.capacity, cache.past);
    let dst = super::Output { ptr: out.as_mut_ptr(), len: out.len() };
    let scale = shape.scale();
    // A task's result rows, (token, head in group) order, to `out`.
    let scatter = |g: usize, s0: usize, rows: &[f32]| {
        for (r, row) in rows.chunks_exact(hd).enumerate() {
            let (s, j) = (s0 + r / group, r % group);
            let base = s * h * hd + (g * group + j) * hd;
            // SAFETY: each (token, head) row of `out` belongs to exactly one task.
            unsafe { dst.write_slice(base, row) };
        }
    };
    if s_len <= DIRECT_TOKENS {
        // One task per KV head and token: its group's rows against the visible keys, read once.
        let task = |t: usize| {
            let (g, s) = (t / s_len, t % s_len);
            let n = past + s + 1;
            let q = &qr[((g * s_len + s) * group) * hd..((g * s_len + s + 1) * group) * hd];
            let keys = &kc[g * cap * hd..(g * cap + n) * hd];
            let values = &vc[g * cap * hd..(g * cap + n) * hd];
            let mut p = vec![0.0f32; group * n];
            let mut o = vec![0.0f32; group * hd];
            attend_rows(build, &Attend { q, keys, values, hd, scale }, &mut p, &mut o);
            scatter(g, s, &o);
        };
        par.run(kvh * s_len, &task);
        return Ok(());
    }
    let blocks = s_len.div_ceil(TOKEN_BLOCK);
    let task = |t: usize| {
        let (g, b) = (t / blocks, t % blocks);
        let s0 = b * TOKEN_BLOCK;
        let sb = TOKEN_BLOCK.min(s_len - s0);
        let m = sb * group;
        // Keys this block can see: up to its last token's position.
        let n = past + s0 + sb;
        let a = &qr[((g * s_len + s0) * group) * hd..((g * s_len + s0 + sb) * group) * hd];
        let keys = &kc[g * cap * hd..(g * cap + n) * hd];
        let values = &vc[g * cap * hd..(g * cap + n) * hd];
        let mut p = vec![0.0f32; m * n];
        // SAFETY: a is m × hd (row stride hd), keysᵀ is hd × n (key t's row is column t), p is m × n;
        // every index the strides reach lies inside those slices.
        unsafe {
            matrixmultiply::sgemm(
                m,
                hd,
                n,
                scale,
                a.as_ptr(),
                hd as isize,
                1,
                keys.as_ptr(),
                1,
                hd as isize,
                0.0,
                p.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        for (r, row) in p.chunks_exact_mut(n).enumerate() {
            let visible = past + s0 + r / group + 1;
            softmax_prefix(row, visible, build);
        }
        let mut o = vec![0.0f32; m * hd];
        // SAFETY: p is m × n, values n × hd, o m × hd, all row-major and in bounds.
        unsafe {
            matrixmultiply::sgemm(
                m,
                n,
                hd,
                1.0,
                p.as_ptr(),
                n as isize,
                1,
                values.as_ptr(),
                hd as isize,
                1,
                0.0,
                o.as_mut_ptr(),
                hd as isize,
                1,
            );
        }
        scatter(g, s0, &o);
    };
    par.run(kvh * blocks, &task);
    Ok(())
}

/// Calls of at most this many tokens (decode, forced and speculated runs) take the direct loop: per KV
/// head and token, each key and value read once for the whole group; longer ones (prefill) the GEMMs.
const DIRECT_TOKENS: usize = 4;

/// One direct call's inputs: `rows` query rows `q` (`rows × hd`) against all of `keys` / `values`
/// (`n × hd` each), the scores scaled by `scale`.
struct Attend<'a> {
    q: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    hd: usize,
    scale: f32,
}

/// `o` (`rows × hd`) = softmax(scale · q · keysᵀ) · values; `p` is `rows × n` scratch. The caller
/// checked that the CPU runs `build`.
fn attend_rows(build: AttentionBuild, x: &Attend<'_>, p: &mut [f32], o: &mut [f32]) {
    match build {
        // SAFETY: the caller checked the CPU's features for the build.
        #[cfg(target_arch = "x86_64")]
        AttentionBuild::Avx2 => unsafe { simd::attend_rows_avx2(x, p, o) },
        #[cfg(target_arch = "x86_64")]
        AttentionBuild::Avx512 => unsafe { simd::attend_rows_avx512(x, p, o) },
        _ => attend_rows_portable(x, p, o),
    }
}

/// The same in plain f32 (CPUs without AVX2 and FMA).
fn attend_rows_portable(x: &Attend<'_>, p: &mut [f32], o: &mut [f32]) {
    let &Attend { q, keys, values, hd, scale } = x;
    let n = keys.len() / hd;
    for (t, k) in keys.chunks_exact(hd).enumerate() {
        for (j, qj) in q.chunks_exact(hd).enumerate() {
            p[j * n + t] = scale * qj.iter().zip(k).map(|(a, b)| a * b).sum::<f32>();
        }
    }
    for row in p.chunks_exact_mut(n) {
        softmax_prefix_portable(row, n);
    }
    o.fill(0.0);
    for (t, v) in values.chunks_exact(hd).enumerate() {
        for (j, oj) in o.chunks_exact_mut(hd).enumerate() {
            let w = p[j * n + t];
            oj.iter_mut().zip(v).for_each(|(y, x)| *y += w * x);
        }
    }
}

/// Value rows per block of the weighted sum: 32 rows of head_dim 128 are 16 KiB, inside L1, where they
/// are re-read once per query row and 8 registers of output columns.
const VALUE_BLOCK: usize = 32;

/// Softmax over `row[..visible]` (max subtracted), zeros after it, with `build`'s exponentials (the
/// caller checked the CPU).
fn softmax_prefix(row: &mut [f32], visible: usize, build: AttentionBuild) {
    match build {
        // SAFETY: the caller checked the CPU's features for the build.
        #[cfg(target_arch = "x86_64")]
        AttentionBuild::Avx2 => unsafe { simd::softmax_avx2(row, visible) },
        #[cfg(target_arch = "x86_64")]
        AttentionBuild::Avx512 => unsafe { simd::softmax_avx512(row, visible) },
        _ => softmax_prefix_portable(row, visible),
    }
}

fn softmax_prefix_portable(row: &mut [f32], visible: usize) {
    let (live, masked) = row.split_at_mut(visible.min(row.len()));
    let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in live.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    live.iter_mut().for_each(|v| *v *= inv);
    masked.fill(0.0);
}

/// The SIMD builds: one generic loop over a register type ([`simd::Lanes`]: 8 lanes with AVX2+FMA, 16 with
/// AVX-512F), instantiated inside a `target_feature` function per build.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{Attend, VALUE_BLOCK};
    use std::arch::x86_64::*;

    /// One register of f32 lanes.
    pub trait Lanes: Copy {
        const N: usize;
        unsafe fn zero() -> Self;
        unsafe fn splat(v: f32) -> Self;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn store(self, p: *mut f32);
        /// a · b + c, fused.
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
        /// c − a · b, fused.
        unsafe fn fnmadd(a: Self, b: Self, c: Self) -> Self;
        unsafe fn mul(a: Self, b: Self) -> Self;
        unsafe fn add(a: Self, b: Self) -> Self;
        unsafe fn sub(a: Self, b: Self) -> Self;
        unsafe fn sum(self) -> f32;
        /// e^x per lane for x ≤ 0 (softmax after the max is taken off): x = n·ln 2 + r with |r| ≤ ln 2 / 2,
        /// e^r by Cephes' degree-6 polynomial for `expf` (relative error ~1e-7), times 2^n; below −87.3
        /// (2^−126) the result is 0.
        unsafe fn exp(self) -> Self;
    }

    use crate::cpu::expf::{EXP_MIN, EXP_POLY, LN2_HI, LN2_LO};

    /// n = round(x / ln 2) and the polynomial e^r, for the builds' own 2^n.
    #[inline(always)]
    unsafe fn exp_parts<V: Lanes>(x: V, round: impl Fn(V) -> V) -> (V, V) {
        unsafe {
            let n = round(V::mul(x, V::splat(std::f32::consts::LOG2_E)));
            let r = V::fnmadd(n, V::splat(LN2_HI), x);
            let r = V::fnmadd(n, V::splat(LN2_LO), r);
            let mut p = V::splat(EXP_POLY[0]);
            for c in &EXP_POLY[1..] {
                p = V::fmadd(p, r, V::splat(*c));
            }
            let y = V::add(V::fmadd(V::mul(p, r), r, r), V::splat(1.0));
            (n, y)
        }
    }

    /// The methods both register types spell alike, by their intrinsics' names.
    macro_rules! lanes {
        ($n:expr, $zero:ident, $splat:ident, $load:ident, $store:ident, $fmadd:ident, $fnmadd:ident, $mul:ident, $add:ident, $sub:ident) => {
            const N: usize = $n;
            #[inline(always)]
            unsafe fn zero() -> Self {
                unsafe { $zero() }
            }
            #[inline(always)]
            unsafe fn splat(v: f32) -> Self {
                unsafe { $splat(v) }
            }
            #[inline(always)]
            unsafe fn load(p: *const f32) -> Self {
                unsafe { $load(p) }
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut f32) {
                unsafe { $store(p, self) }
            }
            #[inline(always)]
            unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
                unsafe { $fmadd(a, b, c) }
            }
            #[inline(always)]
            unsafe fn fnmadd(a: Self, b: Self, c: Self) -> Self {
                unsafe { $fnmadd(a, b, c) }
            }
            #[inline(always)]
            unsafe fn mul(a: Self, b: Self) -> Self {
                unsafe { $mul(a, b) }
            }
            #[inline(always)]
            unsafe fn add(a: Self, b: Self) -> Self {
                unsafe { $add(a, b) }
            }
            #[inline(always)]
            unsafe fn sub(a: Self, b: Self) -> Self {
                unsafe { $sub(a, b) }
            }
        };
    }

    impl Lanes for __m256 {
        lanes!(
            8,
            _mm256_setzero_ps,
            _mm256_set1_ps,
            _mm256_loadu_ps,
            _mm256_storeu_ps,
            _mm256_fmadd_ps,
            _mm256_fnmadd_ps,
            _mm256_mul_ps,
            _mm256_add_ps,
            _mm256_sub_ps
        );
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(self), _mm256_extractf128_ps::<1>(self));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
            }
        }
        /// 2^n built in the exponent bits.
        #[inline(always)]
        unsafe fn exp(self) -> Self {
            unsafe {
                let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(self, _mm256_set1_ps(EXP_MIN));
                let x = _mm256_max_ps(self, _mm256_set1_ps(EXP_MIN));
                let (n, y) = exp_parts(x, |v| _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v));
                let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
                _mm256_andnot_ps(tiny, _mm256_mul_ps(y, _mm256_castsi256_ps(bits)))
            }
        }
    }

    impl Lanes for __m512 {
        lanes!(
            16,
            _mm512_setzero_ps,
            _mm512_set1_ps,
            _mm512_loadu_ps,
            _mm512_storeu_ps,
            _mm512_fmadd_ps,
            _mm512_fnmadd_ps,
            _mm512_mul_ps,
            _mm512_add_ps,
            _mm512_sub_ps
        );
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            unsafe { _mm512_reduce_add_ps(self) }
        }
        /// 2^n by `vscalefps`.
        #[inline(always)]
        unsafe fn exp(self) -> Self {
            unsafe {
                let live = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(self, _mm512_set1_ps(EXP_MIN));
                let x = _mm512_max_ps(self, _mm512_set1_ps(EXP_MIN));
                let (n, y) =
                    exp_parts(x, |v| _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v));
                _mm512_maskz_mov_ps(live, _mm512_scalef_ps(y, n))
            }
        }
    }

    /// Σ a·b over two rows of equal length: two registers of lanes, then one, then the tail.
    #[inline(always)]
    unsafe fn dot<V: Lanes>(a: &[f32], b: &[f32]) -> f32 {
        let len = a.len().min(b.len());
        let n = V::N;
        let mut i = 0;
        // SAFETY: every load reads V::N floats below len.
        unsafe {
            let (mut x, mut y) = (V::zero(), V::zero());
            while i + 2 * n <= len {
                x = V::fmadd(V::load(a.as_ptr().add(i)), V::load(b.as_ptr().add(i)), x);
                y = V::fmadd(V::load(a.as_ptr().add(i + n)), V::load(b.as_ptr().add(i + n)), y);
                i += 2 * n;
            }
            if i + n <= len {
                x = V::fmadd(V::load(a.as_ptr().add(i)), V::load(b.as_ptr().add(i)), x);
                i += n;
            }
            let tail: f32 = a[i..len].iter().zip(&b[i..len]).map(|(a, b)| a * b).sum();
            V::add(x, y).sum() + tail
        }
    }

    /// Softmax over `row[..visible]` with the lanes' `exp`, zeros after it.
    #[inline(always)]
    unsafe fn softmax<V: Lanes>(row: &mut [f32], visible: usize) {
        let (live, masked) = row.split_at_mut(visible.min(row.len()));
        let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let whole = live.len() / V::N * V::N;
        let (chunks, tail) = live.split_at_mut(whole);
        // SAFETY: each load and store covers V::N floats of `chunks`.
        let mut sum = unsafe {
            let m = V::splat(max);
            let mut acc = V::zero();
            for c in chunks.chunks_exact_mut(V::N) {
                let e = V::sub(V::load(c.as_ptr()), m).exp();
                acc = V::add(acc, e);
                e.store(c.as_mut_ptr());
            }
            acc.sum()
        };
        for v in tail.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        live.iter_mut().for_each(|v| *v *= inv);
        masked.fill(0.0);
    }

    /// [`super::attend_rows`] in lanes: the scores a dot product each, the softmax, then per block of
    /// value rows and query row 8 registers of output columns (64 with AVX2, 128 with AVX-512), then one,
    /// then the tail.
    #[inline(always)]
    unsafe fn attend<V: Lanes>(x: &Attend<'_>, p: &mut [f32], o: &mut [f32]) {
        let &Attend { q, keys, values, hd, scale } = x;
        let n = keys.len() / hd;
        for (t, k) in keys.chunks_exact(hd).enumerate() {
            for (j, qj) in q.chunks_exact(hd).enumerate() {
                // SAFETY: the caller's target features are V's.
                p[j * n + t] = scale * unsafe { dot::<V>(qj, k) };
            }
        }
        for row in p.chunks_exact_mut(n) {
            // SAFETY: as above.
            unsafe { softmax::<V>(row, n) };
        }
        o.fill(0.0);
        let (wide, narrow) = (hd / (8 * V::N) * 8 * V::N, hd / V::N * V::N);
        for tb in (0..n).step_by(VALUE_BLOCK) {
            let te = (tb + VALUE_BLOCK).min(n);
            for (j, oj) in o.chunks_exact_mut(hd).enumerate() {
                let w = &p[j * n + tb..j * n + te];
                // SAFETY: every load and store covers V::N floats inside `y` or a value row's `c..c + 8·N`
                // (or `c..c + N`), all below hd.
                unsafe {
                    for c in (0..wide).step_by(8 * V::N) {
                        let y = &mut oj[c..c + 8 * V::N];
                        let mut acc: [V; 8] = std::array::from_fn(|i| V::load(y.as_ptr().add(i * V::N)));
                        for (t, &wt) in (tb..te).zip(w) {
                            let wv = V::splat(wt);
                            let v = &values[t * hd + c..t * hd + c + 8 * V::N];
                            for (i, a) in acc.iter_mut().enumerate() {
                                *a = V::fmadd(wv, V::load(v.as_ptr().add(i * V::N)), *a);
                            }
                        }
                        for (i, a) in acc.iter().enumerate() {
                            a.store(y.as_mut_ptr().add(i * V::N));
                        }
                    }
                    for c in (wide..narrow).step_by(V::N) {
                        let y = &mut oj[c..c + V::N];
                        let mut a = V::load(y.as_ptr());
                        for (t, &wt) in (tb..te).zip(w) {
                            a = V::fmadd(V::splat(wt), V::load(values[t * hd + c..t * hd + c + V::N].as_ptr()), a);
                        }
                        a.store(y.as_mut_ptr());
                    }
                }
                for (d, y) in oj.iter_mut().enumerate().skip(narrow) {
                    *y = (tb..te).zip(w).fold(*y, |acc, (t, &wt)| wt.mul_add(values[t * hd + d], acc));
                }
            }
        }
    }

    /// A build's entry points: the loop and the softmax instantiated for its register type inside a
    /// function compiled with its target features.
    macro_rules! build {
        ($features:literal, $lanes:ty, $attend:ident, $softmax:ident) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $attend(x: &Attend<'_>, p: &mut [f32], o: &mut [f32]) {
                // SAFETY: the build's features are enabled here.
                unsafe { attend::<$lanes>(x, p, o) }
            }

            #[target_feature(enable = $features)]
            pub unsafe fn $softmax(row: &mut [f32], visible: usize) {
                // SAFETY: as above.
                unsafe { softmax::<$lanes>(row, visible) }
            }
        };
    }

    build!("avx2,fma", __m256, attend_rows_avx2, softmax_avx2);
    build!("avx512f", __m512, attend_rows_avx512, softmax_avx512);
}
