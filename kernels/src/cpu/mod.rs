//! The same two ops on the CPU for f32 activations, with the weights dequantized inside the matmul loop:
//! a task owns [`ROWS`] weight rows, dequantizes [`K_CHUNK`] columns of them at a time into an 8 KiB
//! scratch tile (L1-resident) and runs every activation row over it. Full-size f32 weights never exist,
//! unlike ORT's DequantizeLinear → MatMul, which folds fp8 weights to f32 at load (4× the memory).
//! Compiled three times, for AVX-512, AVX2+FMA and the baseline target, picked at run time.
//!
//! [`int8`]: int4 weights with the activations quantized to int8 (the decode GEMV).

pub mod attention;
pub mod ceiling;
mod expf;
mod features;
pub mod int8;
pub mod tiles;

pub use attention::{AttentionBuild, GqaShape, GqaTokens, KvCache, gqa, gqa_on};
pub use ceiling::{BuildCeiling, build_ceiling, set_build_ceiling};
pub use int8::{Int4Scale, Int8Isa, int4_matmul_int8, int4_matmul_int8_on, int8_isa};
pub use tiles::{
    Int4Tiles, TileLayout, Tiled, WeightBits, int4_tiles_matmul_int8, int4_tiles_matmul_int8_on,
    int4_tiles_swiglu_int8, int4_tiles_swiglu_int8_on, swiglu_pairs, tile, tile_int8,
};

use crate::error::Result;
use crate::layout::{Fp8Scales, Fp8Weights, Int4Weights, check_io};

/// Weight rows per task.
pub const ROWS: usize = 8;
/// Columns dequantized per step (a multiple of every int4 block size: 32, 64, 128, 256).
pub const K_CHUNK: usize = 256;

/// Runs `tasks` independent tasks, perhaps in parallel (ORT's thread pool in the custom op).
pub trait Parallel {
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync));
}

/// Runs tasks one after another.
pub struct Serial;
impl Parallel for Serial {
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        (0..tasks).for_each(f);
    }
}

/// Runs tasks on `threads` scoped std threads.
pub struct Threads(pub usize);
impl Parallel for Threads {
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..self.0.max(1) {
                s.spawn(|| {
                    loop {
                        let t = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if t >= tasks {
                            break;
                        }
                        f(t);
                    }
                });
            }
        });
    }
}

/// The output, written by tasks that own disjoint columns.
struct Output {
    ptr: *mut f32,
    len: usize,
}
// SAFETY: tasks write disjoint indices (their own columns); see write().
unsafe impl Sync for Output {}
impl Output {
    /// # Safety
    /// No two tasks may write the same index.
    #[inline(always)]
    unsafe fn write(&self, i: usize, v: f32) {
        assert!(i < self.len);
        unsafe { *self.ptr.add(i) = v }
    }
    /// `v` at `i..i + v.len()`.
    ///
    /// # Safety
    /// No two tasks may write the same index.
    #[inline(always)]
    unsafe fn write_slice(&self, i: usize, v: &[f32]) {
        assert!(i <= self.len && v.len() <= self.len - i);
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), self.ptr.add(i), v.len()) }
    }
}

/// How one task turns a row's columns `k0..k0 + len` into f32 in `dst` (K_CHUNK long).
trait Dequant: Sync {
    fn n(&self) -> usize;
    fn k(&self) -> usize;
    /// The row length the weights occupy (K, or K padded to whole blocks) and the order of the values:
    /// int4 writes each group of 32 as its 16 low nibbles (even columns) then its 16 high nibbles (odd
    /// columns), which vectorizes; the activations are permuted to match once per call.
    fn padded_k(&self) -> usize;
    fn nibble_order(&self) -> bool;
    fn fill(&self, row: usize, k0: usize, len: usize, dst: &mut [f32]);
    /// Decode path (few activation rows): `acc[i] += a_i · row` straight from the quantized bytes, no
    /// tile. `a` is arranged (see [`arrange`]); `sums[i * groups + g]` is Σ of group g of row i.
    fn dot_rows<const FMA: bool>(&self, row: usize, a: &[f32], sums: &[f32], m: usize, acc: &mut [f32]);
}

struct Int4<'a>(&'a Int4Weights<'a, f32>);

