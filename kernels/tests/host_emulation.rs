//! The exact .cu sources, run on the CPU through host/shim.hpp, against the float64 reference on fresh
//! random inputs of awkward shapes (K not a multiple of the tile or of 8, N odd, M between tiles), output
//! poisoned with NaN first.
//!
//! NMSE bounds: `reference::nmse_bound` (derivation there).

use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use st_kernels::launch::{Op, plan, plan_gemm};
use st_kernels::reference::{self, Scale, nmse};
use st_kernels::{Activation, Fp8Layout, Fp8Scales, Fp8Weights, Int4Layout, Int4Weights, host};

fn random_act<T: Activation>(rng: &mut ChaCha8Rng, len: usize) -> Vec<T> {
    (0..len).map(|_| T::from_f32(rng.random_range(-1.0f32..1.0))).collect()
}

fn as_f64<T: Activation>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f32() as f64).collect()
}

struct Int4Case<T> {
    layout: Int4Layout,
    b: Vec<u8>,
    scales: Vec<T>,
    zp: Option<Vec<u8>>,
}

impl<T: Activation> Int4Case<T> {
    fn new(rng: &mut ChaCha8Rng, n: usize, k: usize, block: usize, zero_points: bool) -> Self {
        let layout = Int4Layout { n, k, block, zero_points };
        Self {
            layout,
            b: (0..layout.b_len()).map(|_| rng.random()).collect(),
            scales: (0..layout.scales_len()).map(|_| T::from_f32(rng.random_range(0.01f32..0.1))).collect(),
            zp: zero_points.then(|| (0..layout.zero_points_len()).map(|_| rng.random()).collect()),
        }
    }
    fn weights(&self) -> Int4Weights<'_, T> {
        Int4Weights { layout: self.layout, b: &self.b, scales: &self.scales, zero_points: self.zp.as_deref() }
    }
}

fn check_int4<T: Activation + Scale>(seed: u64, m: usize, n: usize, k: usize, block: usize, zp: bool, gemm: bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let case = Int4Case::<T>::new(&mut rng, n, k, block, zp);
    let w = case.weights();
    let a = random_act::<T>(&mut rng, m * k);
    let mut y = vec![T::nan(); m * n];
    let launch = if gemm { plan_gemm(Op::Int4, T::DTYPE, m, n) } else { plan(Op::Int4, T::DTYPE, m, n) };
    host::int4_launch(&launch, &a, m, &w, &mut y).unwrap();
    let want = reference::matmul(&as_f64(&a), m, n, k, |j, kk| reference::int4_weight(&w, j, kk));
    let e = nmse(as_f64(&y), &want);
    let bound = reference::nmse_bound(T::DTYPE, gemm);
    assert!(e <= bound, "{} m={m} n={n} k={k} block={block} zp={zp}: NMSE {e:e} > {bound:e}", launch.kernel);
}

fn check_fp8<T: Activation + Scale>(seed: u64, m: usize, n: usize, k: usize, scales: Fp8Scales, gemm: bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let layout = Fp8Layout { n, k, scales };
    // Every finite E4M3FN code, NaN codes (0x7f, 0xff) excluded as the exporter never writes them.
    let wq: Vec<u8> = (0..layout.w_len())
        .map(|_| {
            loop {
                let b: u8 = rng.random();
                if b & 0x7f != 0x7f {
                    break b;
                }
            }
        })
        .collect();
    let s: Vec<T> = (0..layout.scales_len()).map(|_| T::from_f32(rng.random_range(1e-3f32..4e-3))).collect();
    let w = Fp8Weights { layout, w: &wq, scales: &s };
    let a = random_act::<T>(&mut rng, m * k);
    let mut y = vec![T::nan(); m * n];
    let launch = if gemm { plan_gemm(Op::Fp8, T::DTYPE, m, n) } else { plan(Op::Fp8, T::DTYPE, m, n) };
    host::fp8_launch(&launch, &a, m, &w, &mut y).unwrap();
    let want = reference::matmul(&as_f64(&a), m, n, k, |j, kk| reference::fp8_weight(&w, j, kk));
    let e = nmse(as_f64(&y), &want);
    let bound = reference::nmse_bound(T::DTYPE, gemm);
    assert!(e <= bound, "{} m={m} n={n} k={k} {scales:?}: NMSE {e:e} > {bound:e}", launch.kernel);
}

