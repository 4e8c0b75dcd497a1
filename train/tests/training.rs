//! The training numerics: LoRA gradients by autograd agree with finite differences; per-layer
//! gradient checkpointing gives the same gradients as a plain backward (dropout on, its masks
//! replayed from the per-layer seed); our AdamW equals libtorch's own torch::optim::AdamW step
//! for step; clipping and the schedule follow their definitions.

mod common;
use common::*;
use st_train::optim::{self, AdamW, AdamWConfig};
use st_train::sft::SftSample;
use tch::{Kind, Tensor};

/// libtorch's generator is process-wide and the tests of this file run on parallel threads:
/// the ones that draw random numbers hold this lock.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// The golden prompt with a short "completion": labels on its last 24 positions.
fn sample(golden: &str) -> (st_train::Batch, Tensor) {
    let (batch, _) = golden_batch(golden);
    let ids: Vec<i64> = Vec::<i64>::try_from(&batch.input_ids.view([-1])).unwrap();
    let labels = SftSample::completion_labels(&ids, ids.len() - 24);
    let n = ids.len() as i64;
    (batch, Tensor::from_slice(&labels).view([1, n]))
}

fn with_adapter(model: &str, dropout: f64) -> st_train::TextModel {
    let (_, mut m) = load(model);
    let opts = st_train::LoraOptions { rank: 4, alpha: 8.0, dropout, ..Default::default() };
    m.add_lora(&opts, 5).unwrap();
    tch::manual_seed(9);
    tch::no_grad(|| {
        for (name, p) in m.lora_parameters() {
            if name.ends_with("lora_B") {
                let mut p = p.shallow_clone();
                p.copy_(&(Tensor::randn(p.size(), (Kind::Float, tch::Device::Cpu)) * 0.1));
            }
        }
    });
    m
}

fn grads(m: &st_train::TextModel) -> Vec<Tensor> {
    m.lora_parameters().iter().map(|(_, p)| p.grad().copy()).collect()
}

#[test]
fn checkpointed_gradients_equal_plain_ones() {
    let _rng = rng_lock();
    for model in ["tiny", "tiny-b"] {
        let m = with_adapter(model, 0.1);
        let (batch, labels) = sample(model);
        let params: Vec<Tensor> = m.lora_parameters().iter().map(|(_, p)| p.shallow_clone()).collect();
        let params: Vec<&Tensor> = params.iter().collect();
        m.set_training(true);
        m.set_dropout_seed(Some(77));
        optim::zero_grad(&params);
        let (l1, n1) = m.forward_backward(&batch, &labels, 1.0 / 24.0, false).unwrap();
        let g1 = grads(&m);
        optim::zero_grad(&params);
        let (l2, n2) = m.forward_backward(&batch, &labels, 1.0 / 24.0, true).unwrap();
        let g2 = grads(&m);
        assert_eq!((n1, n2), (24, 24));
        assert!((l1 - l2).abs() <= 1e-9 * l1.abs(), "{model}: loss {l1} vs {l2}");
        for (a, b) in g1.iter().zip(&g2) {
            let scale = f64::try_from(a.abs().max()).unwrap().max(1e-12);
            let err = f64::try_from((a - b).abs().max()).unwrap() / scale;
            assert!(err < 1e-5, "{model}: checkpointed gradient differs by {err:e} (relative)");
        }
        // Dropout was really on: another seed gives other gradients.
        optim::zero_grad(&params);
        m.set_dropout_seed(Some(78));
        m.forward_backward(&batch, &labels, 1.0 / 24.0, false).unwrap();
        let g3 = grads(&m);
        assert!(f64::try_from((&g1[0] - &g3[0]).abs().max()).unwrap() > 0.0);
    }
}

#[test]
fn lora_gradients_agree_with_finite_differences() {
    let _rng = rng_lock();
    let m = with_adapter("tiny", 0.0);
    let (batch, labels) = sample("tiny");
    let loss_of = |m: &st_train::TextModel| -> f64 {
        tch::no_grad(|| {
            let h = m.hidden(&batch, None).unwrap();
            f64::try_from(m.token_loss(&h, &labels).unwrap().0.to_kind(Kind::Double)).unwrap()
        })
    };
    let params: Vec<(String, Tensor)> =
        m.lora_parameters().iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect();
    m.forward_backward(&batch, &labels, 1.0, false).unwrap();
    // A few entries of A and B in the first and last layers; central differences in f32 with
    // h = 1e-2 (the loss is a sum over 24 tokens of O(7) each): agreement to 2 % or 2e-3 absolute.
    for (name, p) in [&params[0], &params[1], &params[params.len() - 2], &params[params.len() - 1]] {
        let g = p.grad();
        for flat in [0i64, 3, 17] {
            let idx = flat % p.numel() as i64;
            let analytic = f64::try_from(g.view([-1]).get(idx)).unwrap();
            let h = 1e-2;
            let orig = f64::try_from(p.view([-1]).get(idx)).unwrap();
            let set = |v: f64| {
                tch::no_grad(|| {
                    let _ = p.view([-1]).get(idx).fill_(v);
                })
            };
            set(orig + h);
            let up = loss_of(&m);
            set(orig - h);
            let down = loss_of(&m);
            set(orig);
            let numeric = (up - down) / (2.0 * h);
            let tol = 2e-3f64.max(0.02 * analytic.abs());
            assert!(
                (numeric - analytic).abs() < tol,
                "{name}[{idx}]: autograd {analytic} vs finite difference {numeric}"
            );
        }
    }
}