impl Int4<'_> {
    /// Scale and zero point of block `blk` of `row`.
    #[inline(always)]
    fn scale_zero(&self, row: usize, blk: usize) -> (f32, f32) {
        let kb = self.0.layout.k_blocks();
        let z = match self.0.zero_points {
            Some(zp) => {
                let zb = zp[row * kb.div_ceil(2) + blk / 2];
                (if blk.is_multiple_of(2) { zb & 0xF } else { zb >> 4 }) as f32
            }
            None => 8.0,
        };
        (self.0.scales[row * kb + blk], z)
    }
}
impl Dequant for Int4<'_> {
    fn n(&self) -> usize {
        self.0.layout.n
    }
    fn k(&self) -> usize {
        self.0.layout.k
    }
    fn padded_k(&self) -> usize {
        self.0.layout.k_blocks() * self.0.layout.block
    }
    fn nibble_order(&self) -> bool {
        true
    }
    #[inline(always)]
    fn dot_rows<const FMA: bool>(&self, row: usize, a: &[f32], sums: &[f32], m: usize, acc: &mut [f32]) {
        let l = self.0.layout;
        let kb = l.k_blocks();
        let kp = kb * l.block;
        let groups = kp / 32;
        let row_bytes = &self.0.b[row * kp / 2..(row + 1) * kp / 2];
        let mut lane_acc = [[0.0f32; 16]; DIRECT_MAX_M];
        let mut correction = [0.0f32; DIRECT_MAX_M];
        for (g, bytes) in row_bytes.chunks_exact(16).enumerate() {
            let blk = 32 * g / l.block;
            let (s, z) = self.scale_zero(row, blk);
            let Ok(bytes) = <&[u8; 16]>::try_from(bytes) else { unreachable!() };
            let mut lo = [0.0f32; 16];
            let mut hi = [0.0f32; 16];
            for j in 0..16 {
                lo[j] = (bytes[j] & 0xF) as f32;
                hi[j] = (bytes[j] >> 4) as f32;
            }
            for i in 0..m {
                let Ok(ai) = <&[f32; 32]>::try_from(&a[i * kp + 32 * g..i * kp + 32 * g + 32]) else { unreachable!() };
                // Lane-wise products scaled into 16 lane accumulators: no horizontal sum per group.
                let lanes = &mut lane_acc[i];
                for j in 0..16 {
                    let p = madd::<FMA>(ai[16 + j], hi[j], ai[j] * lo[j]);
                    lanes[j] = madd::<FMA>(s, p, lanes[j]);
                }
                // Σ a (q − z) s = s Σ a q − s z Σ a
                correction[i] = madd::<FMA>(s * z, sums[i * groups + g], correction[i]);
            }
        }
        for i in 0..m {
            acc[i] += lane_acc[i].iter().sum::<f32>() - correction[i];
        }
    }

    #[inline(always)]
    fn fill(&self, row: usize, k0: usize, len: usize, dst: &mut [f32]) {
        let l = self.0.layout;
        let kb = l.k_blocks();
        let row_bytes = &self.0.b[row * kb * l.block / 2..(row + 1) * kb * l.block / 2];
        // k0 and len are multiples of 32 (K_CHUNK and the padded row are), so groups never straddle blocks.
        for (g, out) in dst[..len].chunks_exact_mut(32).enumerate() {
            let k = k0 + 32 * g;
            let blk = k / l.block;
            let (s, z) = self.scale_zero(row, blk);
            // Fixed-size views: no bounds checks, so the loop vectorizes.
            let Ok(bytes) = <&[u8; 16]>::try_from(&row_bytes[k / 2..k / 2 + 16]) else { unreachable!() };
            let Ok(out) = <&mut [f32; 32]>::try_from(out) else { unreachable!() };
            for j in 0..16 {
                out[j] = ((bytes[j] & 0xF) as f32 - z) * s;
                out[16 + j] = ((bytes[j] >> 4) as f32 - z) * s;
            }
        }
    }
}

/// E4M3FN → f32 with integer ops only (vectorizes): the 7 exponent+mantissa bits under f32's exponent
/// field give the value × 2⁻¹²⁰ for normals and subnormals alike (as in fp8_matmul.cu). NaN codes are not
/// NaN here; the exporter never writes them.
#[inline(always)]
fn fp8_bits(b: u8) -> f32 {
    let b = b as u32;
    f32::from_bits(((b & 0x80) << 24) | ((b & 0x7F) << 20)) * f32::from_bits(0x7b80_0000)
}

