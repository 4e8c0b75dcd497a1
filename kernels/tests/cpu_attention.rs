//! The grouped-query attention (`st_kernels::cpu::gqa`) against the float64 reference
//! (`st_kernels::reference::gqa`, from the formula: rotate q and k by the cos/sin rows their position ids
//! pick, append to the cache, causal softmax of scale · q·k, times v), on a prefill spanning several token blocks, one decode token
//! after a long cache and a few tokens after a cache (the forced / speculated steps), with packed and
//! separate q/k/v rows. Bound: max |error| ≤ 2e-6 on outputs of magnitude ≲ 1: f32 sums of ≤ 128
//! products of magnitude ≤ 1 and an f32 softmax (relative error ~1e-7 per step, ≲ 1e-6 worst case; seen:
//! ≤ 1.3e-7). The cache: positions past..past+tokens
//! are the rotated keys and the values (same bound; the copies are exact), every other position is
//! untouched. Serial and threaded runs give the same bits. Bad shapes are errors naming the argument.

mod common;

use common::gqa_case::{BOUND, Case, max_err};
use st_kernels::cpu::{AttentionBuild, GqaShape, GqaTokens, KvCache, Serial, Threads, gqa, gqa_on};

/// (output, cache k, cache v) from `build` on `x` (the case's rows, or others).
fn run_with(
    c: &Case,
    build: AttentionBuild,
    x: &GqaTokens<'_>,
    par: &dyn st_kernels::cpu::Parallel,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mut k, mut v) = (c.cache_k.clone(), c.cache_v.clone());
    let mut out = vec![f32::NAN; c.out_len()];
    let mut cache = KvCache { k: &mut k, v: &mut v, capacity: c.capacity, past: c.past };
    gqa_on(build, c.shape, x, &mut cache, &mut out, par).expect("gqa");
    (out, k, v)
}

fn run_on(c: &Case, build: AttentionBuild, par: &dyn st_kernels::cpu::Parallel) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    run_with(c, build, &c.tokens(), par)
}

#[test]
fn attention_matches_the_float64_reference_prefill_decode_and_multi_token_steps() {
    // (heads, kv heads, head_dim, tokens, past): Qwen2.5-7B's group of 7; a prefill over three token
    // blocks; one decode token after 90 cached; 5 tokens after 20 (forced / speculated); MHA (group 1).
    for (seed, &(h, kv, hd, tokens, past)) in [
        (14, 2, 16, 37, 0),
        (14, 2, 16, 1, 90),
        (28, 4, 64, 5, 20),
        (4, 4, 8, 3, 6),
        (14, 2, 128, 2, 70),
        (7, 1, 96, 3, 40),
    ]
    .iter()
    .enumerate()
    {
        let c = Case::new(seed as u64, h, kv, hd, tokens, past);
        let (want, want_k, want_v) = c.reference();
        for build in AttentionBuild::ALL.into_iter().filter(|b| b.available()) {
            let (out, k, v) = run_on(&c, build, &Serial);
            let (e, ek, ev) = (max_err(&out, &want), max_err(&k, &want_k), max_err(&v, &want_v));
            eprintln!("case {seed} {build:?}: out {e:.2e}, k {ek:.2e}, v {ev:.2e}");
            assert!(
                e <= BOUND && ek <= BOUND && ev <= BOUND,
                "case {seed} {build:?}: out {e:.2e}, k {ek:.2e}, v {ev:.2e}"
            );
            c.assert_untouched(&format!("case {seed} {build:?}"), &k, &v);
            let threaded = run_on(&c, build, &Threads(3));
            assert!(threaded == (out, k, v), "case {seed} {build:?}: threaded differs from serial");
        }
    }
}

#[test]
fn separate_q_k_v_rows_give_the_packed_bits() {
    let c = Case::new(9, 14, 2, 16, 4, 11);
    let (h, kv, hd, w) = (14 * 16, 2 * 16, 16, c.width());
    let _ = hd;
    let q: Vec<f32> = (0..c.tokens).flat_map(|t| c.qkv[t * w..t * w + h].to_vec()).collect();
    let k: Vec<f32> = (0..c.tokens).flat_map(|t| c.qkv[t * w + h..t * w + h + kv].to_vec()).collect();
    let v: Vec<f32> = (0..c.tokens).flat_map(|t| c.qkv[t * w + h + kv..t * w + h + 2 * kv].to_vec()).collect();
    let x = GqaTokens {
        tokens: c.tokens,
        q: &q,
        q_stride: h,
        k: &k,
        v: &v,
        kv_stride: kv,
        cos: &c.cos,
        sin: &c.sin,
        positions: &c.positions,
    };
    assert!(run_with(&c, AttentionBuild::best(), &x, &Serial) == run_on(&c, AttentionBuild::best(), &Serial));
}

#[test]
fn bad_shapes_are_errors_naming_the_argument() {
    let c = Case::new(3, 14, 2, 16, 4, 11);
    let w = c.width();
    let good = GqaTokens {
        tokens: c.tokens,
        q: &c.qkv,
        q_stride: w,
        k: &c.qkv[224..],
        v: &c.qkv[256..],
        kv_stride: w,
        cos: &c.cos,
        sin: &c.sin,
        positions: &c.positions,
    };
    let run = |x: &GqaTokens<'_>, shape: GqaShape, capacity: usize, past: usize| {
        let (mut k, mut v) = (vec![0.0; 2 * capacity * 16], vec![0.0; 2 * capacity * 16]);
        let mut out = vec![0.0; x.tokens * 14 * 16];
        let mut cache = KvCache { k: &mut k, v: &mut v, capacity, past };
        gqa(shape, x, &mut cache, &mut out, &Serial).map(|_| ()).map_err(|e| e.to_string())
    };
    assert_eq!(run(&good, c.shape, c.capacity, c.past), Ok(()));
    let full = run(&good, c.shape, 14, 11).unwrap_err();
    assert!(full.contains("capacity 14"), "{full}");
    let bad_heads = run(&good, GqaShape { kv_heads: 3, ..c.shape }, c.capacity, c.past).unwrap_err();
    assert!(bad_heads.contains("kv heads 3"), "{bad_heads}");
    let positions = [0, 1, 99, 2];
    let far = run(&GqaTokens { positions: &positions, ..good }, c.shape, c.capacity, c.past).unwrap_err();
    assert!(far.contains("position_ids[2] = 99"), "{far}");
    let short = run(&GqaTokens { q: &c.qkv[..w * 3], ..good }, c.shape, c.capacity, c.past).unwrap_err();
    assert!(short.contains("attention: q:"), "{short}");
}
