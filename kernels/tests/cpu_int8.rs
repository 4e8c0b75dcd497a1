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

/// The float64 references of `a [m, k] · Wᵀ`: over the activations quantized as the kernels document,
/// and over the f32 activations.
fn references(w: &Int4Weights<'_, f32>, a: &[f32], m: usize) -> (Vec<f64>, Vec<f64>) {
    let (n, k) = (w.layout.n, w.layout.k);
    let weight = |j, kk| reference::int4_weight(w, j, kk);
    (reference::matmul(&quantize_groups(a, m, k), m, n, k, weight), reference::matmul(&f64s(a), m, n, k, weight))
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
            let (exact, plain) = references(&w, &a, m);
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
    // Zero points given for a symmetric layout, missing for an asymmetric one, or of the wrong length.
    let zp = [0x88u8; 8];
    let extra = Int4Weights { zero_points: Some(&zp), ..w };
    let err = cpu::int4_matmul_int8(&[0.0; 64], 1, &extra, &mut y, &Serial).unwrap_err();
    assert!(err.to_string().contains("int4 zero points given for a symmetric layout"), "{err}");
    let asym = Case::new(&mut rng, 8, 64, 32, true);
    let missing = Int4Weights { zero_points: None, ..asym.weights() };
    let err = cpu::int4_matmul_int8(&[0.0; 64], 1, &missing, &mut y, &Serial).unwrap_err();
    assert!(err.to_string().contains("int4 layout has zero points but none were given"), "{err}");
    let short_zp = Int4Weights { zero_points: Some(&zp[..1]), ..asym.weights() };
    let err = cpu::int4_matmul_int8(&[0.0; 64], 1, &short_zp, &mut y, &Serial).unwrap_err();
    assert!(err.to_string().contains("int4 zero_points"), "{err}");
}

/// The column-tiled layout (`st_kernels::cpu::tiles`): [`cpu::tile`] keeps every value, scale and zero
/// point, and each build over the tiles matches the float64 references as the row loop does, gives the
/// portable build's bits exactly (every build takes the same f32 steps per column, fused), and equals
/// the row loop to f32 reassociation.
/// Every build over the tiles `t` on 2 threads gives `base` (the portable build's output) exactly, and
/// each row alone its bits among the others: a row's outputs do not depend on the rows beside it (a pass
/// of 1–4 rows and 1–8 tiles takes the same steps per column), so a verification pass of several
/// drafted tokens gives each the bits of its own one-token step.
fn every_build_gives_the_portable_bits(t: &cpu::Int4Tiles<'_, f32>, a: &[f32], m: usize, base: &[f32], what: &str) {
    let (n, k) = (t.layout.0.n, t.layout.0.k);
    for isa in builds() {
        let mut y = vec![f32::NAN; m * n];
        cpu::int4_tiles_matmul_int8_on(isa, a, m, t, &mut y, &Threads(2)).unwrap();
        assert_eq!(y, base, "{isa:?} n={n} k={k} {what} m={m}: not the portable bits");
        for i in 0..m {
            let mut one = vec![f32::NAN; n];
            cpu::int4_tiles_matmul_int8_on(isa, &a[i * k..(i + 1) * k], 1, t, &mut one, &Serial).unwrap();
            assert_eq!(one, y[i * n..(i + 1) * n], "{isa:?} n={n} k={k} {what} m={m}: row {i} alone");
        }
    }
}

