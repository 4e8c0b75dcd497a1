//! Times st_kernels::cpu on one 7B-shaped int4 matrix outside ORT (serial and threaded).
//! cargo run --release -p st-kernels --example cpu_matmul -- [n] [k] [m]
use st_kernels::cpu::{self, Serial, Threads};
use st_kernels::{Int4Layout, Int4Weights};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let (n, k, m) = (
        args.first().copied().unwrap_or(3584),
        args.get(1).copied().unwrap_or(3584),
        args.get(2).copied().unwrap_or(1),
    );
    let layout = Int4Layout { n, k, block: 32, zero_points: false };
    let b: Vec<u8> = (0..layout.b_len()).map(|i| ((i * 2654435761usize) >> 7) as u8).collect();
    let s = vec![0.01f32; layout.scales_len()];
    let w = Int4Weights { layout, b: &b, scales: &s, zero_points: None };
    let a = vec![0.5f32; m * k];
    let mut y = vec![0.0f32; m * n];
    println!("isa {:?}", cpu::isa());
    for (name, par) in [("serial", &Serial as &dyn cpu::Parallel), ("2 threads", &Threads(2))] {
        cpu::int4_matmul(&a, m, &w, &mut y, par).unwrap();
        let t0 = Instant::now();
        for _ in 0..10 {
            cpu::int4_matmul(&a, m, &w, &mut y, par).unwrap();
        }
        let ms = t0.elapsed().as_secs_f64() * 100.0;
        println!("{name}: {ms:.3} ms, {:.1} GB/s", layout.bytes(4) as f64 / ms / 1e6);
    }
}
