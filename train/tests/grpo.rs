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
        let parts =
            grpo_loss(&logp, &mat(&c["old_logp"]), Some(&ref_logp), &adv_t, &mat(&c["mask"]), &cfg, None).unwrap();
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

/// tiny with the committed PEFT adapter, and the reference's four rollouts as GRPO sequences.
fn update_setup() -> (st_train::TextModel, Vec<st_train::grpo::GrpoSequence>, serde_json::Value) {
    let (ckpt, mut m) = load("tiny");
    let a = st_checkpoint::LoraAdapter::open(root().join("tests/fixtures/adapters/tiny-peft")).unwrap();
    st_train::peft::load(&mut m, &a, &ckpt.config).unwrap();
    let g = golden_dir("tiny");
    let u: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(g.join("grpo/update.json")).unwrap()).unwrap();
    let (batch, delta) = golden_batch("tiny");
    let prompt: Vec<i64> = Vec::try_from(&batch.input_ids.view([-1])).unwrap();
    let pos: Vec<i64> = Vec::try_from(&batch.positions.view([-1])).unwrap();
    let p = prompt.len();
    let advantages: Vec<f64> = serde_json::from_value(u["advantages"].clone()).unwrap();
    let completions: Vec<Vec<i64>> = serde_json::from_value(u["completions"].clone()).unwrap();
    let img = batch.image_embeds.unwrap();
    let seqs = completions
        .iter()
        .zip(&advantages)
        .map(|(c, &advantage)| {
            let ids: Vec<i64> = prompt.iter().chain(c).copied().collect();
            let positions = [0, 1, 2].map(|a| {
                let mut v = pos[a * p..(a + 1) * p].to_vec();
                v.extend((0..c.len()).map(|k| (p + k) as i64 + delta));
                v
            });
            let labels = st_train::sft::SftSample::completion_labels(&ids, p);
            let sample = st_train::sft::SftSample { ids, positions, labels, image_embeds: Some(img.shallow_clone()) };
            st_train::grpo::GrpoSequence { sample, advantage }
        })
        .collect();
    (m, seqs, u)
}

fn update_cfg(u: &serde_json::Value, epochs: usize) -> (st_train::grpo::UpdateConfig, st_train::optim::AdamWConfig) {
    let loss = GrpoLossConfig { kl_coef: u["kl_coef"].as_f64().unwrap(), ..Default::default() };
    // Micro-batches of 3 (the reference runs one sequence at a time): the batch denominators must hold.
    let cfg = st_train::grpo::UpdateConfig {
        loss,
        epochs_per_batch: epochs,
        micro_batch: 3,
        max_grad_norm: u["max_grad_norm"].as_f64().unwrap(),
    };
    let adamw = st_train::optim::AdamWConfig {
        lr: u["lr"].as_f64().unwrap(),
        weight_decay: u["weight_decay"].as_f64().unwrap(),
        ..Default::default()
    };
    (cfg, adamw)
}

fn compare_tensors(m: &st_train::TextModel, file: &std::path::Path, scale_by: f64, grads: bool) {
    let want: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(file).unwrap().into_iter().collect();
    let params = m.lora_parameters();
    assert_eq!(params.len(), want.len());
    for (name, p) in params {
        let got = if grads { p.grad() } else { p.shallow_clone() };
        let w = &want[&name] * scale_by;
        let err = f64::try_from((&got - &w).abs().max()).unwrap() / f64::try_from(w.abs().max()).unwrap().max(1e-12);
        assert!(err < 1e-4, "{} {name}: relative difference {err:e}", file.display());
    }
}

