//! The GRPO objective against an independent PyTorch implementation of EasyR1's formulas
//! (tests/reference/grpo_reference.py → tests/fixtures/goldens/grpo_loss.json): advantages, loss,
//! policy-gradient part, KL, clip fraction and the gradient with respect to the log-probabilities,
//! for the three aggregations with and without KL; and the per-token log-probabilities equal
//! minus the per-token cross-entropy.

mod common;
use common::*;
use st_train::grpo::{GrpoLossConfig, group_advantages, grpo_loss};
use tch::{Kind, Tensor};

fn mat(v: &serde_json::Value) -> Tensor {
    let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).unwrap();
    let (b, t) = (rows.len() as i64, rows[0].len() as i64);
    Tensor::from_slice(&rows.concat()).view([b, t])
}

fn close(a: f64, b: f64, what: &str) {
    // f32 arithmetic on both sides; 1e-5 relative (or absolute near 0).
    assert!((a - b).abs() <= 1e-5 * b.abs().max(1e-2), "{what}: {a} vs reference {b}");
}

#[test]
fn objective_equals_the_pytorch_reference() {
    let text = std::fs::read_to_string(root().join("tests/fixtures/goldens/grpo_loss.json")).unwrap();
    let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    let mut clipped_somewhere = false;
    for (i, c) in cases.iter().enumerate() {
        let rewards: Vec<f64> = serde_json::from_value(c["rewards"].clone()).unwrap();
        let (adv, flat) = group_advantages(&rewards, c["group"].as_u64().unwrap() as usize).unwrap();
        let want_adv: Vec<f64> = serde_json::from_value(c["advantages"].clone()).unwrap();
        for (a, b) in adv.iter().zip(&want_adv) {
            close(*a, *b, &format!("case {i} advantage"));
        }
        if i % 3 == 0 {
            assert!(flat >= 1, "case {i}: the zero-spread group is counted");
        }
        let cfg = GrpoLossConfig {
            kl_coef: c["kl_coef"].as_f64().unwrap(),
            loss_agg: c["loss_agg"].as_str().unwrap().parse().unwrap(),
            ..Default::default()
        };
        let logp = mat(&c["logp"]).set_requires_grad(true);
        let adv_t = Tensor::from_slice(&adv.iter().map(|&a| a as f32).collect::<Vec<_>>());
        let ref_logp = mat(&c["ref_logp"]);
        let parts = grpo_loss(&logp, &mat(&c["old_logp"]), Some(&ref_logp), &adv_t, &mat(&c["mask"]), &cfg).unwrap();
        close(f64::try_from(&parts.loss).unwrap(), c["loss"].as_f64().unwrap(), &format!("case {i} loss"));
        close(parts.pg_loss, c["pg_loss"].as_f64().unwrap(), &format!("case {i} pg_loss"));
        close(parts.kl, c["kl"].as_f64().unwrap(), &format!("case {i} kl"));
        close(parts.clip_frac, c["clip_frac"].as_f64().unwrap(), &format!("case {i} clip_frac"));
        clipped_somewhere |= parts.clip_frac > 0.0;
        parts.loss.backward();
        let want = mat(&c["grad_logp"]);
        let err = f64::try_from((logp.grad() - &want).abs().max()).unwrap();
        let scale = f64::try_from(want.abs().max()).unwrap();
        assert!(err <= 1e-5 * scale, "case {i}: gradient differs by {err:e} (max {scale:e})");
    }
    assert!(clipped_somewhere, "the cases must exercise the clipping");
}

#[test]
fn bad_groups_are_errors() {
    assert!(group_advantages(&[1.0, 0.0], 1).unwrap_err().to_string().contains("at least 2"));
    assert!(group_advantages(&[1.0, 0.0, 1.0], 2).is_err());
    let (a, flat) = group_advantages(&[0.3, 0.3, 1.0, 0.0], 2).unwrap();
    assert_eq!(flat, 1);
    assert_eq!(&a[..2], &[0.0, 0.0]);
}

#[test]
fn token_logprobs_are_minus_the_cross_entropy() {
    let (_, m) = load("tiny");
    let (batch, _) = golden_batch("tiny");
    let ids: Vec<i64> = Vec::try_from(&batch.input_ids.view([-1])).unwrap();
    let n = ids.len();
    let labels = st_train::sft::SftSample::completion_labels(&ids, n - 20);
    let labels = Tensor::from_slice(&labels).view([1, n as i64]);
    let h = tch::no_grad(|| m.hidden(&batch, None)).unwrap();
    let lp = m.token_logprobs(&h, &labels).unwrap();
    let (ce, count) = m.token_loss(&h, &labels).unwrap();
    assert_eq!(count, 20);
    let sum = f64::try_from(lp.sum(Kind::Double)).unwrap();
    let ce = f64::try_from(ce).unwrap();
    assert!((sum + ce).abs() < 1e-4 * ce, "Σ log p = {sum}, CE = {ce}");
    // Unlabelled positions are 0.
    assert_eq!(f64::try_from(lp.narrow(1, 0, (n - 21) as i64).abs().sum(Kind::Double)).unwrap(), 0.0);
}
