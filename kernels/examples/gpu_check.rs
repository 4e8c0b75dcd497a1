//! On a real GPU (`kernels/gpu-check` runs it): the host-emulation checks again on the device (awkward
//! shapes, NaN-poisoned outputs, float64 reference, same NMSE bounds), then every kernel timed at the 7B's
//! shapes, with achieved DRAM bandwidth as a fraction of the device's; then the grouped-query attention
//! (`attention.cu`) against the float64 reference at the 7B's heads and timed per layer.
//!
//! Usage: gpu_check [--peak-gbps 3350] [--iters 50]

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, sys};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use st_kernels::cuda::{Cuda, DeviceFp8, DeviceInt4};
use st_kernels::reference::{self, nmse};
use st_kernels::{Activation, Fp8Layout, Fp8Scales, Fp8Weights, Int4Layout, Int4Weights};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn act<T: Activation>(rng: &mut ChaCha8Rng, len: usize) -> Vec<T> {
    (0..len).map(|_| T::from_f32(rng.random_range(-1.0f32..1.0))).collect()
}

fn int4_host<T: Activation>(rng: &mut ChaCha8Rng, layout: Int4Layout) -> (Vec<u8>, Vec<T>, Option<Vec<u8>>) {
    let b = (0..layout.b_len()).map(|_| rng.random()).collect();
    let s = (0..layout.scales_len()).map(|_| T::from_f32(rng.random_range(0.01f32..0.1))).collect();
    let z = layout.zero_points.then(|| (0..layout.zero_points_len()).map(|_| rng.random()).collect());
    (b, s, z)
}

fn fp8_host<T: Activation>(rng: &mut ChaCha8Rng, layout: Fp8Layout) -> (Vec<u8>, Vec<T>) {
    let w = (0..layout.w_len())
        .map(|_| {
            loop {
                let b: u8 = rng.random();
                if b & 0x7f != 0x7f {
                    break b;
                }
            }
        })
        .collect();
    let s = (0..layout.scales_len()).map(|_| T::from_f32(rng.random_range(1e-3f32..4e-3))).collect();
    (w, s)
}

fn bound<T: Activation>(m: usize) -> f64 {
    reference::nmse_bound(T::DTYPE, m > st_kernels::launch::GEMV_MAX_M)
}

fn to_f64<T: Activation>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f32() as f64).collect()
}

fn check_int4<T: Activation + reference::Scale + cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    cuda: &Cuda,
    stream: &Arc<CudaStream>,
    seed: u64,
    (m, n, k): (usize, usize, usize),
    block: usize,
    zp: bool,
) -> Res<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let layout = Int4Layout { n, k, block, zero_points: zp };
    let (b, s, z) = int4_host::<T>(&mut rng, layout);
    let w = Int4Weights { layout, b: &b, scales: &s, zero_points: z.as_deref() };
    let a = act::<T>(&mut rng, m * k);
    let dw = DeviceInt4::upload(stream, &w)?;
    let da = stream.clone_htod(&a)?;
    let mut dy = stream.clone_htod(&vec![T::nan(); m * n])?;
    cuda.int4_matmul(stream, &da, m, &dw, &mut dy)?;
    let y = stream.clone_dtoh(&dy)?;
    let want = reference::matmul(&to_f64(&a), m, n, k, |j, kk| reference::int4_weight(&w, j, kk));
    Ok(nmse(to_f64(&y), &want))
}

fn check_fp8<T: Activation + reference::Scale + cudarc::driver::DeviceRepr>(
    cuda: &Cuda,
    stream: &Arc<CudaStream>,
    seed: u64,
    (m, n, k): (usize, usize, usize),
    scales: Fp8Scales,
) -> Res<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let layout = Fp8Layout { n, k, scales };
    let (wq, s) = fp8_host::<T>(&mut rng, layout);
    let w = Fp8Weights { layout, w: &wq, scales: &s };
    let a = act::<T>(&mut rng, m * k);
    let dw = DeviceFp8::upload(stream, &w)?;
    let da = stream.clone_htod(&a)?;
    let mut dy = stream.clone_htod(&vec![T::nan(); m * n])?;
    cuda.fp8_matmul(stream, &da, m, &dw, &mut dy)?;
    let y = stream.clone_dtoh(&dy)?;
    let want = reference::matmul(&to_f64(&a), m, n, k, |j, kk| reference::fp8_weight(&w, j, kk));
    Ok(nmse(to_f64(&y), &want))
}

