//! The GPU's grouped-query attention (`attention.cu`, the exact source run by the host emulation,
//! launched as `st_kernels::gqa::plan` launches it on a GPU) against the float64 reference
//! (`st_kernels::reference::gqa`) and against the CPU kernel, on the cases the CPU kernel is tested on plus
//! head sizes that leave lanes idle (40) or fill every register (256), a prefill whose first tokens leave
//! warps without keys, and a present that is not the past's buffer (the copy kernel).
//!
//! Bound: max |error| ≤ 2e-6, as for the CPU kernel (outputs of magnitude ≲ 1; f32 dot products of ≤ 256
//! products and an f32 online softmax, relative error ~1e-7 a step, ≲ 1e-6 worst case). The appended keys
//! are one rotation of exact inputs (≤ 2 roundings), the values exact copies; every other cache position
//! keeps its bytes.

mod common;

use common::gqa_case::{BOUND, Case, max_err};
use st_kernels::cpu::{KvCache, Serial, gqa};
use st_kernels::host;

/// (output, cache k, cache v) from the emulated GPU kernels, appending in place.
fn gpu(c: &Case) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mut k, mut v) = (c.cache_k.clone(), c.cache_v.clone());
    let mut out = vec![f32::NAN; c.out_len()];
    let mut cache = KvCache { k: &mut k, v: &mut v, capacity: c.capacity, past: c.past };
    host::gqa(c.shape, &c.tokens(), &mut cache, None, &mut out).expect("host gqa");
    (out, k, v)
}

fn cpu(c: &Case) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mut k, mut v) = (c.cache_k.clone(), c.cache_v.clone());
    let mut out = vec![f32::NAN; c.out_len()];
    let mut cache = KvCache { k: &mut k, v: &mut v, capacity: c.capacity, past: c.past };
    gqa(c.shape, &c.tokens(), &mut cache, &mut out, &Serial).expect("cpu gqa");
    (out, k, v)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn gpu_attention_matches_the_float64_reference_and_the_cpu_kernel() {
    // (heads, kv heads, head_dim, tokens, past)
    for (seed, &(h, kv, hd, tokens, past)) in [
        (14, 2, 128, 1, 40), // Qwen2.5-7B's group of 7 and head size, one decode token
        (14, 2, 16, 9, 0),   // a prefill from nothing: the first tokens leave warps without keys
        (28, 4, 64, 5, 20),  // forced / speculated tokens after a cache
        (4, 4, 8, 3, 6),     // MHA (group 1), tiny heads
        (6, 2, 40, 2, 13),   // head size not a multiple of 32: lanes hold 1 or 2 elements
        (2, 1, 256, 2, 5),   // the largest head size the kernel holds
    ]
    .iter()
    .enumerate()
    {
        let c = Case::new(100 + seed as u64, h, kv, hd, tokens, past);
        let (want, want_k, want_v) = c.reference();
        let (out, k, v) = gpu(&c);
        let (e, ek, ev) = (max_err(&out, &want), max_err(&k, &want_k), max_err(&v, &want_v));
        let (cpu_out, _, _) = cpu(&c);
        eprintln!("case {seed}: out {e:.2e}, k {ek:.2e}, v {ev:.2e}; |gpu - cpu| {:.2e}", max_diff(&out, &cpu_out));
        assert!(e <= BOUND && ek <= BOUND && ev <= BOUND, "case {seed}: out {e:.2e}, k {ek:.2e}, v {ev:.2e}");
        assert!(max_diff(&out, &cpu_out) as f64 <= 2.0 * BOUND, "case {seed}: GPU and CPU kernels differ");
        c.assert_untouched(&format!("case {seed}"), &k, &v);
    }
}

#[test]
fn a_present_apart_from_the_past_starts_with_the_past_positions() {
    let c = Case::new(7, 14, 2, 32, 3, 11);
    let (want_out, want_k, want_v) = gpu(&c);
    // The past in buffers of another capacity; the present (the cache) starts as NaN.
    let past_cap = c.past + 1;
    let (kv, hd) = (2, 32);
    let mut past_k = vec![0.0f32; kv * past_cap * hd];
    let mut past_v = past_k.clone();
    for g in 0..kv {
        for p in 0..c.past {
            let (from, to) = ((g * c.capacity + p) * hd, (g * past_cap + p) * hd);
            past_k[to..to + hd].copy_from_slice(&c.cache_k[from..from + hd]);
            past_v[to..to + hd].copy_from_slice(&c.cache_v[from..from + hd]);
        }
    }
    let (mut k, mut v) = (vec![f32::NAN; c.cache_k.len()], vec![f32::NAN; c.cache_v.len()]);
    let mut out = vec![f32::NAN; c.out_len()];
    let mut cache = KvCache { k: &mut k, v: &mut v, capacity: c.capacity, past: c.past };
    host::gqa(c.shape, &c.tokens(), &mut cache, Some((&past_k, &past_v, past_cap)), &mut out).expect("gqa");
    assert!(out == want_out, "outputs differ from the in-place call");
    let filled = |x: &[f32], g: usize| x[g * c.capacity * hd..(g * c.capacity + c.past + c.tokens) * hd].to_vec();
    for g in 0..kv {
        assert!(filled(&k, g) == filled(&want_k, g) && filled(&v, g) == filled(&want_v, g), "kv head {g}");
    }
    // A past longer than its buffer is refused.
    let mut cache = KvCache { k: &mut k, v: &mut v, capacity: c.capacity, past: c.past };
    let short = (&past_k[..kv * 4 * hd], &past_v[..kv * 4 * hd], 4);
    let err = host::gqa(c.shape, &c.tokens(), &mut cache, Some(short), &mut out).unwrap_err().to_string();
    assert!(err.contains("11 cached positions in a past buffer of 4"), "{err}");
}

#[test]
fn a_position_id_outside_the_tables_gives_nan_and_bad_sizes_are_errors() {
    let mut c = Case::new(3, 4, 2, 16, 1, 5);
    c.positions = vec![99];
    let (out, k, _) = gpu(&c);
    assert!(out.iter().all(|x| x.is_nan()), "the token's outputs are NaN");
    let hd = 16;
    assert!(k[(c.past) * hd..(c.past + 1) * hd].iter().all(|x| x.is_nan()), "its key is NaN");
    assert_eq!(k[..c.past * hd], c.cache_k[..c.past * hd], "earlier positions untouched");

    let c = Case::new(4, 2, 1, 258, 1, 0);
    let (mut k, mut v) = (c.cache_k.clone(), c.cache_v.clone());
    let mut out = vec![0.0; c.out_len()];
    let mut cache = KvCache { k: &mut k, v: &mut v, capacity: c.capacity, past: 0 };
    let err = host::gqa(c.shape, &c.tokens(), &mut cache, None, &mut out).unwrap_err().to_string();
    assert!(err.contains("head_dim 258 (the GPU kernel takes at most 256)"), "{err}");

    let c = Case::new(5, 4, 2, 16, 4, 5);
    let (mut k, mut v) = (c.cache_k.clone(), c.cache_v.clone());
    let mut out = vec![0.0; c.out_len()];
    let mut cache = KvCache { k: &mut k, v: &mut v, capacity: c.capacity, past: c.capacity - 2 };
    let err = host::gqa(c.shape, &c.tokens(), &mut cache, None, &mut out).unwrap_err().to_string();
    assert!(err.contains("exceed the cache's capacity 12"), "{err}");
}
