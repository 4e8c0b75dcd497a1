//! One 7B-shaped decode step's int4 linears outside ORT, as the engine calls them: 28 layers of
//! q/k/v (packed), o, gate/up (one call writing silu(gate) · up) and down in column tiles with f16 scales (block 128, what
//! `st export` writes for the CPU), one activation row, on a persistent pool of spinning threads (as
//! ORT's intra-op pool runs a custom op's tasks), the weights in huge pages where the kernel offers
//! them. Beside it, a plain read of the same bytes on the same pool and tasks: the ceiling of this call
//! pattern, and `membw`'s one long pass for the machine's.
//!
//!   GLIBC_TUNABLES=glibc.malloc.hugetlb=1 cargo run --release -p st-kernels --example decode_step -- [threads] [steps]
//!
//! `ROWS=M` runs the linears at M activation rows (forced tokens, verified drafts; default 1) and
//! `ISA=avx2|avxvnni|avx512vnni|portable` forces one build of the loop (default: the fastest this CPU runs).
use half::f16;
use st_kernels::Int4Layout;
use st_kernels::cpu::{self, Parallel};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// A pool of `threads − 1` helpers spinning on a job counter; the caller takes tasks too.
struct Spin {
    job: AtomicUsize,
    done: AtomicUsize,
    next: AtomicUsize,
    tasks: AtomicUsize,
    /// The address of the running job's `&dyn Fn` (on the caller's stack while it waits).
    f_ptr: AtomicUsize,
    helpers: usize,
}

impl Spin {
    fn work(&self) {
        let tasks = self.tasks.load(Ordering::Acquire);
        // SAFETY: f_ptr points at the caller's closure for as long as the job runs (run waits for done).
        let f: &(dyn Fn(usize) + Sync) =
            unsafe { *(self.f_ptr.load(Ordering::Acquire) as *const &(dyn Fn(usize) + Sync)) };
        loop {
            let t = self.next.fetch_add(1, Ordering::Relaxed);
            if t >= tasks {
                break;
            }
            f(t);
        }
    }
}

struct Pool(&'static Spin);
impl Parallel for Pool {
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let s = self.0;
        let fref: &(dyn Fn(usize) + Sync) = f;
        s.f_ptr.store(&fref as *const _ as usize, Ordering::Release);
        s.tasks.store(tasks, Ordering::Release);
        s.next.store(0, Ordering::Release);
        s.done.store(0, Ordering::Release);
        s.job.fetch_add(1, Ordering::AcqRel);
        s.work();
        while s.done.load(Ordering::Acquire) < s.helpers {
            std::hint::spin_loop();
        }
    }
}