fn correctness(cuda: &Cuda, stream: &Arc<CudaStream>) -> Res<usize> {
    // The host tests' awkward shapes plus 7B-sized ones (k = 3584 and 18944, both paths).
    let shapes = [
        (1, 67, 200),
        (3, 33, 203),
        (8, 5, 130),
        (9, 67, 200),
        (70, 130, 96),
        (17, 5, 203),
        (1, 512, 3584),
        (8, 512, 18944),
        (64, 256, 3584),
        (200, 130, 18944),
    ];
    let mut failures = 0;
    for (i, &shape) in shapes.iter().enumerate() {
        for (j, block) in [32, 64, 128].into_iter().enumerate() {
            let zp = (i + j) % 2 == 0;
            for (name, e, b) in [
                ("f16", check_int4::<f16>(cuda, stream, (i * 10 + j) as u64, shape, block, zp)?, bound::<f16>(shape.0)),
                (
                    "bf16",
                    check_int4::<half::bf16>(cuda, stream, (i * 10 + j) as u64 + 7, shape, block, zp)?,
                    bound::<half::bf16>(shape.0),
                ),
                (
                    "f32",
                    check_int4::<f32>(cuda, stream, (i * 10 + j) as u64 + 9, shape, block, zp)?,
                    bound::<f32>(shape.0),
                ),
            ] {
                let ok = e <= b;
                failures += usize::from(!ok);
                println!(
                    "int4 {name} {shape:?} block {block} zp {zp}: NMSE {e:.2e} (bound {b:.0e}) {}",
                    if ok { "ok" } else { "FAIL" }
                );
            }
        }
        for (j, scales) in [Fp8Scales::PerChannel, Fp8Scales::PerBlock(128)].into_iter().enumerate() {
            for (name, e, b) in [
                ("f16", check_fp8::<f16>(cuda, stream, (i * 10 + j) as u64 + 3, shape, scales)?, bound::<f16>(shape.0)),
                (
                    "bf16",
                    check_fp8::<half::bf16>(cuda, stream, (i * 10 + j) as u64 + 5, shape, scales)?,
                    bound::<half::bf16>(shape.0),
                ),
                ("f32", check_fp8::<f32>(cuda, stream, (i * 10 + j) as u64 + 6, shape, scales)?, bound::<f32>(shape.0)),
            ] {
                let ok = e <= b;
                failures += usize::from(!ok);
                println!(
                    "fp8 {name} {shape:?} {scales:?}: NMSE {e:.2e} (bound {b:.0e}) {}",
                    if ok { "ok" } else { "FAIL" }
                );
            }
        }
    }
    Ok(failures)
}

