//! Memory read bandwidth, the roofline of weight-streaming decode: every thread sums its share
//! of a buffer far larger than the caches (u64 adds, auto-vectorised), best of several passes.
//! Reading is what a decode step does with the weights, so this (not memcpy, which also writes)
//! is the bound to compare with. It reads the buffer on the kernel's pages, then again after asking
//! for huge pages (as the engine does for the weights, docs/PERFORMANCE.md#huge-pages), and reports
//! the better of the two first.
//!
//!   cargo run --release --example membw [GiB] [THREADS]

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let gib: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let threads: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let words = (gib * (1u64 << 30) as f64 / 8.0) as usize;
    // Distinct values so nothing is optimised away; writing them also faults every page in.
    let buf: Vec<u64> = (0..words as u64).collect();
    let (small, check) = best_read_seconds(&buf, threads);
    let done = st::engine::huge_pages::back_with_huge_pages((words * 8 / 2) as u64);
    let (huge, _) = best_read_seconds(&buf, threads);
    let best = small.min(huge);
    let gb = (words * 8) as f64 / 1e9;
    println!(
        "read {gb:.2} GB with {threads} threads: best {:.1} ms → {:.1} GB/s (checksum {check:x}; {:.1} GB/s on \
         the kernel's pages, {:.1} GB/s after asking for huge pages: {} of {} mappings collapsed)",
        best * 1e3,
        gb / best,
        gb / small,
        gb / huge,
        done.collapsed,
        done.asked,
    );
}

/// The best of five passes over `buf` on `threads` threads, and the checksum of the sums.
fn best_read_seconds(buf: &[u64], threads: usize) -> (f64, u64) {
    let chunk = buf.len().div_ceil(threads);
    let mut best = f64::MAX;
    let mut check = 0u64;
    for _ in 0..5 {
        let t = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().fold(0u64, |a, &x| a.wrapping_add(x))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        best = best.min(t.elapsed().as_secs_f64());
        check = sums.iter().fold(0, |a, &x| a.wrapping_add(x));
    }
    (best, check)
}
