//! The trainable model equals transformers: logits of a full forward (the committed goldens of
//! tiny and tiny-b, in all four on-disk layouts) within 1e-4 of the largest logit, and greedy
//! generation through the KV cache gives the golden tokens. Inputs are the goldens' own: token
//! ids, M-RoPE positions and transformers' vision-tower output.

mod common;
use common::*;

const LAYOUTS: [(&str, &str); 4] =
    [("tiny", "tiny"), ("tiny-legacy", "tiny"), ("tiny-b", "tiny-b"), ("tiny-b-lm-names", "tiny-b")];

#[test]
fn logits_equal_transformers_in_every_layout() {
    for (model, golden) in LAYOUTS {
        let (_, m) = load(model);
        let (batch, _) = golden_batch(golden);
        let logits = tch::no_grad(|| m.forward(&batch)).unwrap();
        let want = npy_f32(&golden_dir(golden).join("logits.npy"));
        let got = last_rows(&logits, want.shape()[0] as i64);
        let err = rel_err(&got, &want);
        // f32 throughout, as the reference; the bound leaves room for a different summation order.
        eprintln!("{model}: relative logit error {err:.2e}");
        assert!(err < 1e-4, "{model}: relative logit error {err:e}");
    }
}

#[test]
fn greedy_with_kv_cache_equals_golden_tokens() {
    for (model, golden) in [("tiny", "tiny"), ("tiny-b", "tiny-b")] {
        let (ckpt, m) = load(model);
        let (batch, delta) = golden_batch(golden);
        let want: Vec<i64> = npy_i64(&golden_dir(golden).join("greedy_tokens.npy")).iter().copied().collect();
        let stops: Vec<i64> = ckpt.generation.eos_token_ids.iter().map(|&t| t as i64).collect();
        let got = st_train::generate::greedy(&m, &batch, delta, want.len(), &stops).unwrap();
        assert_eq!(got, want, "{model}");
    }
}

#[test]
fn disabled_adapter_is_the_base_model() {
    let (_, mut m) = load("tiny");
    let (batch, _) = golden_batch("tiny");
    let base = tch::no_grad(|| m.forward(&batch)).unwrap();
    m.add_lora(&st_train::LoraOptions { rank: 4, ..Default::default() }, 7).unwrap();
    // B = 0 at start: the adapted model equals the base.
    let fresh = tch::no_grad(|| m.forward(&batch)).unwrap();
    assert_eq!(f64::try_from((&fresh - &base).abs().max()).unwrap(), 0.0);
    // A nonzero B changes the logits; switching the adapter off gives the base back exactly.
    tch::no_grad(|| {
        for (name, p) in m.lora_parameters() {
            if name.ends_with("lora_B") {
                let mut p = p.shallow_clone();
                p.copy_(&(tch::Tensor::randn(p.size(), (tch::Kind::Float, tch::Device::Cpu)) * 0.1));
            }
        }
    });
    let adapted = tch::no_grad(|| m.forward(&batch)).unwrap();
    assert!(f64::try_from((&adapted - &base).abs().max()).unwrap() > 1e-3);
    m.set_adapter_enabled(false);
    let off = tch::no_grad(|| m.forward(&batch)).unwrap();
    assert_eq!(f64::try_from((&off - &base).abs().max()).unwrap(), 0.0);
}

#[test]
fn f16_sources_load_too() {
    // tiny's bf16 tensors rewritten as f16 (exact for these magnitudes, up to f16 subnormals):
    // the same logits as the goldens within the same bound.
    let src = model_dir("tiny");
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        if e.file_name() != "model.safetensors" {
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::BF16, "{name}");
        let data: Vec<u8> = view
            .data()
            .chunks_exact(2)
            .flat_map(|c| half::f16::from_f32(half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).to_le_bytes())
            .collect();
        owned.push((name.to_string(), view.shape().to_vec(), data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), d).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &tmp.path().join("model.safetensors")).unwrap();
    let ckpt = st_checkpoint::Checkpoint::open(tmp.path()).unwrap();
    let m = st_train::TextModel::load(&ckpt, &st_train::LoadOptions::cpu()).unwrap();
    let (batch, _) = golden_batch("tiny");
    let logits = tch::no_grad(|| m.forward(&batch)).unwrap();
    let want = npy_f32(&golden_dir("tiny").join("logits.npy"));
    let err = rel_err(&last_rows(&logits, want.shape()[0] as i64), &want);
    assert!(err < 1e-4, "f16 source: relative logit error {err:e}");
}

#[test]
fn batched_group_sampling_shares_the_prefill_exactly() {
    // G = 3 rows decoding greedily through the batched cache give the golden greedy tokens each.
    let (_, m) = load("tiny");
    let (batch, delta) = golden_batch("tiny");
    let want: Vec<i64> = npy_i64(&golden_dir("tiny").join("greedy_tokens.npy")).iter().copied().collect();
    let mut pick = |_: usize, row: &mut [f32]| -> st_train::Result<st_train::generate::Pick> {
        let (i, _) = row.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        Ok(st_train::generate::Pick { token: i as i64, done: false })
    };
    let got = st_train::generate::sample_group(&m, &batch, delta, 3, want.len(), &mut pick).unwrap();
    for g in got {
        assert_eq!(g, want);
    }
}
