//! PEFT adapters both ways: adapters PEFT wrote (current and older key prefixes) load in st and
//! give PEFT's logits and greedy tokens; an adapter st writes loads in `PeftModel.from_pretrained`
//! with no missing or unexpected keys and gives st's logits (checked by tests/reference/peft_goldens.py
//! in the project's .venv-train); adapters that do not fit the checkpoint are clear errors.

mod common;
use common::*;
use st_checkpoint::LoraAdapter;
use std::path::Path;

fn adapter_dir(name: &str) -> std::path::PathBuf {
    root().join("tests/fixtures/adapters").join(name)
}

#[test]
fn peft_written_adapters_give_peft_logits() {
    for (model, adapter) in [
        ("tiny", "tiny-peft"),
        ("tiny", "tiny-peft-legacy-keys"),
        ("tiny-b", "tiny-b-peft"),
        ("tiny-b", "tiny-b-peft-legacy-keys"),
    ] {
        let (ckpt, mut m) = load(model);
        let a = LoraAdapter::open(adapter_dir(adapter)).unwrap();
        st_train::peft::load(&mut m, &a, &ckpt.config).unwrap();
        let (batch, delta) = golden_batch(model);
        let g = golden_dir(model).join("peft");
        let want = npy_f32(&g.join("logits.npy"));
        let logits = tch::no_grad(|| m.forward(&batch)).unwrap();
        let err = rel_err(&last_rows(&logits, want.shape()[0] as i64), &want);
        eprintln!("{adapter}: relative logit error {err:.2e} against PEFT");
        assert!(err < 1e-4, "{adapter}: relative logit error {err:e} against PEFT");
        let tokens: Vec<i64> = npy_i64(&g.join("greedy_tokens.npy")).iter().copied().collect();
        let stops: Vec<i64> = ckpt.generation.eos_token_ids.iter().map(|&t| t as i64).collect();
        assert_eq!(st_train::generate::greedy(&m, &batch, delta, tokens.len(), &stops).unwrap(), tokens, "{adapter}");
    }
}

/// A nonzero st adapter on `model`: rsLoRA, a subset of targets, seeded values.
fn st_adapter(model: &str, targets: &[&str]) -> (st_checkpoint::Checkpoint, st_train::TextModel) {
    let (ckpt, mut m) = load(model);
    let opts = st_train::LoraOptions {
        rank: 5,
        alpha: 7.0,
        dropout: 0.1,
        rslora: true,
        targets: targets.iter().map(|s| s.to_string()).collect(),
    };
    m.add_lora(&opts, 3).unwrap();
    tch::manual_seed(11);
    tch::no_grad(|| {
        for (name, p) in m.lora_parameters() {
            if name.ends_with("lora_B") {
                let mut p = p.shallow_clone();
                p.copy_(&(tch::Tensor::randn(p.size(), (tch::Kind::Float, tch::Device::Cpu)) * 0.2));
            }
        }
    });
    (ckpt, m)
}

#[test]
fn st_written_adapter_loads_in_peft_with_st_logits() {
    let python = root().join(".venv-train/bin/python");
    assert!(python.is_file(), "{} missing: `make venv-train` installs torch, transformers and peft", python.display());
    for (model, targets) in [
        ("tiny", vec!["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
        ("tiny-b", vec!["v_proj", "gate_proj"]),
    ] {
        let (_, m) = st_adapter(model, &targets);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("adapter");
        st_train::peft::save(&m, &dir, &format!("tests/fixtures/models/{model}")).unwrap();
        let (batch, _) = golden_batch(model);
        let logits = tch::no_grad(|| m.forward(&batch)).unwrap();
        let st_logits = tmp.path().join("st_logits.npy");
        ndarray_npy::write_npy(&st_logits, &last_rows(&logits, 32)).unwrap();
        let out = std::process::Command::new(&python)
            .arg(root().join("tests/reference/peft_goldens.py"))
            .args([
                "check".as_ref(),
                model_dir(model).as_os_str(),
                dir.as_os_str(),
                st_logits.as_os_str(),
                golden_dir(model).as_os_str(),
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{model}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        eprintln!("{model}: {}", stdout.trim());
        assert!(stdout.contains("ok adapter"), "{stdout}");
    }
}

#[test]
fn st_adapter_round_trips_exactly() {
    let (ckpt, m) = st_adapter("tiny-b", &["q_proj", "down_proj"]);
    let tmp = tempfile::tempdir().unwrap();
    st_train::peft::save(&m, tmp.path(), "base").unwrap();
    let a = LoraAdapter::open(tmp.path()).unwrap();
    assert_eq!(a.config.r, 5);
    assert!(a.config.use_rslora);
    let (_, mut m2) = load("tiny-b");
    st_train::peft::load(&mut m2, &a, &ckpt.config).unwrap();
    let p1 = m.lora_parameters();
    let p2 = m2.lora_parameters();
    assert_eq!(p1.len(), p2.len());
    for ((n1, t1), (n2, t2)) in p1.iter().zip(&p2) {
        assert_eq!(n1, n2);
        assert_eq!(f64::try_from((*t1 - *t2).abs().max()).unwrap(), 0.0, "{n1}");
    }
}

fn open_err(dir: &Path, model: &str) -> String {
    let ckpt = st_checkpoint::Checkpoint::open(model_dir(model)).unwrap();
    match LoraAdapter::open(dir).and_then(|a| a.validate(&ckpt.config)) {
        Ok(()) => panic!("{} accepted for {model}", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn adapters_that_do_not_fit_are_clear_errors() {
    // Another model's adapter: the error names the tensor and both shapes.
    let e = open_err(&adapter_dir("tiny-b-peft"), "tiny");
    assert!(e.contains("lora_A.weight") && e.contains("expected"), "{e}");
    // A rank that disagrees with the config.
    let tmp = tempfile::tempdir().unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(adapter_dir("tiny-peft").join(f), tmp.path().join(f)).unwrap();
    }
    let cfg = tmp.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("\"r\": 4", "\"r\": 8");
    std::fs::write(&cfg, text).unwrap();
    let e = open_err(tmp.path(), "tiny");
    assert!(e.contains("model.layers.0.") && e.contains("expected [8, "), "{e}");
    // No weights file.
    std::fs::remove_file(tmp.path().join("adapter_model.safetensors")).unwrap();
    let e = open_err(tmp.path(), "tiny");
    assert!(e.contains("adapter_model.safetensors"), "{e}");
    // Not a directory.
    let e = open_err(&tmp.path().join("nope"), "tiny");
    assert!(e.contains("nope"), "{e}");
}