fn pool(threads: usize) -> Pool {
    let s: &'static Spin = Box::leak(Box::new(Spin {
        job: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        next: AtomicUsize::new(0),
        tasks: AtomicUsize::new(0),
        f_ptr: AtomicUsize::new(0),
        helpers: threads.saturating_sub(1),
    }));
    for _ in 1..threads {
        std::thread::spawn(move || {
            let mut seen = 0;
            loop {
                let j = s.job.load(Ordering::Acquire);
                if j == seen {
                    std::hint::spin_loop();
                    continue;
                }
                seen = j;
                s.work();
                s.done.fetch_add(1, Ordering::AcqRel);
            }
        });
    }
    Pool(s)
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let threads = args.first().copied().unwrap_or(2);
    let steps = args.get(1).copied().unwrap_or(10);
    let (h, f, layers) = (3584usize, 18944usize, 28usize);
    let shapes = [(h + 2 * 512, h), (h, h), (2 * f, h), (h, f)];
    // A third argument keeps one shape (0 q/k/v, 1 o, 2 gate/up, 3 down): the rate per call size.
    let only = args.get(2).copied();
    let layouts: Vec<cpu::TileLayout> = (0..layers)
        .flat_map(|_| {
            shapes
                .iter()
                .enumerate()
                .filter(|(i, _)| only.is_none_or(|o| o == *i))
                .map(|(_, s)| s)
                .map(|&(n, k)| cpu::TileLayout::int4(Int4Layout { n, k, block: 128, zero_points: false }))
        })
        .collect();
    let weights: Vec<(Vec<u8>, Vec<f16>)> = layouts
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let b: Vec<u8> = (0..l.b_len()).map(|j| ((j.wrapping_add(i) * 2654435761usize) >> 7) as u8).collect();
            (b, vec![f16::from_f32(0.01); l.scales_len()])
        })
        .collect();
    let bytes: usize = layouts.iter().map(|l| l.bytes(2)).sum();
    let rows: usize = std::env::var("ROWS").map_or(1, |r| r.parse().expect("ROWS: a number"));
    let isa = match std::env::var("ISA").as_deref() {
        Ok("avx2") => cpu::Int8Isa::Avx2,
        Ok("avxvnni") => cpu::Int8Isa::AvxVnni,
        Ok("avx512vnni") => cpu::Int8Isa::Avx512Vnni,
        Ok("portable") => cpu::Int8Isa::Baseline,
        Ok(other) => panic!("ISA={other}: expected avx2, avxvnni, avx512vnni or portable"),
        Err(_) => cpu::int8_isa(),
    };
    let a = vec![0.1f32; f * rows];
    let mut y = vec![0.0f32; 2 * f * rows];
    let par = pool(threads);
    println!(
        "{} linears, {:.3} GB a step, {threads} threads, {rows} rows, int8 build {isa:?}",
        layouts.len(),
        bytes as f64 / 1e9,
    );
    let mut best_k = f64::MAX;
    let mut best_r = f64::MAX;
    for _ in 0..steps {
        let t = Instant::now();
        for (l, (b, s)) in layouts.iter().zip(&weights) {
            let w = cpu::Int4Tiles { layout: *l, b, scales: s, zero_points: None };
            if l.0.n == 2 * f {
                // The MLP's gate and up in alternating tiles, as st export writes them.
                cpu::int4_tiles_swiglu_int8_on(isa, &a[..l.0.k * rows], rows, &w, &mut y[..f * rows], &par)
                    .expect("shapes");
            } else {
                cpu::int4_tiles_matmul_int8_on(isa, &a[..l.0.k * rows], rows, &w, &mut y[..l.0.n * rows], &par)
                    .expect("shapes");
            }
        }
        best_k = best_k.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut check = 0u64;
        for (l, (b, s)) in layouts.iter().zip(&weights) {
            check = check.wrapping_add(read(b, bytemuck_u16(s), l.tiles().div_ceil(4), &par));
        }
        std::hint::black_box(check);
        best_r = best_r.min(t.elapsed().as_secs_f64());
    }
    let gb = bytes as f64 / 1e9;
    println!("tiles kernel: {:.1} ms a step, {:.1} GB/s", best_k * 1e3, gb / best_k);
    println!("plain read:   {:.1} ms a step, {:.1} GB/s", best_r * 1e3, gb / best_r);
    // lm_head at int8 (block 32, f16 scales), two copies so that each call reads DRAM.
    let head = cpu::TileLayout::int8(Int4Layout { n: 152064, k: h, block: 32, zero_points: false });
    let copies: Vec<(Vec<u8>, Vec<f16>)> = (0..2)
        .map(|c| {
            let b = (0..head.b_len()).map(|j| (((j + c) * 2654435761usize) >> 9) as u8).collect();
            (b, vec![f16::from_f32(0.001); head.scales_len()])
        })
        .collect();
    let mut logits = vec![0.0f32; head.0.n];
    let mut best = f64::MAX;
    for i in 0..2 * steps {
        let (b, s) = &copies[i % 2];
        let w = cpu::Int4Tiles { layout: head, b, scales: s, zero_points: None };
        let t = Instant::now();
        cpu::int4_tiles_matmul_int8(&a[..h], 1, &w, &mut logits, &par).expect("shapes");
        best = best.min(t.elapsed().as_secs_f64());
    }
    let hb = head.bytes(2) as f64 / 1e9;
    println!("lm_head int8 tiles: {:.1} ms, {:.3} GB, {:.1} GB/s", best * 1e3, hb, hb / best);
}

fn bytemuck_u16(s: &[f16]) -> &[u16] {
    // SAFETY: f16 is a 2-byte plain value.
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u16, s.len()) }
}

/// u64 sums of the weights and scales, split into the kernel's tasks.
fn read(b: &[u8], s: &[u16], tasks: usize, par: &dyn Parallel) -> u64 {
    let total = AtomicUsize::new(0);
    let (pb, ps) = (b.len() / tasks, s.len() / tasks);
    par.run(tasks, &|t| {
        let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap_or_default());
        let x = b[t * pb..(t + 1) * pb].chunks_exact(8).fold(0u64, |a, c| a.wrapping_add(word(c)));
        let y = s[t * ps..(t + 1) * ps].iter().fold(0u64, |a, &c| a.wrapping_add(c as u64));
        total.fetch_add(x.wrapping_add(y) as usize, Ordering::Relaxed);
    });
    total.into_inner() as u64
}
