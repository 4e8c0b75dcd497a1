//! The CPU int4 loops on the 7B's decoder matrices (q/o 3584×3584, gate/up 18944×3584, down
//! 3584×18944) at M = 1 (decode), 16 (a question's prefill) and 512 (a prompt's prefill), 2 threads, at
//! the export's default block (128): the f32 loop (f32 scales), and each int8-activation build this CPU
//! runs (f16 scales) over MatMulNBits' row layout and over the column tiles `st export` writes; the MLP's
//! gate and up as one SwiGLU call against two plain ones. Throughput is the weight bytes read per call, so GB/s compares with
//! `examples/membw` (the roofline). Each iteration reads the next of
//! several copies of the weights (≥ 1.2 GB in all), so they come from DRAM, not from a large
//! last-level cache. Then lm_head at int8 over 8-bit tiles. `cargo bench -p st-kernels --bench cpu_int4`
//! (`make bench`).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::f16;
use st_kernels::cpu::{self, Int8Isa, Threads};
use st_kernels::{Int4Layout, Int4Weights};

const COPIES_BYTES: usize = 1_200_000_000;

fn bench(c: &mut Criterion) {
    let pool = Threads(2);
    for (name, n, k) in [("q_proj", 3584, 3584), ("gate_proj", 18944, 3584), ("down_proj", 3584, 18944)] {
        let layout = Int4Layout { n, k, block: 128, zero_points: false };
        let copies = (COPIES_BYTES / layout.bytes(4)).max(1);
        let (bl, sl) = (layout.b_len(), layout.scales_len());
        let b: Vec<u8> = (0..bl * copies).map(|i| ((i * 2654435761usize) >> 7) as u8).collect();
        let s32: Vec<f32> = (0..sl * copies).map(|i| 0.01 + (i % 13) as f32 * 1e-3).collect();
        let s16: Vec<f16> = s32.iter().map(|&v| f16::from_f32(v)).collect();
        for m in [1usize, 16, 512] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
            let mut y = vec![0.0f32; m * n];
            let mut g = c.benchmark_group(format!("int4_{name}_m{m}"));
            // M = 512 does 512× the arithmetic per weight byte: seconds per call, so criterion's minimum.
            g.sample_size(if m >= 512 { 10 } else { 20 });
            let mut next = 0usize;
            g.throughput(Throughput::Bytes(layout.bytes(4) as u64));
            g.bench_function(BenchmarkId::new("f32_loop", "f32_scales"), |bench| {
                bench.iter(|| {
                    next = (next + 1) % copies;
                    let w = Int4Weights {
                        layout,
                        b: &b[next * bl..(next + 1) * bl],
                        scales: &s32[next * sl..(next + 1) * sl],
                        zero_points: None,
                    };
                    cpu::int4_matmul(&a, m, &w, &mut y, &pool).expect("matmul")
                })
            });
            g.throughput(Throughput::Bytes(layout.bytes(2) as u64));
            for isa in Int8Isa::ALL.into_iter().filter(|i| i.available()) {
                g.bench_function(BenchmarkId::new(format!("int8_{isa:?}"), "f16_scales"), |bench| {
                    bench.iter(|| {
                        next = (next + 1) % copies;
                        let w = Int4Weights {
                            layout,
                            b: &b[next * bl..(next + 1) * bl],
                            scales: &s16[next * sl..(next + 1) * sl],
                            zero_points: None,
                        };
                        cpu::int4_matmul_int8_on(isa, &a, m, &w, &mut y, &pool).expect("matmul")
                    })
                });
            }
            // The column-tiled layout (what `st export` writes for the CPU): the same bytes read as
            // tiles (their contents are random either way), f16 scales.
            let tl = cpu::TileLayout::int4(layout);
            assert_eq!((tl.b_len(), tl.scales_len()), (bl, sl), "n is a multiple of the tile width");
            for isa in Int8Isa::ALL.into_iter().filter(|i| i.available()) {
                g.bench_function(BenchmarkId::new(format!("tiles_{isa:?}"), "f16_scales"), |bench| {
                    bench.iter(|| {
                        next = (next + 1) % copies;
                        let w = cpu::Int4Tiles {
                            layout: tl,
                            b: &b[next * bl..(next + 1) * bl],
                            scales: &s16[next * sl..(next + 1) * sl],
                            zero_points: None,
                        };
                        cpu::int4_tiles_matmul_int8_on(isa, &a, m, &w, &mut y, &pool).expect("matmul")
                    })
                });
            }
            g.finish();
        }
    }
    lm_head_int8(c, &pool);
    swiglu_gate_up(c, &pool);
}