#[test]
fn tiles_match_the_reference_and_every_build_gives_the_same_bits() {
    let mut rng = ChaCha8Rng::seed_from_u64(24);
    for (n, k, block, zp) in [
        (67, 200, 32, false),
        (33, 203, 64, true),
        (129, 256, 128, false),
        (5, 96, 32, true),
        (16, 3000, 128, false),
        (80, 520, 256, true),
        (100, 130, 128, true),
    ] {
        let case = Case::new(&mut rng, n, k, block, zp);
        let w = case.weights();
        let tiled = cpu::tile(&w).unwrap();
        let t = tiled.view();
        // Every weight where the layout's description puts it (column c of tile j: byte 4c + i of step
        // s holds k = 8s + i in its low nibble and 8s + 4 + i in its high one).
        let tb = t.layout.tile_bytes();
        for col in 0..n {
            let (j, c) = (col / 16, col % 16);
            for kk in 0..k {
                let (s, i) = (kk / 8, kk % 8);
                let byte = t.b[j * tb + 64 * s + 4 * c + i % 4];
                let v = if i < 4 { byte & 0xF } else { byte >> 4 };
                let (blk, kb) = (kk / block, w.layout.k_blocks());
                let z = t.zero_points.map_or(8.0, |z| z[(j * kb + blk) * 16 + c] as f64);
                let dequant = (v as f64 - z) * t.scales[(j * kb + blk) * 16 + c] as f64;
                assert_eq!(dequant, reference::int4_weight(&w, col, kk), "n={n} k={k} col={col} k={kk}");
            }
        }
        for m in [1usize, 2, 3, 4, 5, 9, 17] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let (exact, plain) = references(&w, &a, m);
            let mut base = vec![f32::NAN; m * n];
            cpu::int4_tiles_matmul_int8_on(Int8Isa::Baseline, &a, m, &t, &mut base, &Serial).unwrap();
            let mut rows = vec![f32::NAN; m * n];
            cpu::int4_matmul_int8(&a, m, &w, &mut rows, &Serial).unwrap();
            let (e_exact, e_plain, e_rows) =
                (nmse(f64s(&base), &exact), nmse(f64s(&base), &plain), nmse(f64s(&base), &f64s(&rows)));
            assert!(
                e_exact <= F32_SUM_BOUND && e_rows <= F32_SUM_BOUND && e_plain <= QUANTIZED_ACTIVATIONS_BOUND,
                "tiles n={n} k={k} block={block} zp={zp} m={m}: vs quantized {e_exact:e}, vs the row loop \
                 {e_rows:e}, vs f32 activations {e_plain:e}"
            );
            every_build_gives_the_portable_bits(&t, &a, m, &base, &format!("block={block} zp={zp}"));
        }
    }
}

