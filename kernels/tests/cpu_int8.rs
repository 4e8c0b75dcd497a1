//! The int8-activation CPU loop (`st_kernels::cpu::int8`), every build this CPU runs, on awkward shapes
//! (K not a multiple of 64, an odd number of groups, 1–3 groups after whole quads, block 32/64/128, with and without zero points,
//! M = 1–17), against:
//! - a float64 reference over the same int8-quantized activations, computed here independently: the
//!   integer dot products are exact, so only f32 accumulation differs (NMSE ≤ 1e-11);
//! - the float64 reference over the f32 activations: the error is that of rounding each activation to
//!   d = max|a|/127 of its group of 32, variance d²/12; for uniform activations in [−1, 1] that is
//!   an NMSE of ≈ 2e-5, bound 1e-4;
//! - each other: the builds agree to f32 reassociation (NMSE ≤ 1e-11); f16 scales give the same bits as the
//!   same values in f32; serial and threaded give the same bits.

use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use st_kernels::cpu::{self, Int8Isa, Serial, Threads};
use st_kernels::reference::{self, nmse};
use st_kernels::{Int4Layout, Int4Weights};

const F32_SUM_BOUND: f64 = 1e-11;
const QUANTIZED_ACTIVATIONS_BOUND: f64 = 1e-4;

struct Case {
    layout: Int4Layout,
    b: Vec<u8>,
    scales: Vec<f32>,
    zero_points: Option<Vec<u8>>,
}

impl Case {
    fn new(rng: &mut ChaCha8Rng, n: usize, k: usize, block: usize, zp: bool) -> Self {
        let layout = Int4Layout { n, k, block, zero_points: zp };
        Case {
            layout,
            b: (0..layout.b_len()).map(|_| rng.random()).collect(),
            // f16-representable, as the exporter writes them.
            scales: (0..layout.scales_len()).map(|_| f16::from_f32(rng.random_range(0.01f32..0.1)).to_f32()).collect(),
            zero_points: zp.then(|| (0..layout.zero_points_len()).map(|_| rng.random()).collect()),
        }
    }
    fn weights(&self) -> Int4Weights<'_, f32> {
        Int4Weights { layout: self.layout, b: &self.b, scales: &self.scales, zero_points: self.zero_points.as_deref() }
    }
}

/// Each group of 32 activations (a row's columns 32g..32g+32) as the kernel is documented to quantize
/// them: d = max|a|/127, q = round(a/d), ties to even; returned dequantized, q·d, in f64.
fn quantize_groups(a: &[f32], m: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; m * k];
    for i in 0..m {
        for c0 in (0..k).step_by(32) {
            let g = &a[i * k + c0..i * k + (c0 + 32).min(k)];
            let d = g.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (j, &v) in g.iter().enumerate() {
                out[i * k + c0 + j] = (v * inv).round_ties_even().clamp(-127.0, 127.0) as f64 * d as f64;
            }
        }
    }
    out
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn builds() -> Vec<Int8Isa> {
    Int8Isa::ALL.into_iter().filter(|i| i.available()).collect()
}

