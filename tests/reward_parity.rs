//! `st::reward` against an independent Python implementation of docs/FORMATS.md#the-dense-reward (numpy + scipy's
//! linear_sum_assignment, tests/reference/reward_reference.py) on 400 generated completions,
//! valid and malformed, over five image sizes and both image-size spellings. Bound: 1e-9 per
//! component (both sides compute in f64 with the same formulas; only summation order differs).

mod common;

use st::reward::{ExactLabels, Weights, image_size_from_prompt, reward};

#[derive(serde::Deserialize)]
struct Case {
    completion: String,
    ground_truth: String,
    problem: String,
    expected: st::reward::Reward,
}

#[test]
fn rewards_match_the_python_reference() {
    let text = std::fs::read_to_string(common::golden("reward_cases.jsonl")).unwrap();
    let cases: Vec<Case> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(cases.len() >= 300);
    let (mut formatted, mut spatial) = (0, 0);
    for (i, c) in cases.iter().enumerate() {
        let size = image_size_from_prompt(&c.problem).unwrap();
        let got = reward(&c.completion, &c.ground_truth, size, &Weights::default(), &ExactLabels);
        let e = &c.expected;
        for (name, g, w) in [
            ("overall", got.overall, e.overall),
            ("format", got.format, e.format),
            ("count", got.count, e.count),
            ("accuracy", got.accuracy, e.accuracy),
            ("spatial", got.spatial, e.spatial),
        ] {
            assert!((g - w).abs() <= 1e-9, "case {i} {name}: {g} vs {w}\n{}\n{}", c.completion, c.ground_truth);
        }
        formatted += usize::from(e.format == 1.0);
        spatial += usize::from(e.spatial > 0.0 && e.spatial < 1.0);
    }
    // The cases exercise both sides of the gate and non-trivial spatial terms.
    assert!(formatted > 100 && formatted < cases.len() && spatial > 50, "{formatted} {spatial}");
}