/// The largest integer sums a group can make: every nibble 15 against activations of ±1 (q = ±127), all of
/// one sign per block — AVX2 sums a group's products in i16 lanes (16 a lane: 30480 <
/// 2¹⁵), so a wider group or a saturating add would show here as a wrong sign or magnitude.
#[test]
fn tiles_largest_group_sums_are_exact() {
    let mut rng = ChaCha8Rng::seed_from_u64(26);
    for m in [1usize, 4] {
        let mut case = Case::new(&mut rng, 48, 256, 128, false);
        case.b.fill(0xFF);
        // One sign per block of 128 (the weights' scales differ between blocks, so the row does not cancel).
        let a: Vec<f32> = (0..m * 256).map(|i| if (i / 128) % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let w = case.weights();
        let (exact, _) = references(&w, &a, m);
        let tiled = cpu::tile(&w).unwrap();
        for isa in builds() {
            let mut y = vec![f32::NAN; m * 48];
            cpu::int4_tiles_matmul_int8_on(isa, &a, m, &tiled.view(), &mut y, &Serial).unwrap();
            let e = nmse(f64s(&y), &exact);
            assert!(e <= F32_SUM_BOUND, "{isa:?} m={m}: largest group sums, NMSE {e:e}");
        }
    }
}

#[test]
fn tiles_f16_scales_nan_and_bad_input() {
    let mut rng = ChaCha8Rng::seed_from_u64(25);
    let case = Case::new(&mut rng, 40, 256, 64, false);
    let tiled = cpu::tile(&case.weights()).unwrap();
    let s16: Vec<f16> = tiled.scales.iter().map(|&s| f16::from_f32(s)).collect();
    let t32 = tiled.view();
    let t16 = cpu::Int4Tiles { layout: t32.layout, b: t32.b, scales: &s16, zero_points: None };
    let m = 2;
    let mut a: Vec<f32> = (0..m * 256).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let (mut y32, mut y16) = (vec![0.0f32; m * 40], vec![0.0f32; m * 40]);
    let isa = cpu::int8_isa();
    cpu::int4_tiles_matmul_int8_on(isa, &a, m, &t32, &mut y32, &Serial).unwrap();
    cpu::int4_tiles_matmul_int8_on(isa, &a, m, &t16, &mut y16, &Serial).unwrap();
    assert_eq!(y32, y16);
    // A NaN activation poisons its row only; an all-zero row gives zeros.
    a[256 + 7] = f32::NAN;
    a[..256].fill(0.0);
    cpu::int4_tiles_matmul_int8_on(isa, &a, m, &t16, &mut y16, &Serial).unwrap();
    assert!(y16[..40].iter().all(|&v| v == 0.0) && y16[40..].iter().all(|v| v.is_nan()));
    // Lengths and layouts the kernel cannot read are errors naming the tensor.
    let short = cpu::Int4Tiles { b: &tiled.b[1..], ..t32 };
    let err = cpu::int4_tiles_matmul_int8_on(isa, &a, m, &short, &mut y32, &Serial).unwrap_err();
    assert!(err.to_string().contains("tiled int4 B"), "{err}");
    let zp = vec![0x88u8; tiled.layout.zero_points_len().max(1)];
    let extra = cpu::Int4Tiles { zero_points: Some(&zp), ..t32 };
    let err = cpu::int4_tiles_matmul_int8_on(isa, &a, m, &extra, &mut y32, &Serial).unwrap_err();
    assert!(err.to_string().contains("tiled int4 zero points given for a symmetric layout"), "{err}");
    let err = cpu::int4_tiles_matmul_int8_on(isa, &a[1..], m, &t32, &mut y32, &Serial).unwrap_err();
    assert!(err.to_string().contains("activations"), "{err}");
    let odd = Int4Layout { n: 8, k: 96, block: 96, zero_points: false };
    let w = Int4Weights { layout: odd, b: &[0u8; 8 * 48], scales: &[1.0f32; 8], zero_points: None };
    let err = cpu::tile(&w).unwrap_err();
    assert!(err.to_string().contains("power of two"), "{err}");
}

/// 8-bit weights in MatMulNBits' layout (`bits` = 8: a byte a weight, `[n][k_blocks][block]`; zero
/// points a byte each, 128 when absent) and their float64 value.
impl Case {
    fn new8(rng: &mut ChaCha8Rng, n: usize, k: usize, block: usize, zp: bool) -> Self {
        let layout = Int4Layout { n, k, block, zero_points: zp };
        let kb = layout.k_blocks();
        Case {
            layout,
            b: (0..n * kb * block).map(|_| rng.random()).collect(),
            scales: (0..n * kb).map(|_| f16::from_f32(rng.random_range(0.001f32..0.01)).to_f32()).collect(),
            zero_points: zp.then(|| (0..n * kb).map(|_| rng.random()).collect()),
        }
    }
    fn weight8(&self, col: usize, kk: usize) -> f64 {
        let (kb, block) = (self.layout.k_blocks(), self.layout.block);
        let at = col * kb + kk / block;
        let z = self.zero_points.as_ref().map_or(128.0, |z| z[at] as f64);
        (self.b[col * kb * block + kk] as f64 - z) * self.scales[at] as f64
    }
    fn tiled8(&self) -> cpu::Tiled<f32> {
        cpu::tile_int8(self.layout, &self.b, &self.scales, self.zero_points.as_deref()).unwrap()
    }
}

/// Tiles of 8-bit weights (lm_head at int8, [`cpu::tile_int8`]): every byte where the layout puts it,
/// each build against the float64 references within the int4 tiles' bounds, every build the portable
/// build's bits, a row alone the bits it has among others. Extreme bytes (0 and 255 against ±127
/// activations) would saturate AVX2's `vpmaddubsw` taken unsigned: the reference catches that.
#[test]
fn int8_weight_tiles_match_the_reference_and_every_build_gives_the_same_bits() {
    let mut rng = ChaCha8Rng::seed_from_u64(26);
    for (n, k, block, zp) in [(67, 200, 32, false), (33, 203, 64, true), (129, 256, 128, false), (16, 3000, 32, true)] {
        let case = Case::new8(&mut rng, n, k, block, zp);
        let tiled = case.tiled8();
        let t = tiled.view();
        assert_eq!(t.layout.1, cpu::WeightBits::Eight);
        let (tb, kb) = (t.layout.tile_bytes(), t.layout.0.k_blocks());
        for col in 0..n {
            let (j, c) = (col / 16, col % 16);
            for kk in 0..k {
                let (s, i) = (kk / 8, kk % 8);
                let byte = t.b[j * tb + 128 * s + 64 * (i / 4) + 4 * c + i % 4];
                let at = (j * kb + kk / block) * 16 + c;
                let z = t.zero_points.map_or(128.0, |z| z[at] as f64);
                assert_eq!(
                    (byte as f64 - z) * t.scales[at] as f64,
                    case.weight8(col, kk),
                    "n={n} k={k} col={col} k={kk}"
                );
            }
        }
        for m in [1usize, 2, 3, 4, 5, 9] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let exact = reference::matmul(&quantize_groups(&a, m, k), m, n, k, |j, kk| case.weight8(j, kk));
            let plain = reference::matmul(&f64s(&a), m, n, k, |j, kk| case.weight8(j, kk));
            let mut base = vec![f32::NAN; m * n];
            cpu::int4_tiles_matmul_int8_on(Int8Isa::Baseline, &a, m, &t, &mut base, &Serial).unwrap();
            let (e_exact, e_plain) = (nmse(f64s(&base), &exact), nmse(f64s(&base), &plain));
            assert!(
                e_exact <= F32_SUM_BOUND && e_plain <= QUANTIZED_ACTIVATIONS_BOUND,
                "int8 tiles n={n} k={k} block={block} zp={zp} m={m}: vs quantized {e_exact:e}, vs f32 {e_plain:e}"
            );
            every_build_gives_the_portable_bits(&t, &a, m, &base, &format!("block={block} zp={zp}"));
        }
    }
    // Saturating bytes: 0 and 255 against activations of ±1 (q = ±127), symmetric and with zero points.
    for zp in [false, true] {
        let mut case = Case::new8(&mut rng, 32, 256, 32, zp);
        for (i, b) in case.b.iter_mut().enumerate() {
            *b = if (i / 3) % 2 == 0 { 255 } else { 0 };
        }
        let a: Vec<f32> = (0..256).map(|i| if i % 4 < 2 { 1.0 } else { -1.0 }).collect();
        let exact = reference::matmul(&quantize_groups(&a, 1, 256), 1, 32, 256, |j, kk| case.weight8(j, kk));
        let tiled = case.tiled8();
        for isa in builds() {
            let mut y = vec![f32::NAN; 32];
            cpu::int4_tiles_matmul_int8_on(isa, &a, 1, &tiled.view(), &mut y, &Serial).unwrap();
            let e = nmse(f64s(&y), &exact);
            assert!(e <= F32_SUM_BOUND, "{isa:?} zp={zp}: saturating bytes, NMSE {e:e}");
        }
    }
    // Lengths the kernel cannot read are errors naming the tensor.
    let case = Case::new8(&mut rng, 16, 64, 32, false);
    let err = cpu::tile_int8(case.layout, &case.b[1..], &case.scales, None).unwrap_err();
    assert!(err.to_string().contains("int8 B"), "{err}");
    let tiled = case.tiled8();
    let short = cpu::Int4Tiles { b: &tiled.b[1..], ..tiled.view() };
    let err = cpu::int4_tiles_matmul_int8(&[0.0; 64], 1, &short, &mut [0.0; 16], &Serial).unwrap_err();
    assert!(err.to_string().contains("tiled int8 B"), "{err}");
}

