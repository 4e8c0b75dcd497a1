//! The same two ops on the CPU for f32 activations, with the weights dequantized inside the matmul loop:
//! a task owns [`ROWS`] weight rows, dequantizes [`K_CHUNK`] columns of them at a time into an 8 KiB
//! scratch tile (L1-resident) and runs every activation row over it. Full-size f32 weights never exist,
//! unlike ORT's DequantizeLinear → MatMul, which folds fp8 weights to f32 at load (4× the memory).
//! Compiled twice, for AVX-512 and for the baseline target, picked at run time.

use crate::error::Result;
use crate::layout::{Fp8Scales, Fp8Weights, Int4Weights, check_io, fp8_to_f32};

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
    unsafe fn write(&self, i: usize, v: f32) {
        assert!(i < self.len);
        unsafe { *self.ptr.add(i) = v }
    }
}

/// How one task turns a row's columns `k0..k0 + len` into f32 (`dst` is K_CHUNK long; int4 may write one
/// padding value past `len`).
trait Dequant: Sync {
    fn n(&self) -> usize;
    fn k(&self) -> usize;
    fn fill(&self, row: usize, k0: usize, len: usize, dst: &mut [f32]);
}

struct Int4<'a>(&'a Int4Weights<'a, f32>);
impl Dequant for Int4<'_> {
    fn n(&self) -> usize {
        self.0.layout.n
    }
    fn k(&self) -> usize {
        self.0.layout.k
    }
    #[inline(always)]
    fn fill(&self, row: usize, k0: usize, len: usize, dst: &mut [f32]) {
        let l = self.0.layout;
        let kb = l.k_blocks();
        let row_bytes = &self.0.b[row * kb * l.block / 2..(row + 1) * kb * l.block / 2];
        let mut kk = 0;
        while kk < len {
            let k = k0 + kk;
            let blk = k / l.block;
            let take = (l.block - k % l.block).min(len - kk).div_ceil(2) * 2;
            let s = self.0.scales[row * kb + blk];
            let z = match self.0.zero_points {
                Some(zp) => {
                    let zb = zp[row * kb.div_ceil(2) + blk / 2];
                    (if blk.is_multiple_of(2) { zb & 0xF } else { zb >> 4 }) as f32
                }
                None => 8.0,
            };
            let bytes = &row_bytes[k / 2..k / 2 + take / 2];
            let out = &mut dst[kk..kk + take];
            for (pair, &byte) in out.chunks_exact_mut(2).zip(bytes) {
                pair[0] = ((byte & 0xF) as f32 - z) * s;
                pair[1] = ((byte >> 4) as f32 - z) * s;
            }
            kk += take;
        }
    }
}

struct Fp8<'a> {
    w: &'a Fp8Weights<'a, f32>,
    lut: [f32; 256],
}
impl Dequant for Fp8<'_> {
    fn n(&self) -> usize {
        self.w.layout.n
    }
    fn k(&self) -> usize {
        self.w.layout.k
    }
    #[inline(always)]
    fn fill(&self, row: usize, k0: usize, len: usize, dst: &mut [f32]) {
        let l = self.w.layout;
        let bytes = &self.w.w[row * l.k + k0..row * l.k + k0 + len];
        match l.scales {
            Fp8Scales::PerChannel => {
                let s = self.w.scales[row];
                for (d, &b) in dst[..len].iter_mut().zip(bytes) {
                    *d = self.lut[b as usize] * s;
                }
            }
            Fp8Scales::PerBlock(block) => {
                let kb = l.k.div_ceil(block);
                for (i, (d, &b)) in dst[..len].iter_mut().zip(bytes).enumerate() {
                    *d = self.lut[b as usize] * self.w.scales[row * kb + (k0 + i) / block];
                }
            }
        }
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = a.len() / 16 * 16;
    for (x, y) in a[..chunks].chunks_exact(16).zip(b[..chunks].chunks_exact(16)) {
        for i in 0..16 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in a[chunks..].iter().zip(&b[chunks..]) {
        s = x.mul_add(*y, s);
    }
    s
}

#[inline(always)]
fn task_body<D: Dequant>(d: &D, a: &[f32], m: usize, task: usize, y: &Output) {
    let (n, k) = (d.n(), d.k());
    let r0 = task * ROWS;
    let rows = ROWS.min(n - r0);
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
                acc[i * rows + r] += dot(arow, &tile[r * K_CHUNK..r * K_CHUNK + len]);
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
unsafe fn task_avx512<D: Dequant>(d: &D, a: &[f32], m: usize, task: usize, y: &Output) {
    task_body(d, a, m, task, y)
}

/// Whether the AVX-512 build of the loop runs on this CPU.
pub fn uses_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn run<D: Dequant>(d: &D, a: &[f32], m: usize, y: &mut [f32], par: &dyn Parallel) {
    let out = Output { ptr: y.as_mut_ptr(), len: y.len() };
    let tasks = d.n().div_ceil(ROWS);
    let avx512 = uses_avx512();
    par.run(tasks, &|t| {
        #[cfg(target_arch = "x86_64")]
        if avx512 {
            // SAFETY: the CPU has the features (checked above).
            unsafe { task_avx512(d, a, m, t, &out) };
            return;
        }
        let _ = avx512;
        task_body(d, a, m, t, &out);
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
    let mut lut = [0.0f32; 256];
    for (i, v) in lut.iter_mut().enumerate() {
        *v = fp8_to_f32(i as u8);
    }
    run(&Fp8 { w, lut }, a, m, y, par);
    Ok(())
}
