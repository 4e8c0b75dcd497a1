//! The exact kernel sources run on the CPU (host/emulate.cpp on top of host/shim.hpp): every thread of a
//! block is a real thread, shared memory, barriers, warp shuffles and mma.sync fragments are emulated.
//! Slow (a thread per CUDA thread), for tests on small shapes only.

use std::ffi::{CString, c_char, c_int, c_uint, c_void};

use crate::cpu::{GqaShape, GqaTokens, KvCache};
use crate::error::{Error, Result};
use crate::gqa::{GqaArgs, GqaDims, GqaPointers};
use crate::launch::{Launch, Op, plan};
use crate::layout::{Activation, Fp8Weights, Int4Weights, check_io};

unsafe extern "C" {
    fn st_host_launch_int4(
        name: *const c_char,
        gx: c_uint,
        gy: c_uint,
        threads: c_uint,
        a: *const c_void,
        b: *const u8,
        scales: *const c_void,
        zp: *const u8,
        y: *mut c_void,
        m: c_int,
        n: c_int,
        k: c_int,
        block: c_int,
    ) -> c_int;
    fn st_host_launch_fp8(
        name: *const c_char,
        gx: c_uint,
        gy: c_uint,
        threads: c_uint,
        a: *const c_void,
        w: *const u8,
        scales: *const c_void,
        y: *mut c_void,
        m: c_int,
        n: c_int,
        k: c_int,
        block: c_int,
    ) -> c_int;
    fn st_host_launch_gqa(name: *const c_char, gx: c_uint, gy: c_uint, threads: c_uint, args: *const GqaArgs) -> c_int;
}

fn kernel_name(launch: &Launch, m: usize, n: usize) -> Result<CString> {
    if !launch.covers(m, n) {
        return Err(Error::Shape(format!("{} with grid {:?} does not cover [{m}, {n}]", launch.kernel, launch.grid)));
    }
    CString::new(launch.kernel.clone()).map_err(|_| Error::UnknownKernel(launch.kernel.clone()))
}

/// `y[m, n] = a[m, k] · Wᵀ` with the int4 kernel [`plan`] picks for `m`.
pub fn int4_matmul<T: Activation>(a: &[T], m: usize, w: &Int4Weights<'_, T>, y: &mut [T]) -> Result<()> {
    let launch = plan(Op::Int4, T::DTYPE, m, w.layout.n);
    int4_launch(&launch, a, m, w, y)
}

/// Runs one named int4 kernel (tests use it to force the GEMM path on small m).
pub fn int4_launch<T: Activation>(
    launch: &Launch,
    a: &[T],
    m: usize,
    w: &Int4Weights<'_, T>,
    y: &mut [T],
) -> Result<()> {
    w.validate()?;
    let l = w.layout;
    check_io(m, l.n, l.k, a.len(), y.len())?;
    let name = kernel_name(launch, m, l.n)?;
    let zp = w.zero_points.map_or(std::ptr::null(), |z| z.as_ptr());
    // SAFETY: lengths were checked against the layout above; the emulation only reads/writes within them.
    let rc = unsafe {
        st_host_launch_int4(
            name.as_ptr(),
            launch.grid.0,
            launch.grid.1,
            launch.threads,
            a.as_ptr().cast(),
            w.b.as_ptr(),
            w.scales.as_ptr().cast(),
            zp,
            y.as_mut_ptr().cast(),
            m as c_int,
            l.n as c_int,
            l.k as c_int,
            l.block as c_int,
        )
    };
    if rc != 0 {
        return Err(Error::UnknownKernel(launch.kernel.clone()));
    }
    Ok(())
}

/// `y[m, n] = a[m, k] · Wᵀ` with the fp8 kernel [`plan`] picks for `m`.
pub fn fp8_matmul<T: Activation>(a: &[T], m: usize, w: &Fp8Weights<'_, T>, y: &mut [T]) -> Result<()> {
    let launch = plan(Op::Fp8, T::DTYPE, m, w.layout.n);
    fp8_launch(&launch, a, m, w, y)
}