// (m, n, k): K of 200 is not a multiple of 32 (nor of the block), 203 not even of 8 (scalar loads), N odd.
const GEMV_SHAPES: [(usize, usize, usize); 6] =
    [(1, 67, 200), (2, 9, 256), (3, 33, 203), (5, 17, 96), (8, 5, 130), (1, 1, 4096)];
const GEMM_SHAPES: [(usize, usize, usize); 4] = [(9, 67, 200), (70, 130, 96), (17, 5, 203), (64, 64, 64)];

#[test]
fn int4_gemv_matches_f64_reference() {
    for (i, &(m, n, k)) in GEMV_SHAPES.iter().enumerate() {
        for (j, block) in [32, 64, 128].into_iter().enumerate() {
            let seed = (i * 10 + j) as u64;
            check_int4::<f16>(seed, m, n, k, block, j % 2 == 0, false);
            check_int4::<bf16>(seed + 100, m, n, k, block, j % 2 == 1, false);
            check_int4::<f32>(seed + 200, m, n, k, block, j % 2 == 1, false);
        }
    }
}

#[test]
fn int4_gemm_matches_f64_reference() {
    for (i, &(m, n, k)) in GEMM_SHAPES.iter().enumerate() {
        for (j, block) in [32, 64, 128].into_iter().enumerate() {
            let seed = 1000 + (i * 10 + j) as u64;
            check_int4::<f16>(seed, m, n, k, block, j % 2 == 0, true);
            check_int4::<bf16>(seed + 100, m, n, k, block, j % 2 == 1, true);
            check_int4::<f32>(seed + 200, m, n, k, block, j % 2 == 0, true);
        }
    }
}

#[test]
fn fp8_gemv_matches_f64_reference() {
    for (i, &(m, n, k)) in GEMV_SHAPES.iter().enumerate() {
        for (j, scales) in
            [Fp8Scales::PerChannel, Fp8Scales::PerBlock(32), Fp8Scales::PerBlock(128)].into_iter().enumerate()
        {
            let seed = 2000 + (i * 10 + j) as u64;
            check_fp8::<f16>(seed, m, n, k, scales, false);
            check_fp8::<bf16>(seed + 100, m, n, k, scales, false);
            check_fp8::<f32>(seed + 200, m, n, k, scales, false);
        }
    }
}

#[test]
fn fp8_gemm_matches_f64_reference() {
    for (i, &(m, n, k)) in GEMM_SHAPES.iter().enumerate() {
        for (j, scales) in [Fp8Scales::PerChannel, Fp8Scales::PerBlock(64)].into_iter().enumerate() {
            let seed = 3000 + (i * 10 + j) as u64;
            check_fp8::<f16>(seed, m, n, k, scales, true);
            check_fp8::<bf16>(seed + 100, m, n, k, scales, true);
            check_fp8::<f32>(seed + 200, m, n, k, scales, true);
        }
    }
}

#[test]
fn the_check_catches_a_wrong_output() {
    // The measure itself: one flipped output element of a correct result breaks the fp16 bound.
    let want = vec![1.0, -2.0, 3.0, 0.5];
    assert!(nmse([1.0, -2.0, 3.0, 0.5], &want) == 0.0);
    assert!(nmse([1.0, 2.0, 3.0, 0.5], &want) > 0.5);
    assert!(nmse([1.0, -2.0, 3.0, f64::NAN], &want).is_nan());
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let layout = Int4Layout { n: 4, k: 64, block: 32, zero_points: false };
    let b = vec![0u8; layout.b_len() - 1];
    let s = vec![f16::ONE; layout.scales_len()];
    let w = Int4Weights { layout, b: &b, scales: &s, zero_points: None };
    let mut y = vec![f16::ZERO; 4];
    let err = host::int4_matmul(&[f16::ZERO; 64], 1, &w, &mut y).unwrap_err().to_string();
    assert!(err.contains("int4 B"), "{err}");
    let bad_block = Int4Layout { block: 48, ..layout };
    assert!(bad_block.validate().is_err());
    let launch = plan(Op::Int4, st_kernels::Dtype::F16, 1, 4);
    let b = vec![0u8; layout.b_len()];
    let w = Int4Weights { layout, b: &b, scales: &s, zero_points: None };
    let mut y2 = vec![f16::ZERO; 8];
    let err = host::int4_launch(&launch, &[f16::ZERO; 128], 2, &w, &mut y2).unwrap_err().to_string();
    assert!(err.contains("does not cover"), "{err}");
}