/// The MLP's gate and up (2 × 18944 × 3584, block 128, f16 scales) at M = 1 and 16: one call over the
/// alternating tiles writing silu(gate) · up ([`cpu::int4_tiles_swiglu_int8`], what `st export` writes)
/// against the two plain calls it replaces (which still leave the SiLU and the product to two more nodes).
/// Several copies so each call reads DRAM; each build but the portable one.
fn swiglu_gate_up(c: &mut Criterion, pool: &Threads) {
    let one = Int4Layout { n: 18944, k: 3584, block: 128, zero_points: false };
    let (part, pair) = (cpu::TileLayout::int4(one), cpu::TileLayout::int4(Int4Layout { n: 2 * 18944, ..one }));
    let (bl, sl) = (pair.b_len(), pair.scales_len());
    let copies = (COPIES_BYTES / pair.bytes(2)).max(1);
    let b: Vec<u8> = (0..bl * copies).map(|i| ((i * 2654435761usize) >> 7) as u8).collect();
    let s16: Vec<f16> = (0..sl * copies).map(|i| f16::from_f32(0.01 + (i % 13) as f32 * 1e-3)).collect();
    for m in [1usize, 16] {
        let a: Vec<f32> = (0..m * 3584).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
        let mut y = vec![0.0f32; m * 2 * 18944];
        let mut g = c.benchmark_group(format!("int4_gate_up_m{m}"));
        g.sample_size(20);
        g.throughput(Throughput::Bytes(pair.bytes(2) as u64));
        let mut next = 0usize;
        for isa in Int8Isa::ALL.into_iter().filter(|i| i.available() && *i != Int8Isa::Baseline) {
            g.bench_function(BenchmarkId::new(format!("swiglu_{isa:?}"), "one_call"), |bench| {
                bench.iter(|| {
                    next = (next + 1) % copies;
                    let w = cpu::Int4Tiles {
                        layout: pair,
                        b: &b[next * bl..(next + 1) * bl],
                        scales: &s16[next * sl..(next + 1) * sl],
                        zero_points: None,
                    };
                    cpu::int4_tiles_swiglu_int8_on(isa, &a, m, &w, &mut y[..m * 18944], pool).expect("matmul")
                })
            });
            g.bench_function(BenchmarkId::new(format!("plain_{isa:?}"), "two_calls"), |bench| {
                bench.iter(|| {
                    next = (next + 1) % copies;
                    let (half_b, half_s) = (bl / 2, sl / 2);
                    for (h, y) in y.chunks_exact_mut(m * 18944).enumerate() {
                        let (b0, s0) = (next * bl + h * half_b, next * sl + h * half_s);
                        let w = cpu::Int4Tiles {
                            layout: part,
                            b: &b[b0..b0 + half_b],
                            scales: &s16[s0..s0 + half_s],
                            zero_points: None,
                        };
                        cpu::int4_tiles_matmul_int8_on(isa, &a, m, &w, y, pool).expect("matmul")
                    }
                })
            });
        }
        g.finish();
    }
}

/// lm_head at int8 (152064 × 3584, block 32, f16 scales) over 8-bit tiles at M = 1 and 16 (a forced
/// run or a speculative pass verifies several tokens), each build; two copies (1.2 GB) so each call
/// reads DRAM.
fn lm_head_int8(c: &mut Criterion, pool: &Threads) {
    let layout = cpu::TileLayout::int8(Int4Layout { n: 152064, k: 3584, block: 32, zero_points: false });
    let (bl, sl) = (layout.b_len(), layout.scales_len());
    let b: Vec<u8> = (0..2 * bl).map(|i| ((i * 2654435761usize) >> 9) as u8).collect();
    let s16: Vec<f16> = (0..2 * sl).map(|i| f16::from_f32(1e-3 + (i % 13) as f32 * 1e-4)).collect();
    for m in [1usize, 16] {
        let a: Vec<f32> = (0..m * 3584).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
        let mut y = vec![0.0f32; m * 152064];
        let mut g = c.benchmark_group(format!("int8_lm_head_m{m}"));
        g.sample_size(10);
        g.throughput(Throughput::Bytes(layout.bytes(2) as u64));
        let mut next = 0usize;
        for isa in Int8Isa::ALL.into_iter().filter(|i| i.available() && *i != Int8Isa::Baseline) {
            g.bench_function(BenchmarkId::new(format!("tiles_{isa:?}"), "f16_scales"), |bench| {
                bench.iter(|| {
                    next = (next + 1) % 2;
                    let w = cpu::Int4Tiles {
                        layout,
                        b: &b[next * bl..(next + 1) * bl],
                        scales: &s16[next * sl..(next + 1) * sl],
                        zero_points: None,
                    };
                    cpu::int4_tiles_matmul_int8_on(isa, &a, m, &w, &mut y, pool).expect("matmul")
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