/// The 7B's attention (28 heads, 4 KV heads, head_dim 128) on the device: `tokens` new after `past`,
/// appended in place; the max |error| against the float64 reference (bound 2e-6, as in the host tests)
/// and, with `iters`, the time of one layer's call in µs.
fn check_gqa(
    cuda: &Cuda,
    stream: &Arc<CudaStream>,
    seed: u64,
    tokens: usize,
    past: usize,
    iters: usize,
) -> Res<(f64, f64)> {
    use st_kernels::cpu::{GqaShape, GqaTokens};
    use st_kernels::gqa::{GqaDims, GqaPointers};
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let shape = GqaShape { heads: 28, kv_heads: 4, head_dim: 128, scale: 0.0 };
    let (capacity, width, rows) = (past + tokens, (28 + 8) * 128, tokens);
    let mut f = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
    let (qkv, angle, ck, cv) = (f(tokens * width), f(rows * 64), f(4 * capacity * 128), f(4 * capacity * 128));
    let (cos, sin): (Vec<f32>, Vec<f32>) = angle.iter().map(|a| ((3.0 * a).cos(), (3.0 * a).sin())).unzip();
    let positions: Vec<i64> = (0..tokens as i64).collect();
    let x = GqaTokens {
        tokens,
        q: &qkv,
        q_stride: width,
        k: &qkv[28 * 128..],
        v: &qkv[32 * 128..],
        kv_stride: width,
        cos: &cos,
        sin: &sin,
        positions: &positions,
    };
    let (want, _, _) = reference::gqa(shape, &x, &ck, &cv, capacity, past);
    let (d_qkv, d_cos, d_sin, d_pos) =
        (stream.clone_htod(&qkv)?, stream.clone_htod(&cos)?, stream.clone_htod(&sin)?, stream.clone_htod(&positions)?);
    let (mut d_k, mut d_v) = (stream.clone_htod(&ck)?, stream.clone_htod(&cv)?);
    let mut d_out = stream.clone_htod(&vec![f32::NAN; tokens * 28 * 128])?;
    let dims = GqaDims { tokens, q_stride: width, kv_stride: width, rows, past, capacity, past_capacity: capacity };
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    let q = d_qkv.device_ptr(stream).0;
    let (k_cache, v_cache, out) =
        (d_k.device_ptr_mut(stream).0, d_v.device_ptr_mut(stream).0, d_out.device_ptr_mut(stream).0);
    let ptrs = GqaPointers {
        q,
        k: q + 28 * 128 * 4,
        v: q + 32 * 128 * 4,
        cos: d_cos.device_ptr(stream).0,
        sin: d_sin.device_ptr(stream).0,
        positions: d_pos.device_ptr(stream).0,
        past_k: k_cache,
        past_v: v_cache,
        k_cache,
        v_cache,
        out,
    };
    // SAFETY: every buffer above was allocated with the sizes `dims` and `shape` imply.
    unsafe { cuda.gqa_raw(stream.cu_stream(), shape, &dims, &ptrs)? };
    let got = stream.clone_dtoh(&d_out)?;
    let err = got.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
    let us = if iters == 0 {
        0.0
    } else {
        // Re-running appends the same tokens at the same positions: the same work each time.
        // SAFETY: as above.
        let call = |_| unsafe { cuda.gqa_raw(stream.cu_stream(), shape, &dims, &ptrs) }.map_err(Into::into);
        1000.0 * time_ms(cuda, stream, iters, call)?
    };
    Ok((err, us))
}

fn time_ms(cuda: &Cuda, stream: &Arc<CudaStream>, iters: usize, mut f: impl FnMut(usize) -> Res<()>) -> Res<f64> {
    for i in 0..3 {
        f(i)?;
    }
    let start = cuda.context().new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?;
    let end = cuda.context().new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?;
    start.record(stream)?;
    for i in 0..iters {
        f(i)?;
    }
    end.record(stream)?;
    Ok(start.elapsed_ms(&end)? as f64 / iters as f64)
}

