//! The sampling chain against transformers' logits processors (goldens/sampling.json, written by
//! tests/reference/sampling_goldens.py), and the pick: greedy = argmax, seeded draws are
//! reproducible and follow the processed distribution.

mod common;

use st::decode::{Sampler, SamplingParams};

#[derive(serde::Deserialize)]
struct Row {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    repetition_penalty: f32,
    history: Vec<u32>,
    logits: Vec<f32>,
    processed: Vec<Option<f32>>,
}

fn params(r: &Row) -> SamplingParams {
    SamplingParams {
        temperature: Some(r.temperature),
        top_k: r.top_k,
        top_p: r.top_p,
        repetition_penalty: r.repetition_penalty,
        seed: 1,
    }
}

#[test]
fn stages_match_transformers_processors() {
    let rows: Vec<Row> =
        serde_json::from_str(&std::fs::read_to_string(common::golden("sampling.json")).unwrap()).unwrap();
    assert_eq!(rows.len(), 24);
    for (n, r) in rows.iter().enumerate() {
        let mut logits = r.logits.clone();
        Sampler::new(&params(r)).unwrap().process(&mut logits, &r.history).unwrap();
        for (i, (got, want)) in logits.iter().zip(&r.processed).enumerate() {
            match want {
                // Same f32 operations in the same order: equal to the last bit but for the
                // division/multiplication rounding, so 1 ulp-scale tolerance.
                Some(w) => assert!((got - w).abs() <= 1e-6 * w.abs().max(1.0), "row {n} token {i}: {got} vs {w}"),
                None => assert_eq!(*got, f32::NEG_INFINITY, "row {n} token {i} should be masked"),
            }
        }
    }
}

#[test]
fn greedy_is_argmax_with_first_index_on_ties() {
    let mut s = Sampler::new(&SamplingParams::default()).unwrap();
    assert!(s.stage_names().is_empty());
    assert_eq!(s.sample(&mut [0.5, 2.0, -1.0, 2.0], &[]).unwrap(), 1);
    let mut s = Sampler::new(&SamplingParams { repetition_penalty: 4.0, ..Default::default() }).unwrap();
    // Token 1 was seen: 2.0 / 4 = 0.5 < 1.5.
    assert_eq!(s.sample(&mut [0.0, 2.0, 1.5], &[1]).unwrap(), 2);
}

#[test]
fn seeded_draws_are_reproducible_and_follow_the_distribution() {
    let p = SamplingParams { temperature: Some(1.0), top_k: 3, seed: 7, ..Default::default() };
    let logits = [0.0f32, (2.0f32).ln(), -5.0, (3.0f32).ln(), -9.0];
    let draw = |p: &SamplingParams, n: usize| {
        let mut s = Sampler::new(p).unwrap();
        (0..n).map(|_| s.sample(&mut logits.clone(), &[]).unwrap()).collect::<Vec<_>>()
    };
    let a = draw(&p, 6000);
    assert_eq!(a, draw(&p, 6000), "same seed, same draws");
    assert_ne!(a, draw(&SamplingParams { seed: 8, ..p.clone() }, 6000));
    // top-k 3 keeps tokens 0, 1, 3 with probabilities 1/6, 2/6, 3/6.
    let count = |t: u32| a.iter().filter(|&&x| x == t).count() as f64 / a.len() as f64;
    assert_eq!(count(2) + count(4), 0.0);
    // Binomial standard deviation at n = 6000 is ≤ 0.0065; 4σ bounds.
    for (t, want) in [(0, 1.0 / 6.0), (1, 2.0 / 6.0), (3, 3.0 / 6.0)] {
        assert!((count(t) - want).abs() < 0.026, "token {t}: {} vs {want}", count(t));
    }
}

#[test]
fn bad_parameters_are_named() {
    for (p, name) in [
        (SamplingParams { temperature: Some(-1.0), ..Default::default() }, "temperature"),
        (SamplingParams { temperature: Some(f32::NAN), ..Default::default() }, "temperature"),
        (SamplingParams { top_p: 0.0, ..Default::default() }, "top_p"),
        (SamplingParams { repetition_penalty: 0.0, ..Default::default() }, "repetition_penalty"),
    ] {
        let err = Sampler::new(&p).err().unwrap().to_string();
        assert!(err.contains(name), "{err}");
    }
    let mut s = Sampler::new(&SamplingParams::default()).unwrap();
    let err = s.sample(&mut [f32::NEG_INFINITY; 3], &[]).unwrap_err().to_string();
    assert!(err.contains("masked"), "{err}");
}