struct Fp8<'a> {
    w: &'a Fp8Weights<'a, f32>,
}
impl Dequant for Fp8<'_> {
    fn n(&self) -> usize {
        self.w.layout.n
    }
    fn k(&self) -> usize {
        self.w.layout.k
    }
    fn padded_k(&self) -> usize {
        self.w.layout.k
    }
    fn nibble_order(&self) -> bool {
        false
    }
    #[inline(always)]
    fn dot_rows<const FMA: bool>(&self, row: usize, a: &[f32], _sums: &[f32], m: usize, acc: &mut [f32]) {
        let k = self.w.layout.k;
        let mut tile = [0.0f32; K_CHUNK];
        let mut k0 = 0;
        while k0 < k {
            let len = K_CHUNK.min(k - k0);
            self.fill(row, k0, len, &mut tile);
            for i in 0..m {
                acc[i] += dot::<FMA>(&a[i * k + k0..i * k + k0 + len], &tile[..len]);
            }
            k0 += len;
        }
    }
    #[inline(always)]
    fn fill(&self, row: usize, k0: usize, len: usize, dst: &mut [f32]) {
        let l = self.w.layout;
        let bytes = &self.w.w[row * l.k + k0..row * l.k + k0 + len];
        match l.scales {
            Fp8Scales::PerChannel => {
                let s = self.w.scales[row];
                for (d, &b) in dst[..len].iter_mut().zip(bytes) {
                    *d = fp8_bits(b) * s;
                }
            }
            Fp8Scales::PerBlock(block) => {
                let kb = l.k.div_ceil(block);
                for (i, (d, &b)) in dst[..len].iter_mut().zip(bytes).enumerate() {
                    *d = fp8_bits(b) * self.w.scales[row * kb + (k0 + i) / block];
                }
            }
        }
    }
}

/// Activations in the weights' column order: rows padded with zeros to `padded_k`, and for int4 each
/// group of 32 as its 16 even columns then its 16 odd ones.
fn arrange(a: &[f32], m: usize, k: usize, padded_k: usize, nibble_order: bool) -> Vec<f32> {
    let mut out = vec![0.0f32; m * padded_k];
    for i in 0..m {
        let src = &a[i * k..(i + 1) * k];
        let dst = &mut out[i * padded_k..(i + 1) * padded_k];
        if !nibble_order {
            dst[..k].copy_from_slice(src);
            continue;
        }
        for (c, &v) in src.iter().enumerate() {
            let (g, j) = (c / 32, c % 32);
            dst[32 * g + if j % 2 == 0 { j / 2 } else { 16 + j / 2 }] = v;
        }
    }
    out
}

/// `x·y + acc`: one fused instruction where the build has FMA (inlined into the `fma` target-feature
/// functions below); elsewhere a plain multiply-add (`mul_add` would call libm's software fma there).
#[inline(always)]
fn madd<const FMA: bool>(x: f32, y: f32, acc: f32) -> f32 {
    if FMA { x.mul_add(y, acc) } else { x * y + acc }
}