#[test]
fn one_and_two_updates_equal_pytorch_and_peft() {
    let g = golden_dir("tiny").join("grpo");
    // One update: loss, KL, clip fraction, the (clipped) gradient of every LoRA tensor, the adapter.
    let (m, seqs, u) = update_setup();
    let (cfg, adamw) = update_cfg(&u, 1);
    let params: Vec<Tensor> = m.lora_parameters().iter().map(|(_, p)| p.shallow_clone()).collect();
    let mut opt = st_train::optim::AdamW::new(adamw.clone(), &params.iter().collect::<Vec<_>>());
    let stats = st_train::grpo::update(&m, &mut opt, &seqs, &cfg, adamw.lr).unwrap();
    let want = &u["stats"][0];
    for (key, got) in
        [("loss", stats[0].loss), ("pg_loss", stats[0].pg_loss), ("kl", stats[0].kl), ("grad_norm", stats[0].grad_norm)]
    {
        close(got, want[key].as_f64().unwrap(), &format!("update 1 {key}"));
    }
    let coef = (u["max_grad_norm"].as_f64().unwrap() / (stats[0].grad_norm + 1e-6)).min(1.0);
    compare_tensors(&m, &g.join("grads_1.safetensors"), coef, true);
    compare_tensors(&m, &g.join("adapter_1.safetensors"), 1.0, false);
    // Two inner updates on the same rollouts: the second's ratios leave the clip range.
    let (m, seqs, u) = update_setup();
    let (cfg, adamw) = update_cfg(&u, 2);
    let params: Vec<Tensor> = m.lora_parameters().iter().map(|(_, p)| p.shallow_clone()).collect();
    let mut opt = st_train::optim::AdamW::new(adamw.clone(), &params.iter().collect::<Vec<_>>());
    let stats = st_train::grpo::update(&m, &mut opt, &seqs, &cfg, adamw.lr).unwrap();
    for (i, s) in stats.iter().enumerate() {
        let want = &u["stats"][i];
        for (key, got) in [
            ("loss", s.loss),
            ("pg_loss", s.pg_loss),
            ("kl", s.kl),
            ("clip_frac", s.clip_frac),
            ("grad_norm", s.grad_norm),
        ] {
            close(got, want[key].as_f64().unwrap(), &format!("update {} {key}", i + 1));
        }
    }
    assert!(stats[1].clip_frac > 0.1, "the second update must exercise the clipping");
    compare_tensors(&m, &g.join("adapter_2.safetensors"), 1.0, false);
}

#[test]
fn grpo_gradients_agree_with_finite_differences() {
    // The GRPO loss (KL on, old log-probs from a slightly different policy so the ratios are not 1)
    // as a function of a few LoRA entries: autograd against central differences.
    let (m, seqs, u) = update_setup();
    let cfg = GrpoLossConfig { kl_coef: u["kl_coef"].as_f64().unwrap(), ..Default::default() };
    let chunks: Vec<Vec<&st_train::sft::SftSample>> =
        seqs.chunks(2).map(|c| c.iter().map(|s| &s.sample).collect()).collect();
    let advs: Vec<Tensor> =
        seqs.chunks(2).map(|c| Tensor::from_slice(&c.iter().map(|s| s.advantage as f32).collect::<Vec<_>>())).collect();
    let lengths: Vec<usize> = seqs.iter().map(|s| s.sample.target_tokens()).collect();
    let norm = st_train::grpo::Norm {
        tokens: lengths.iter().sum::<usize>() as f64,
        seqs: seqs.len() as f64,
        max_len: *lengths.iter().max().unwrap() as f64,
    };
    let logps = |m: &st_train::TextModel| -> Vec<(Tensor, Tensor)> {
        chunks
            .iter()
            .map(|c| {
                let (b, l) = st_train::sft::collate(c, m.image_token_id);
                let h = m.hidden(&b, None).unwrap();
                (m.token_logprobs(&h, &l).unwrap(), l.ne(-100).to_kind(Kind::Float))
            })
            .collect()
    };
    let old: Vec<Tensor> = tch::no_grad(|| logps(&m)).into_iter().map(|(t, _)| t + 0.05).collect();
    m.set_adapter_enabled(false);
    let reference: Vec<Tensor> = tch::no_grad(|| logps(&m)).into_iter().map(|(t, _)| t).collect();
    m.set_adapter_enabled(true);
    let loss_of = |m: &st_train::TextModel| -> Tensor {
        let mut total = Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
        for (i, (lp, mask)) in logps(m).into_iter().enumerate() {
            let parts = grpo_loss(&lp, &old[i], Some(&reference[i]), &advs[i], &mask, &cfg, Some(&norm)).unwrap();
            total += parts.loss;
        }
        total
    };
    loss_of(&m).backward();
    let params: Vec<(String, Tensor)> =
        m.lora_parameters().iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect();
    for (name, p) in [&params[0], &params[1], &params[params.len() - 1]] {
        let g = p.grad();
        for idx in [0i64, 5] {
            let analytic = f64::try_from(g.view([-1]).get(idx)).unwrap();
            let orig = f64::try_from(p.view([-1]).get(idx)).unwrap();
            let h = 5e-3;
            let set = |v: f64| {
                tch::no_grad(|| {
                    let _ = p.view([-1]).get(idx).fill_(v);
                })
            };
            set(orig + h);
            let up = tch::no_grad(|| f64::try_from(loss_of(&m).to_kind(Kind::Double)).unwrap());
            set(orig - h);
            let down = tch::no_grad(|| f64::try_from(loss_of(&m).to_kind(Kind::Double)).unwrap());
            set(orig);
            let numeric = (up - down) / (2.0 * h);
            // f32 losses of order 0.1 differenced at h = 5e-3: agreement to 5 % or 2e-4.
            let tol = 2e-4f64.max(0.05 * analytic.abs());
            assert!(
                (numeric - analytic).abs() < tol,
                "{name}[{idx}]: autograd {analytic} vs finite difference {numeric}"
            );
        }
    }
}