#[test]
fn every_build_matches_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    eprintln!("builds here: {:?}", builds());
    for (n, k, block, zp) in [
        (67, 200, 32, false),
        (33, 203, 64, true),
        (129, 256, 128, false),
        (5, 96, 32, true),
        (40, 1000, 32, false),
        (17, 160, 32, true),
        // 10 groups (two left after the 512-bit loop's quads) and 65 (one left, after an odd number
        // of whole quads).
        (23, 320, 32, false),
        (9, 2080, 32, true),
        // Blocks a step wide or wider read one scale per step (the 256-bit loop from block 64 on, the
        // 512-bit one from 128); block 64 on the 512-bit loop keeps per-group scales. Partial last
        // blocks, an odd number of steps, and a last block shorter than a step.
        (13, 448, 64, false),
        (11, 300, 128, true),
        (6, 200, 128, false),
        (7, 520, 256, false),
        (5, 1100, 256, true),
    ] {
        let case = Case::new(&mut rng, n, k, block, zp);
        let w = case.weights();
        for m in [1usize, 2, 3, 4, 5, 9, 17] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let weight = |j, kk| reference::int4_weight(&w, j, kk);
            let exact = reference::matmul(&quantize_groups(&a, m, k), m, n, k, weight);
            let plain = reference::matmul(&f64s(&a), m, n, k, weight);
            let mut base = vec![f32::NAN; m * n];
            cpu::int4_matmul_int8_on(Int8Isa::Baseline, &a, m, &w, &mut base, &Serial).unwrap();
            for isa in builds() {
                let mut y = vec![f32::NAN; m * n];
                cpu::int4_matmul_int8_on(isa, &a, m, &w, &mut y, &Serial).unwrap();
                let (e_exact, e_plain, e_base) =
                    (nmse(f64s(&y), &exact), nmse(f64s(&y), &plain), nmse(f64s(&y), &f64s(&base)));
                assert!(
                    e_exact <= F32_SUM_BOUND && e_base <= F32_SUM_BOUND && e_plain <= QUANTIZED_ACTIVATIONS_BOUND,
                    "{isa:?} n={n} k={k} block={block} zp={zp} m={m}: vs quantized {e_exact:e}, vs portable \
                     {e_base:e}, vs f32 activations {e_plain:e}"
                );
            }
        }
    }
}

#[test]
fn f16_scales_threads_and_nan() {
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    let case = Case::new(&mut rng, 70, 352, 64, false);
    let w = case.weights();
    let s16: Vec<f16> = case.scales.iter().map(|&s| f16::from_f32(s)).collect();
    let w16 = Int4Weights { layout: w.layout, b: w.b, scales: &s16, zero_points: None };
    let m = 3;
    let mut a: Vec<f32> = (0..m * 352).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let (mut y32, mut y16, mut yt) = (vec![0.0f32; m * 70], vec![0.0f32; m * 70], vec![0.0f32; m * 70]);
    cpu::int4_matmul_int8(&a, m, &w, &mut y32, &Serial).unwrap();
    cpu::int4_matmul_int8(&a, m, &w16, &mut y16, &Serial).unwrap();
    cpu::int4_matmul_int8(&a, m, &w16, &mut yt, &Threads(3)).unwrap();
    assert_eq!(y32, y16);
    assert_eq!(y16, yt);
    // A NaN activation poisons its row only, as in f32 arithmetic.
    a[352 + 100] = f32::NAN;
    cpu::int4_matmul_int8(&a, m, &w16, &mut y16, &Serial).unwrap();
    assert!(y16[70..140].iter().all(|v| v.is_nan()));
    assert!(y16[..70].iter().chain(&y16[140..]).all(|v| v.is_finite()));
    // An all-zero row gives zeros, not NaN (d = 0).
    let zeros = vec![0.0f32; 352];
    let mut y = vec![f32::NAN; 70];
    cpu::int4_matmul_int8(&zeros, 1, &w16, &mut y, &Serial).unwrap();
    assert!(y.iter().all(|&v| v == 0.0));
}

#[test]
fn bad_lengths_are_errors() {
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let case = Case::new(&mut rng, 8, 64, 32, false);
    let w = case.weights();
    let mut y = vec![0.0f32; 8];
    let err = cpu::int4_matmul_int8(&[0.0; 63], 1, &w, &mut y, &Serial).unwrap_err();
    assert!(err.to_string().contains("activations"), "{err}");
    let short = Int4Weights { b: &case.b[1..], ..w };
    let err = cpu::int4_matmul_int8(&[0.0; 64], 1, &short, &mut y, &Serial).unwrap_err();
    assert!(err.to_string().contains("int4 B"), "{err}");
}