/// Sixteen independent accumulators, which the compiler maps onto one AVX-512 or two AVX2 registers.
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = a.len() / 16 * 16;
    for (x, y) in a[..chunks].chunks_exact(16).zip(b[..chunks].chunks_exact(16)) {
        for i in 0..16 {
            acc[i] = madd::<FMA>(x[i], y[i], acc[i]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in a[chunks..].iter().zip(&b[chunks..]) {
        s = madd::<FMA>(*x, *y, s);
    }
    s
}

/// Up to this many activation rows read the weights straight from their bytes (decode, speculation);
/// more go through a dequantized tile that every row reuses (prefill).
pub const DIRECT_MAX_M: usize = 4;

#[inline(always)]
fn task_body<D: Dequant, const FMA: bool>(d: &D, a: &[f32], sums: &[f32], m: usize, task: usize, y: &Output) {
    let (n, k) = (d.n(), d.padded_k());
    let r0 = task * ROWS;
    let rows = ROWS.min(n - r0);
    if m <= DIRECT_MAX_M {
        for r in 0..rows {
            let mut acc = [0.0f32; DIRECT_MAX_M];
            d.dot_rows::<FMA>(r0 + r, a, sums, m, &mut acc);
            for (i, v) in acc[..m].iter().enumerate() {
                // SAFETY: column r0 + r belongs to this task alone.
                unsafe { y.write(i * n + r0 + r, *v) };
            }
        }
        return;
    }
    let mut tile = [0.0f32; ROWS * K_CHUNK];
    let mut acc = vec![0.0f32; m * rows];
    let mut k0 = 0;
    while k0 < k {
        let len = K_CHUNK.min(k - k0);
        for r in 0..rows {
            d.fill(r0 + r, k0, len, &mut tile[r * K_CHUNK..(r + 1) * K_CHUNK]);
        }
        for i in 0..m {
            let arow = &a[i * k + k0..i * k + k0 + len];
            for r in 0..rows {
                acc[i * rows + r] += dot::<FMA>(arow, &tile[r * K_CHUNK..r * K_CHUNK + len]);
            }
        }
        k0 += len;
    }
    for i in 0..m {
        for r in 0..rows {
            // SAFETY: column r0 + r belongs to this task alone.
            unsafe { y.write(i * n + r0 + r, acc[i * rows + r]) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn task_avx512<D: Dequant>(d: &D, a: &[f32], sums: &[f32], m: usize, task: usize, y: &Output) {
    task_body::<D, true>(d, a, sums, m, task, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn task_avx2<D: Dequant>(d: &D, a: &[f32], sums: &[f32], m: usize, task: usize, y: &Output) {
    task_body::<D, true>(d, a, sums, m, task, y)
}

/// The vector extension the loop runs with on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2Fma,
    Baseline,
}

/// Which build of the loop runs on this CPU (under the [`ceiling`], if one is set).
pub fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use ceiling::allows;
        use features::Features;
        if allows(BuildCeiling::Avx512) && Features::Avx512.present() {
            return Isa::Avx512;
        }
        if allows(BuildCeiling::Avx2) && Features::Avx2.present() {
            return Isa::Avx2Fma;
        }
    }
    Isa::Baseline
}

fn run<D: Dequant>(d: &D, a: &[f32], m: usize, y: &mut [f32], par: &dyn Parallel) {
    let arranged;
    let a = if d.padded_k() == d.k() && !d.nibble_order() {
        a
    } else {
        arranged = arrange(a, m, d.k(), d.padded_k(), d.nibble_order());
        &arranged[..]
    };
    // Σ of each group of 32 arranged activations (the zero-point term of the int4 decode path).
    let kp = d.padded_k();
    let sums: Vec<f32> = if d.nibble_order() && m <= DIRECT_MAX_M {
        a[..m * kp].chunks_exact(32).map(|g| g.iter().sum()).collect()
    } else {
        Vec::new()
    };
    let out = Output { ptr: y.as_mut_ptr(), len: y.len() };
    let tasks = d.n().div_ceil(ROWS);
    let isa = isa();
    par.run(tasks, &|t| match isa {
        // SAFETY: the CPU has the features (checked by isa()).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { task_avx512(d, a, &sums, m, t, &out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { task_avx2(d, a, &sums, m, t, &out) },
        _ => task_body::<D, false>(d, a, &sums, m, t, &out),
    });
}

/// `y[m, n] = a[m, k] · Wᵀ` for int4 MatMulNBits weights with f32 scales.
pub fn int4_matmul(a: &[f32], m: usize, w: &Int4Weights<'_, f32>, y: &mut [f32], par: &dyn Parallel) -> Result<()> {
    w.validate()?;
    check_io(m, w.layout.n, w.layout.k, a.len(), y.len())?;
    run(&Int4(w), a, m, y, par);
    Ok(())
}

/// `y[m, n] = a[m, k] · Wᵀ` for fp8 E4M3FN weights with f32 scales.
pub fn fp8_matmul(a: &[f32], m: usize, w: &Fp8Weights<'_, f32>, y: &mut [f32], par: &dyn Parallel) -> Result<()> {
    w.validate()?;
    check_io(m, w.layout.n, w.layout.k, a.len(), y.len())?;
    run(&Fp8 { w }, a, m, y, par);
    Ok(())
}