#[test]
fn a_failed_reward_is_counted_kept_in_samples_and_the_run_goes_on() {
    // The rollout source marks one completion per group as a reward error (reward 0, a reason):
    // the run trains on, metrics.jsonl counts it, samples.jsonl holds it with its reason even
    // when it is not among the completions sampled for display.
    let (mut m, seqs, u) = update_setup();
    let (update, adamw) = update_cfg(&u, 1);
    let cfg = st_train::grpo::GrpoConfig {
        steps: 2,
        group: seqs.len(),
        prompts_per_step: 1,
        update,
        adamw,
        warmup_steps: 0,
        lora: m.lora_options().unwrap().clone(),
        seed: 3,
        save_every: 1,
        device: "cpu".into(),
        model: "tiny".into(),
        data: "test".into(),
        rollouts: serde_json::json!({ "source": "test" }),
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = st_train::run::RunDir::create(tmp.path()).unwrap();
    let last = seqs.len() - 1;
    let mut source = |_: &st_train::TextModel, _step: usize| {
        Ok(seqs
            .iter()
            .enumerate()
            .map(|(i, s)| st_train::grpo::Rollout {
                sample: st_train::sft::SftSample {
                    ids: s.sample.ids.clone(),
                    positions: s.sample.positions.clone(),
                    labels: s.sample.labels.clone(),
                    image_embeds: s.sample.image_embeds.as_ref().map(|t| t.shallow_clone()),
                },
                text: format!("completion {i}"),
                reward: if i == last { 0.0 } else { i as f64 / 4.0 + 0.1 },
                components: [1.0, 0.0, 0.0, 0.0],
                valid: true,
                error: (i == last).then(|| "the reward function failed (test)".to_string()),
            })
            .collect())
    };
    let hooks = st_train::sft::Hooks { progress: None, stop: None };
    let summary = st_train::grpo::train(&mut m, &cfg, &run, false, &hooks, &mut source).unwrap();
    assert_eq!((summary.steps, summary.interrupted), (2, false));
    let metrics = std::fs::read_to_string(run.path("metrics.jsonl")).unwrap();
    for l in metrics.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["reward_errors"], 1, "{v}");
        assert!(v["loss"].as_f64().unwrap().is_finite(), "{v}");
    }
    let samples = std::fs::read_to_string(run.path("samples.jsonl")).unwrap();
    let failed: Vec<serde_json::Value> = samples
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| !v["error"].is_null())
        .collect();
    assert_eq!(failed.len(), 2, "{samples}");
    assert!(failed.iter().all(|v| v["reward"] == 0.0 && v["completion"] == format!("completion {last}")));
}