#[test]
fn adamw_equals_libtorch_adamw() {
    let _rng = rng_lock();
    let cfg = AdamWConfig { lr: 1e-2, beta1: 0.85, beta2: 0.99, eps: 1e-6, weight_decay: 0.05 };
    tch::manual_seed(3);
    let init =
        [Tensor::randn([5, 7], (Kind::Float, tch::Device::Cpu)), Tensor::randn([3], (Kind::Float, tch::Device::Cpu))];
    // Ours.
    let ours: Vec<Tensor> = init.iter().map(|t| t.copy().set_requires_grad(true)).collect();
    let refs: Vec<&Tensor> = ours.iter().collect();
    let mut opt = AdamW::new(cfg.clone(), &refs);
    // libtorch's (torch::optim::AdamW through tch's VarStore).
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let theirs: Vec<Tensor> = init.iter().enumerate().map(|(i, t)| vs.root().var_copy(&format!("p{i}"), t)).collect();
    use tch::nn::OptimizerConfig;
    let mut topt =
        tch::nn::AdamW { beta1: cfg.beta1, beta2: cfg.beta2, wd: cfg.weight_decay, eps: cfg.eps, amsgrad: false }
            .build(&vs, cfg.lr)
            .unwrap();
    for step in 0..5 {
        let target = Tensor::randn([5, 7], (Kind::Float, tch::Device::Cpu));
        let loss = |p: &[Tensor]| {
            ((&p[0] - &target).pow_tensor_scalar(2).sum(Kind::Float) + p[1].sin().sum(Kind::Float)) * (step + 1) as f64
        };
        optim::zero_grad(&refs);
        loss(&ours).backward();
        opt.step(&refs, cfg.lr);
        topt.zero_grad();
        loss(&theirs).backward();
        topt.step();
        for (a, b) in ours.iter().zip(&theirs) {
            let err = f64::try_from((a - b).abs().max()).unwrap();
            assert!(err < 1e-6, "step {step}: AdamW differs from libtorch's by {err:e}");
        }
    }
}

#[test]
fn clipping_and_schedule() {
    let p = Tensor::zeros([4], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    (&p * Tensor::from_slice(&[3.0f32, 0.0, 4.0, 0.0])).sum(Kind::Float).backward();
    let norm = optim::clip_grad_norm(&[&p], 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-9);
    let g: Vec<f32> = Vec::try_from(&p.grad()).unwrap();
    assert!((g[0] - 3.0 / (5.0 + 1e-6) as f32).abs() < 1e-6 && (g[2] - 4.0 / (5.0 + 1e-6) as f32).abs() < 1e-6);
    // Warm-up reaches lr at step warmup-1, cosine from there to 0 at the end.
    assert!((optim::lr_at(1.0, 0, 4, 20) - 0.25).abs() < 1e-12);
    assert!((optim::lr_at(1.0, 3, 4, 20) - 1.0).abs() < 1e-12);
    assert!((optim::lr_at(1.0, 4, 4, 20) - 1.0).abs() < 1e-12);
    assert!((optim::lr_at(1.0, 12, 4, 20) - 0.5).abs() < 1e-12);
    assert!(optim::lr_at(1.0, 19, 4, 20) < 0.01);
}

#[test]
fn collate_pads_without_changing_the_loss() {
    let _rng = rng_lock();
    // Two sequences of different length in one batch: the summed loss equals the two alone.
    let m = with_adapter("tiny", 0.0);
    let (batch, labels) = sample("tiny");
    let ids: Vec<i64> = Vec::try_from(&batch.input_ids.view([-1])).unwrap();
    let pos: Vec<i64> = Vec::try_from(&batch.positions.view([-1])).unwrap();
    let n = ids.len();
    let img = batch.image_embeds.as_ref().unwrap();
    let mk = |cut: usize| SftSample {
        ids: ids[..n - cut].to_vec(),
        positions: [0, 1, 2].map(|a| pos[a * n..a * n + n - cut].to_vec()),
        labels: SftSample::completion_labels(&ids[..n - cut], n - 30),
        image_embeds: Some(img.shallow_clone()),
    };
    let (a, b) = (mk(0), mk(5));
    let loss = |xs: &[&SftSample]| {
        let (bt, lb) = st_train::sft::collate(xs, m.image_token_id);
        tch::no_grad(|| {
            let h = m.hidden(&bt, None).unwrap();
            f64::try_from(m.token_loss(&h, &lb).unwrap().0).unwrap()
        })
    };
    let together = loss(&[&a, &b]);
    let apart = loss(&[&a]) + loss(&[&b]);
    assert!((together - apart).abs() < 1e-4 * apart, "{together} vs {apart}");
    let _ = labels;
}
