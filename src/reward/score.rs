//! Scoring one completion for training (GRPO rollouts): `st::reward` (dense with gating, or sparse), the runtime's
//! validity check, and the reward-error path. A reward that cannot be computed — the reward
//! code panicked, or it came out NaN or infinite — is counted as reward 0 with the reason kept,
//! so that the run goes on and samples.jsonl says what happened; metrics.jsonl counts such
//! completions in `reward_errors`. (`st::reward` is total and finite for every input tested,
//! boxes near the f64 range included; the guard is for what no test has found.)

use super::{ExactLabels, Weights, reward, sparse_reward};
use crate::scene::{Rules, parse_response};

/// A completion's score.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The reward (0 when `error` is set).
    pub reward: f64,
    /// Format, count, accuracy and spatial components (accuracy only, for the sparse reward).
    pub components: [f64; 4],
    /// Whether the completion is a valid response under every rule of the runtime's validator.
    pub valid: bool,
    /// Why the reward could not be computed.
    pub error: Option<String>,
}

/// Scores `completion` against the row's `ground_truth` for an image of `size` (W, H) and the
/// row's full `question` (its options bound the answer rule).
pub fn score(completion: &str, ground_truth: &str, size: (u32, u32), question: &str, sparse: bool) -> Scored {
    let valid = parse_response(completion, &Rules::new(size, question)).valid;
    let computed = || {
        if sparse {
            let r = sparse_reward(completion, ground_truth);
            (r, [0.0, 0.0, r, 0.0])
        } else {
            let wh = (f64::from(size.0), f64::from(size.1));
            let r = reward(completion, ground_truth, wh, &Weights::default(), &ExactLabels);
            (r.overall, [r.format, r.count, r.accuracy, r.spatial])
        }
    };
    match guarded(computed) {
        Ok((reward, components)) => Scored { reward, components, valid, error: None },
        Err(error) => Scored { reward: 0.0, components: [0.0; 4], valid, error: Some(error) },
    }
}

/// Runs a reward function; a panic or a non-finite result is an error saying which.
fn guarded(f: impl FnOnce() -> (f64, [f64; 4]) + std::panic::UnwindSafe) -> Result<(f64, [f64; 4]), String> {
    match std::panic::catch_unwind(f) {
        Ok((r, c)) if r.is_finite() && c.iter().all(|x| x.is_finite()) => Ok((r, c)),
        Ok((r, c)) => Err(format!(
            "the reward is not finite ({r}; format {}, count {}, accuracy {}, spatial {}): counted as 0",
            c[0], c[1], c[2], c[3]
        )),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("the reward function failed ({what}): counted as 0"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GT: &str = r#"<observe> a cup </observe><scene>{"objects": [{"id": "cup.1", "bbox": [10, 10, 50, 50]}], "relationships": []}</scene><think> t </think><answer> (A) left </answer>"#;
    const Q: &str = "Where is the cup? (A) left (B) right";

    #[test]
    fn a_correct_completion_scores_its_components() {
        let s = score(GT, GT, (100, 100), Q, false);
        assert_eq!(s.error, None);
        // CIoU of a box with itself is 1 up to its 1e-7 guards against division by zero.
        assert!(s.components.iter().all(|c| (c - 1.0).abs() < 1e-6), "{s:?}");
        assert!((s.reward - 1.0).abs() < 1e-6, "{s:?}");
        assert!(s.valid, "{s:?}");
        let sparse = score(GT, GT, (100, 100), Q, true);
        assert_eq!((sparse.reward, sparse.components), (1.0, [0.0, 0.0, 1.0, 0.0]));
    }

    #[test]
    fn boxes_near_the_f64_range_still_score() {
        // CIoU of such a box is NaN (its area overflows); the Hungarian assignment then fails and
        // the spatial term is 0, so the reward stays finite: no error.
        let huge = GT.replace("[10, 10, 50, 50]", "[0, 0, 1e300, 1e300]");
        let s = score(&huge, GT, (100, 100), Q, false);
        assert_eq!(s.error, None);
        assert_eq!(s.components, [1.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn a_panicking_or_non_finite_reward_is_an_error() {
        let e = guarded(|| panic!("boom")).unwrap_err();
        assert!(e.contains("boom") && e.contains("counted as 0"), "{e}");
        let e = guarded(|| (f64::NAN, [1.0, 0.0, 0.0, 0.0])).unwrap_err();
        assert!(e.contains("not finite"), "{e}");
        let e = guarded(|| (0.5, [1.0, f64::INFINITY, 0.0, 0.0])).unwrap_err();
        assert!(e.contains("not finite"), "{e}");
        assert_eq!(guarded(|| (0.5, [1.0; 4])), Ok((0.5, [1.0; 4])));
    }
}
