//! The engine on each build of st's CPU kernels, chosen by the `ST_CPU_ISA` ceiling
//! (kernels/src/cpu/ceiling.rs): an int4 export of both tiny shapes (st's tiles, int8 lm_head in tiles,
//! st's attention) runs on every build this CPU has — the AVX2 build that an AVX2-only CPU runs,
//! checked here on any host — and gives the best build's logits for a prefill, a one-token step and a
//! three-token step (attention's GEMM and direct loops). A misspelt value or a build this CPU lacks is
//! an error at load that names the variable.
//!
//! One test function: the variable and the ceiling are process-wide.

mod common;

use common::{golden, model, read_npy};
use st::engine::{Engine, SessionOptions};
use st_kernels::cpu::{self, AttentionBuild, BuildCeiling, Int8Isa};

/// The builds differ in f32 summation order (the int8 dot products are exact integers) and in the
/// attention's exponential (libm's against a polynomial within ~1e-7): ~1e-6 relative per op. Such a
/// difference can move one activation across an int8 rounding boundary in a later layer, a change of
/// one quantum (1/127 of its group's largest value) that reaches the logits at ~1e-3 of their scale at
/// most; an op computed wrongly (a wrong block, a missed tail) moves them by O(1) of it.
const BOUND: f32 = 2e-3;

/// Logits of a 24-token prefill, then one token, then three, with the variable set to `isa` (`None`:
/// unset, the ceiling left as it is).
fn logits(dir: &std::path::Path, tokens: &[u32], isa: Option<&str>) -> Vec<f32> {
    set_var(isa);
    let mut e = Engine::load(dir, &SessionOptions { threads: Some(2), ..Default::default() }).unwrap();
    let mut out = Vec::new();
    for (from, to) in [(0, 24), (24, 25), (25, 28)] {
        out.extend(e.forward_tokens(&tokens[from..to], 0, to - from).unwrap());
    }
    out
}

fn set_var(isa: Option<&str>) {
    // SAFETY: the only test in this binary; nothing else reads the environment while it is changed.
    unsafe {
        match isa {
            Some(v) => std::env::set_var(st::engine::CPU_ISA_VAR, v),
            None => std::env::remove_var(st::engine::CPU_ISA_VAR),
        }
    }
}

fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn every_build_under_the_ceiling_gives_the_best_builds_logits() {
    let ids: ndarray::Array2<i64> = read_npy(&golden("tiny/input_ids.npy"));
    let tokens: Vec<u32> = ids.iter().take(28).map(|&t| t as u32).collect();
    assert_eq!(tokens.len(), 28);
    for name in ["tiny", "tiny-b"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(name);
        st_export::export(&model(name), &dir, &st_export::ExportOptions::new(st_export::Precision::Int4)).unwrap();
        let best = logits(&dir, &tokens, None);
        assert_eq!(cpu::build_ceiling(), None);
        let ceilings = [
            ("portable", BuildCeiling::Portable, Int8Isa::Baseline, AttentionBuild::Portable),
            ("avx2", BuildCeiling::Avx2, Int8Isa::Avx2, AttentionBuild::Avx2),
            ("avxvnni", BuildCeiling::AvxVnni, Int8Isa::AvxVnni, AttentionBuild::Avx2),
            ("AVX512", BuildCeiling::Avx512, cpu::int8_isa(), AttentionBuild::best()),
        ];
        for (value, ceiling, tiles, attention) in ceilings {
            if !ceiling.available() {
                eprintln!("{name}: this CPU has no {value} build");
                continue;
            }
            let got = logits(&dir, &tokens, Some(value));
            assert_eq!(cpu::build_ceiling(), Some(ceiling), "{value}");
            assert_eq!((cpu::int8_isa(), AttentionBuild::best()), (tiles, attention), "{value}");
            let d = rel_diff(&got, &best);
            eprintln!("{name} {value}: logits within {d:.2e} of the best build's");
            assert!(d <= BOUND, "{name} {value}: {d:.2e}");
            cpu::set_build_ceiling(None).unwrap();
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().join("tiny");
    st_export::export(&model("tiny"), &dir, &st_export::ExportOptions::new(st_export::Precision::Int4)).unwrap();
    let load = |isa| {
        set_var(Some(isa));
        Engine::load(&dir, &SessionOptions { threads: Some(1), ..Default::default() }).err().map(|e| e.to_string())
    };
    let err = load("avx3").expect("an unknown build must not load");
    assert!(err.contains("ST_CPU_ISA") && err.contains("avx3") && err.contains(BuildCeiling::NAMES), "{err}");
    for (value, ceiling) in [("avxvnni", BuildCeiling::AvxVnni), ("avx512", BuildCeiling::Avx512)] {
        if !ceiling.available() {
            let err = load(value).expect("a build this CPU lacks must not load");
            assert!(err.contains("ST_CPU_ISA") && err.contains("lacks"), "{err}");
        }
    }
    set_var(None);
}