/// SwiGLU over tile pairs (`cpu::swiglu_pairs`, `cpu::int4_tiles_swiglu_int8`): the gate's and the up
/// projection's own tiled products (checked against float64 above), combined as float64
/// silu(g) · u = g / (1 + e^−g) · u: within 5e-7 relative per element (Cephes' e^x is within ~1.5e-7
/// relative, then one division, one product and the 1 + e^−g sum each round once); every build gives the
/// portable build's bits (the epilogue takes the same fused steps whether vectorized or not), on 2
/// threads and each row alone, for m = 1 (8, 4 or 2 tiles a pass), several rows (1 or 2 tiles a pass: the
/// pair's tiles in turn) and n / 16 not a multiple of the 8 tiles of a task; 4- and 8-bit tiles.
#[test]
fn swiglu_pairs_give_silu_gate_times_up() {
    const SILU_BOUND: f64 = 5e-7;
    let mut rng = ChaCha8Rng::seed_from_u64(27);
    for (n, k, block, zp, bits8) in [
        (32, 200, 32, false, false),
        (48, 256, 64, true, false),
        (80, 130, 128, true, false),
        (16, 3000, 128, false, false),
        (48, 200, 32, false, true),
        (32, 130, 64, true, true),
    ] {
        let (gt, ut) = if bits8 {
            (Case::new8(&mut rng, n, k, block, zp).tiled8(), Case::new8(&mut rng, n, k, block, zp).tiled8())
        } else {
            let (gate, up) = (Case::new(&mut rng, n, k, block, zp), Case::new(&mut rng, n, k, block, zp));
            (cpu::tile(&gate.weights()).unwrap(), cpu::tile(&up.weights()).unwrap())
        };
        let pairs = cpu::swiglu_pairs(&gt, &ut).unwrap();
        assert_eq!(pairs.layout.0.n, 2 * n);
        for m in [1usize, 2, 3, 4, 5, 9] {
            // Large enough that e^−g spans (0, ∞) well: |g| up to ~20.
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-4.0f32..4.0)).collect();
            let (mut g, mut u) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
            cpu::int4_tiles_matmul_int8_on(Int8Isa::Baseline, &a, m, &gt.view(), &mut g, &Serial).unwrap();
            cpu::int4_tiles_matmul_int8_on(Int8Isa::Baseline, &a, m, &ut.view(), &mut u, &Serial).unwrap();
            let mut base = vec![f32::NAN; m * n];
            cpu::int4_tiles_swiglu_int8_on(Int8Isa::Baseline, &a, m, &pairs.view(), &mut base, &Serial).unwrap();
            for (i, ((&y, &g), &u)) in base.iter().zip(&g).zip(&u).enumerate() {
                let (g, u) = (g as f64, u as f64);
                let e = g / (1.0 + (-g).exp()) * u;
                assert!(
                    (y as f64 - e).abs() <= SILU_BOUND * e.abs() + 1e-30,
                    "n={n} k={k} m={m} element {i}: {y} against {e} (g {g}, u {u})"
                );
            }
            for isa in builds() {
                let mut y = vec![f32::NAN; m * n];
                cpu::int4_tiles_swiglu_int8_on(isa, &a, m, &pairs.view(), &mut y, &Threads(2)).unwrap();
                assert_eq!(y, base, "{isa:?} n={n} k={k} m={m}: not the portable bits");
                for i in 0..m {
                    let mut one = vec![f32::NAN; n];
                    cpu::int4_tiles_swiglu_int8_on(isa, &a[i * k..(i + 1) * k], 1, &pairs.view(), &mut one, &Serial)
                        .unwrap();
                    assert_eq!(one, y[i * n..(i + 1) * n], "{isa:?} n={n} k={k} m={m}: row {i} alone");
                }
            }
        }
    }
    // Bad input: a width that does not pair tiles, layouts that differ, an output of the plain width.
    let odd = cpu::tile(&Case::new(&mut rng, 16, 64, 32, false).weights()).unwrap();
    let err = cpu::int4_tiles_swiglu_int8(&[0.0; 64], 1, &odd.view(), &mut [0.0; 8], &Serial).unwrap_err();
    assert!(err.to_string().contains("SwiGLU") && err.to_string().contains("16"), "{err}");
    let other = cpu::tile(&Case::new(&mut rng, 32, 64, 32, false).weights()).unwrap();
    let err = cpu::swiglu_pairs(&odd, &other).unwrap_err();
    assert!(err.to_string().contains("SwiGLU pairs"), "{err}");
    let pairs = cpu::swiglu_pairs(&odd, &odd).unwrap();
    let err = cpu::int4_tiles_swiglu_int8(&[0.0; 64], 1, &pairs.view(), &mut [0.0; 32], &Serial).unwrap_err();
    assert!(err.to_string().contains("output"), "{err}");
}
