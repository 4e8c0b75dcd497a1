//! ai.st.MatMulInt4 / MatMulFp8 (st's fused CPU op) against ORT's own forms at the 7B's shapes, one-node
//! graphs through ORT's CPU provider: MatMulNBits (block 32 unless `--block`, symmetric; accuracy_level 4 and 0), st's op
//! with f32 scales (the f32 loop), with f16 scales at accuracy_level 4 (the int8 row loop) and in column tiles
//! (the tiled int8 loop, the CPU default), and
//! DequantizeLinear → Gemm for fp8. Prints per matrix the median time at each M and the resident memory
//! each session added at load (ORT folds fp8 DequantizeLinear to f32 weights).
//!
//! cargo run --release --example fused_matmul -- [--threads 2] [--m 1,4,64] [--only q_proj] [--block 32] [--dir target/fused-matmul]

#[path = "../tests/common/matmul_graphs.rs"]
mod matmul_graphs;

use matmul_graphs::{Fp8Form, Int4Data, Int4Form, fp8_graph, int4_graph, run, session};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

fn median_ms(s: &mut ort::session::Session, a: &[f32], m: usize, k: usize) -> f64 {
    run(s, a, m, k);
    let reps = if m >= 64 { 5 } else { 15 };
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            run(s, a, m, k);
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let mut threads = 2;
    let mut ms = vec![1usize, 4, 64];
    let mut only: Option<String> = None;
    let mut block = 32;
    let mut dir = std::path::PathBuf::from("target/fused-matmul");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().expect("every flag takes a value");
        match a.as_str() {
            "--threads" => threads = v.parse().expect("--threads N"),
            "--m" => ms = v.split(',').map(|x| x.parse().expect("--m 1,4,64")).collect(),
            "--only" => only = Some(v),
            "--block" => block = v.parse().expect("--block 32|64|128"),
            "--dir" => dir = v.into(),
            other => panic!("unknown flag {other}"),
        }
    }
    println!("ORT CPU provider, {threads} threads, st loop built for {:?}", st_kernels::cpu::isa());
    println!(
        "| matrix | form | load RSS (MB) | {} |",
        ms.iter().map(|m| format!("M={m} (ms)")).collect::<Vec<_>>().join(" | ")
    );
    println!("| --- | --- | --- |{}", " --- |".repeat(ms.len()));
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (name, n, k) in st_kernels::launch::SPATIALTHINKER_7B_LINEARS {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let kb = k.div_ceil(block);
        let w4 = Int4Data {
            n,
            k,
            block,
            b: (0..n * kb * block / 2).map(|_| rng.random()).collect(),
            scales: (0..n * kb).map(|_| rng.random_range(0.01f32..0.1)).collect(),
            zero_points: None,
        };
        let w8: Vec<u8> = (0..n * k).map(|_| rng.random::<u8>() & 0xf7).collect();
        let s8: Vec<f32> = (0..n).map(|_| rng.random_range(1e-3f32..4e-3)).collect();
        let graphs = [
            ("MatMulNBits level 4", int4_graph(&dir, "nbits4", Int4Form::NBits(4), &w4)),
            ("MatMulNBits level 0", int4_graph(&dir, "nbits0", Int4Form::NBits(0), &w4)),
            ("ai.st.MatMulInt4", int4_graph(&dir, "st4", Int4Form::St, &w4)),
            ("ai.st.MatMulInt4 f16 scales, level 4", int4_graph(&dir, "st4i8", Int4Form::StF16(4), &w4)),
            ("ai.st.MatMulInt4 column tiles (the CPU default)", int4_graph(&dir, "st4tiles", Int4Form::StTiles, &w4)),
            ("fp8 DequantizeLinear+Gemm", fp8_graph(&dir, "dq8", Fp8Form::Dq, n, k, 0, &w8, &s8)),
            ("ai.st.MatMulFp8", fp8_graph(&dir, "st8", Fp8Form::St, n, k, 0, &w8, &s8)),
        ];
        drop(w4);
        for (form, path) in graphs {
            let before = rss_bytes();
            let mut s = session(&path, threads);
            let load = rss_bytes().saturating_sub(before) as f64 / 1e6;
            let times: Vec<String> = ms
                .iter()
                .map(|&m| {
                    let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                    format!("{:.2}", median_ms(&mut s, &a, m, k))
                })
                .collect();
            println!("| {name} {n}x{k} | {form} | {load:.0} | {} |", times.join(" | "));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
