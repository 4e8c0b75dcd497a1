//! The grouped-query attention (`st_kernels::cpu::gqa_on`) at the 7B's shape (28 query heads, 4 KV
//! heads, head_dim 128): one decode token after 256, 1024 and 4096 cached positions, and a 512-token
//! prefill, one thread (`Serial`: no thread start-up in the figure; the engine runs the tasks on ORT's
//! pool), for each build this CPU runs. Throughput is the KV cache bytes the call reads (keys and values
//! of every visible position), so the decode figures compare with the machine's read bandwidth.
//! `cargo bench -p st-kernels --bench attention` (`make bench`).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use st_kernels::cpu::{AttentionBuild, GqaShape, GqaTokens, KvCache, Serial, gqa_on};

fn bench(c: &mut Criterion) {
    let shape = GqaShape { heads: 28, kv_heads: 4, head_dim: 128, scale: 0.0 };
    let (h, kv, hd) = (shape.heads, shape.kv_heads, shape.head_dim);
    for (tokens, past) in [(1usize, 256usize), (1, 1024), (1, 4096), (512, 0)] {
        let capacity = past + tokens;
        let width = (h + 2 * kv) * hd;
        let qkv: Vec<f32> = (0..tokens * width).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let angle: Vec<f32> = (0..tokens * hd / 2).map(|i| (i % 97) as f32 * 0.1).collect();
        let (cos, sin): (Vec<f32>, Vec<f32>) = angle.iter().map(|a| (a.cos(), a.sin())).unzip();
        let positions: Vec<i64> = (0..tokens as i64).collect();
        let mut k: Vec<f32> = (0..kv * capacity * hd).map(|i| ((i * 31) % 101) as f32 / 101.0 - 0.5).collect();
        let mut v = k.clone();
        let mut out = vec![0.0f32; tokens * h * hd];
        let x = GqaTokens {
            tokens,
            q: &qkv,
            q_stride: width,
            k: &qkv[h * hd..],
            v: &qkv[(h + kv) * hd..],
            kv_stride: width,
            cos: &cos,
            sin: &sin,
            positions: &positions,
        };
        let mut g = c.benchmark_group(format!("gqa_7b_tokens{tokens}_past{past}"));
        g.sample_size(if tokens > 1 { 10 } else { 30 });
        g.throughput(Throughput::Bytes((2 * kv * capacity * hd * 4) as u64));
        for build in AttentionBuild::ALL.into_iter().filter(|b| b.available()) {
            g.bench_function(BenchmarkId::new(format!("{build:?}"), "serial"), |bench| {
                bench.iter(|| {
                    let mut cache = KvCache { k: &mut k, v: &mut v, capacity, past };
                    gqa_on(build, shape, &x, &mut cache, &mut out, &Serial).expect("attention")
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