fn timing<T: Activation + cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    cuda: &Cuda,
    stream: &Arc<CudaStream>,
    peak_gbps: f64,
    iters: usize,
) -> Res<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let elem = std::mem::size_of::<T>();
    let dt = T::DTYPE.name();
    for (name, n, k) in st_kernels::launch::SPATIALTHINKER_7B_LINEARS.iter().copied() {
        let l4 = Int4Layout { n, k, block: 32, zero_points: false };
        let l8 = Fp8Layout { n, k, scales: Fp8Scales::PerChannel };
        let bytes4 = l4.bytes(elem);
        let bytes8 = l8.bytes(elem);
        // Enough copies of the weights to exceed the L2 cache (50 MB on H100), cycled through, so every
        // call streams its weights from DRAM as a decode step does.
        let copies4 = (256usize << 20).div_ceil(bytes4).clamp(1, 64);
        let copies8 = (256usize << 20).div_ceil(bytes8).clamp(1, 64);
        let (b, s, _) = int4_host::<T>(&mut rng, l4);
        let w4: Vec<DeviceInt4<T>> = (0..copies4)
            .map(|_| DeviceInt4::upload(stream, &Int4Weights { layout: l4, b: &b, scales: &s, zero_points: None }))
            .collect::<Result<_, _>>()?;
        let (wq, s8) = fp8_host::<T>(&mut rng, l8);
        let w8: Vec<DeviceFp8<T>> = (0..copies8)
            .map(|_| DeviceFp8::upload(stream, &Fp8Weights { layout: l8, w: &wq, scales: &s8 }))
            .collect::<Result<_, _>>()?;
        for m in [1usize, 4, 8, 512] {
            let a: CudaSlice<T> = stream.clone_htod(&act::<T>(&mut rng, m * k))?;
            let mut y: CudaSlice<T> = stream.alloc_zeros(m * n)?;
            let io = (m * k + m * n) * elem;
            let t4 =
                time_ms(cuda, stream, iters, |i| Ok(cuda.int4_matmul(stream, &a, m, &w4[i % copies4], &mut y)?))?;
            let t8 = time_ms(cuda, stream, iters, |i| Ok(cuda.fp8_matmul(stream, &a, m, &w8[i % copies8], &mut y)?))?;
            for (kernel, t, bytes) in [("int4 b32", t4, bytes4), ("fp8 per-channel", t8, bytes8)] {
                let gbps = (bytes + io) as f64 / (t * 1e-3) / 1e9;
                let tflops = 2.0 * (m * n * k) as f64 / (t * 1e-3) / 1e12;
                println!(
                    "| {name} | {n} x {k} | {m} | {kernel} {dt} | {:.1} | {:.1} | {gbps:.0} | {:.0} % | {tflops:.1} |",
                    bytes as f64 / 1e6,
                    t * 1e3,
                    100.0 * gbps / peak_gbps
                );
            }
        }
    }
    Ok(())
}

fn main() -> Res<()> {
    let mut peak_gbps = 3350.0;
    let mut iters = 50;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--peak-gbps" => peak_gbps = args.next().ok_or("--peak-gbps needs a value")?.parse()?,
            "--iters" => iters = args.next().ok_or("--iters needs a value")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let cache = std::env::temp_dir().join("st-kernels-cache");
    let t0 = std::time::Instant::now();
    let cuda = Cuda::new(0, Some(&cache))?;
    println!(
        "device arch {}, NVRTC {}, compile + load {:.2} s",
        cuda.arch(),
        st_kernels::cuda::nvrtc_version()?,
        t0.elapsed().as_secs_f64()
    );
    let t1 = std::time::Instant::now();
    drop(Cuda::new(0, Some(&cache))?);
    println!("second load (PTX from the disk cache): {:.3} s", t1.elapsed().as_secs_f64());
    let stream = cuda.context().default_stream();
    let failures = correctness(&cuda, &stream)?;
    let mut failures = failures;
    println!("\n| attention (28 heads, 4 KV heads, 128) | max abs error (bound 2e-6) | µs a layer |");
    println!("| --- | --- | --- |");
    for (seed, (tokens, past)) in
        [(1, 255), (1, 1023), (1, 4095), (4, 700), (300, 0), (1300, 0)].into_iter().enumerate()
    {
        let (err, us) = check_gqa(&cuda, &stream, 40 + seed as u64, tokens, past, iters)?;
        let ok = err <= 2e-6;
        failures += usize::from(!ok);
        println!("| {tokens} tokens after {past} | {err:.2e} {} | {us:.1} |", if ok { "ok" } else { "FAIL" });
    }
    println!("correctness: {failures} failures");
    println!("\n| matrix | n x k | M | kernel | weights (MB) | time (us) | GB/s | of peak | TFLOP/s |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    timing::<f16>(&cuda, &stream, peak_gbps, iters)?;
    timing::<f32>(&cuda, &stream, peak_gbps, iters)?;
    if failures > 0 {
        return Err(format!("{failures} correctness failures").into());
    }
    Ok(())
}