/// Runs one named fp8 kernel.
pub fn fp8_launch<T: Activation>(launch: &Launch, a: &[T], m: usize, w: &Fp8Weights<'_, T>, y: &mut [T]) -> Result<()> {
    w.validate()?;
    let l = w.layout;
    check_io(m, l.n, l.k, a.len(), y.len())?;
    let name = kernel_name(launch, m, l.n)?;
    // SAFETY: as in int4_launch.
    let rc = unsafe {
        st_host_launch_fp8(
            name.as_ptr(),
            launch.grid.0,
            launch.grid.1,
            launch.threads,
            a.as_ptr().cast(),
            w.w.as_ptr(),
            w.scales.as_ptr().cast(),
            y.as_mut_ptr().cast(),
            m as c_int,
            l.n as c_int,
            l.k as c_int,
            l.block_arg() as c_int,
        )
    };
    if rc != 0 {
        return Err(Error::UnknownKernel(launch.kernel.clone()));
    }
    Ok(())
}

/// The GPU's grouped-query attention (`attention.cu`) on the CPU: `x`'s tokens appended to `cache` after its
/// `past` positions and attended, `out` `[tokens][heads · hd]`. With `past_buffers` `(k, v, capacity)` the
/// cached positions are read from those buffers and copied into `cache` first (a present that is not the
/// past's buffer). Position ids are not checked, as on the GPU: a token whose id is outside the tables gets
/// NaN keys, values and outputs.
pub fn gqa(
    shape: GqaShape,
    x: &GqaTokens<'_>,
    cache: &mut KvCache<'_>,
    past_buffers: Option<(&[f32], &[f32], usize)>,
    out: &mut [f32],
) -> Result<()> {
    x.check(shape, cache.capacity, cache.past, cache.k.len(), cache.v.len(), out.len())?;
    let addr = |s: &[f32]| s.as_ptr() as u64;
    let (k_cache, v_cache) = (cache.k.as_mut_ptr() as u64, cache.v.as_mut_ptr() as u64);
    let (past_k, past_v, past_capacity) = match past_buffers {
        Some((k, v, cap)) => {
            let n = shape.kv_heads * cap * shape.head_dim;
            crate::layout::expect_len("attention past k", n, k.len())?;
            crate::layout::expect_len("attention past v", n, v.len())?;
            (addr(k), addr(v), cap)
        }
        None => (k_cache, v_cache, cache.capacity),
    };
    let dims = GqaDims {
        tokens: x.tokens,
        q_stride: x.q_stride,
        kv_stride: x.kv_stride,
        rows: x.cos.len() / (shape.head_dim / 2).max(1),
        past: cache.past,
        capacity: cache.capacity,
        past_capacity,
    };
    let ptrs = GqaPointers {
        q: addr(x.q),
        k: addr(x.k),
        v: addr(x.v),
        cos: addr(x.cos),
        sin: addr(x.sin),
        positions: x.positions.as_ptr() as u64,
        past_k,
        past_v,
        k_cache,
        v_cache,
        out: out.as_mut_ptr() as u64,
    };
    let args = dims.args(shape, &ptrs)?;
    for launch in crate::gqa::plan(shape, &dims, &ptrs) {
        let name = CString::new(launch.kernel.clone()).map_err(|_| Error::UnknownKernel(launch.kernel.clone()))?;
        // SAFETY: every length was checked above against the sizes in `args`; the kernels read and write
        // only inside them (positions outside the tables are guarded in the kernels).
        let rc = unsafe { st_host_launch_gqa(name.as_ptr(), launch.grid.0, launch.grid.1, launch.threads, &args) };
        if rc != 0 {
            return Err(Error::UnknownKernel(launch.kernel));
        }
    }
    Ok(())
}
