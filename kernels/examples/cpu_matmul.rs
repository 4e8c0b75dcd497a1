//! Times st_kernels::cpu on one 7B-shaped int4 matrix outside ORT (serial and threaded): the f32 loop
//! (f32 scales), each int8-activation build this CPU runs (f16 scales) over MatMulNBits' rows and over
//! the column tiles, and a plain read of the same bytes. Each repetition reads a
//! different copy of the weights (1.5 GB in all), so they come from DRAM as in decoding, not from a
//! large last-level cache.
//! cargo run --release -p st-kernels --example cpu_matmul -- [n] [k] [m] [threads] [bytes of copies] [block]
//! (small bytes of copies keep the weights in cache: the loops' compute bound; block 32 unless given)
use half::f16;
use st_kernels::cpu::{self, Int8Isa, Serial, Threads};
use st_kernels::{Int4Layout, Int4Weights};
use std::time::Instant;

/// The best of five rounds of `reps / 5` calls, in ms per call (a VM's neighbours add noise).
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let per = (reps / 5).max(1);
    (0..5)
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..per {
                f();
            }
            t0.elapsed().as_secs_f64() * 1e3 / per as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (n, k, m, threads) = (arg(0, 3584), arg(1, 3584), arg(2, 1), arg(3, 2));
    let layout = Int4Layout { n, k, block: arg(5, 32), zero_points: false };
    let copies = (arg(4, 1_500_000_000) / layout.bytes(4)).max(1);
    let b: Vec<u8> = (0..layout.b_len() * copies).map(|i| ((i * 2654435761usize) >> 7) as u8).collect();
    let s = vec![0.01f32; layout.scales_len() * copies];
    let s16 = vec![f16::from_f32(0.01); layout.scales_len() * copies];
    let (bl, sl) = (layout.b_len(), layout.scales_len());
    let w = |c: usize| Int4Weights {
        layout,
        b: &b[c * bl..(c + 1) * bl],
        scales: &s[c * sl..(c + 1) * sl],
        zero_points: None,
    };
    let w16 = |c: usize| Int4Weights {
        layout,
        b: &b[c * bl..(c + 1) * bl],
        scales: &s16[c * sl..(c + 1) * sl],
        zero_points: None,
    };
    let a: Vec<f32> = (0..m * k).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
    let mut y = vec![0.0f32; m * n];
    let reps = (4_000_000_000 / layout.bytes(2).max(1) / m.max(1)).clamp(3, 400);
    println!("n {n} k {k} m {m}, {reps} reps; int8 build {:?}", cpu::int8_isa());
    let pool = Threads(threads);
    // At prefill sizes the serial runs and the f32 loop take minutes: threads and the int8 builds only.
    let big = m > 64;
    for (name, par) in [("serial", &Serial as &dyn cpu::Parallel), ("threads", &pool)] {
        if big && name == "serial" {
            continue;
        }
        let mut c = 0;
        let mut next = || {
            c = (c + 1) % copies;
            c
        };
        let ms = if big { f64::NAN } else { time(reps, || cpu::int4_matmul(&a, m, &w(next()), &mut y, par).unwrap()) };
        println!("{name:8} f32 loop, f32 scales: {ms:8.3} ms {:6.1} GB/s", layout.bytes(4) as f64 / ms / 1e6);
        for isa in Int8Isa::ALL.into_iter().filter(|i| i.available()) {
            let ms = time(reps, || cpu::int4_matmul_int8_on(isa, &a, m, &w16(next()), &mut y, par).unwrap());
            println!("{name:8} int8 {isa:10?} f16 scales: {ms:8.3} ms {:6.1} GB/s", layout.bytes(2) as f64 / ms / 1e6);
        }
        for tasks in [2usize, 64, 296] {
            let ms = time(reps, || {
                let c = next();
                std::hint::black_box(sum_pass(&b[c * bl..(c + 1) * bl], par, tasks));
            });
            println!("{name:8} sum pass, {tasks} tasks: {ms:8.3} ms {:6.1} GB/s", bl as f64 / ms / 1e6);
        }
        // The tiled layout: same bytes, read as tiles (random contents either way).
        let tl = cpu::TileLayout::int4(layout);
        if tl.b_len() == bl && tl.scales_len() == sl {
            for isa in Int8Isa::ALL.into_iter().filter(|i| i.available()) {
                let ms = time(reps, || {
                    let c = next();
                    let w = cpu::Int4Tiles {
                        layout: tl,
                        b: &b[c * bl..(c + 1) * bl],
                        scales: &s16[c * sl..(c + 1) * sl],
                        zero_points: None,
                    };
                    cpu::int4_tiles_matmul_int8_on(isa, &a, m, &w, &mut y, par).unwrap()
                });
                println!(
                    "{name:8} tiles {isa:9?} f16 scales: {ms:8.3} ms {:6.1} GB/s",
                    layout.bytes(2) as f64 / ms / 1e6
                );
            }
        }
    }
}

/// The plainest read of one copy's bytes on the same tasks (u64 sums, no prefetch): the ceiling this
/// call pattern (a 1 ms call, threads started per call) puts on any kernel, below `membw`'s one long pass.
fn sum_pass(b: &[u8], par: &dyn cpu::Parallel, tasks: usize) -> u64 {
    let per = b.len() / tasks;
    let total = std::sync::atomic::AtomicU64::new(0);
    par.run(tasks, &|t| {
        let part = &b[t * per..(t + 1) * per];
        let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap_or_default());
        let s = part.chunks_exact(8).fold(0u64, |a, c| a.wrapping_add(word(c)));
        total.fetch_add(s, std::sync::atomic::Ordering::Relaxed);
    });
    total.into_inner()
}
