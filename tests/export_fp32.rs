//! `st export --precision fp32` run through ONNX Runtime from Rust against the transformers
//! goldens: vision embeddings, logits of a full forward, and a greedy loop over the exported
//! graphs. Bound: max|Δ| / max|ref| ≤ 1e-4 (f32 with another summation order than PyTorch;
//! measured values are printed and recorded in docs/PARITY.md).

mod common;

use common::pipeline::{argmax, embed, export, prefill, rel_err, run_vision, step};
use common::{golden, read_json, read_npy};
use ndarray::Array2;

fn check_model(name: &str, golden_dir: &str) {
    check_model_with(name, golden_dir, &st_export::ExportOptions::default());
}

fn check_model_with(name: &str, golden_dir: &str, opts: &st_export::ExportOptions) {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = export(name, tmp.path(), opts);
    // The manifest names the special tokens as the tokenizer does.
    let tok = st::prompt::TextTokenizer::from_dir(&common::model(name)).unwrap();
    assert_eq!(g.manifest.special_tokens["<|im_end|>"], tok.special.im_end);
    assert_eq!(g.manifest.special_tokens["<|image_pad|>"], tok.special.image_pad);
    let want_logits: Array2<f32> = read_npy(&golden(&format!("{golden_dir}/logits.npy")));
    let want_tokens: ndarray::Array1<i64> = read_npy(&golden(&format!("{golden_dir}/greedy_tokens.npy")));
    let ids: Array2<i64> = read_npy(&golden(&format!("{golden_dir}/input_ids.npy")));
    let delta: Array2<i64> = read_npy(&golden(&format!("{golden_dir}/rope_deltas.npy")));
    let meta = read_json(&golden(&format!("{golden_dir}/meta.json")));
    let (logits, mut cache) = prefill(&mut g, golden_dir, want_logits.nrows() as i64);
    let err = rel_err(&logits, &want_logits);
    eprintln!(
        "{name}: logits max|Δ|/max|ref| = {err:.3e} (margin of the first greedy token {})",
        meta["last_logit_margin"]
    );
    assert!(err <= 1e-4, "{name}: relative logit error {err}");

    // Greedy decode, one token per step, positions continuing at index + rope delta.
    let prompt_len = ids.len();
    let mut tokens = vec![argmax(logits.row(logits.nrows() - 1))];
    let eos = g.manifest.generation.eos_token_ids.clone();
    while tokens.len() < want_tokens.len() && !eos.contains(&(*tokens.last().unwrap() as u32)) {
        let index = prompt_len + tokens.len() - 1;
        let p = (index as i64) + delta[[0, 0]];
        let e = embed(&mut g, &tokens[tokens.len() - 1..]);
        let l = step(&mut g, e, Array2::from_elem((3, 1), p), index, &mut cache, 1);
        tokens.push(argmax(l.row(0)));
    }
    assert_eq!(tokens, want_tokens.to_vec(), "{name}: greedy tokens");
}

#[test]
fn tiny_fp32_matches_transformers() {
    check_model("tiny", "tiny");
}

#[test]
fn tiny_b_fp32_matches_transformers() {
    check_model("tiny-b", "tiny-b");
}

#[test]
fn legacy_and_renamed_layouts_export_the_same_graphs() {
    check_model("tiny-legacy", "tiny");
    check_model("tiny-b-lm-names", "tiny-b");
}

fn check_vision(name: &str, golden_dir: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = export(name, tmp.path(), &st_export::ExportOptions::default());
    let got = run_vision(&mut g, golden_dir);
    let want: Array2<f32> = read_npy(&golden(&format!("{golden_dir}/vision_embeds.npy")));
    let err = rel_err(&got, &want);
    eprintln!("{name}: vision max|Δ|/max|ref| = {err:.3e}");
    assert!(err <= 1e-4, "{name}: vision relative error {err}");
}

#[test]
fn vision_fp32_matches_transformers() {
    check_vision("tiny", "tiny");
    check_vision("tiny-b", "tiny-b");
}

/// fp16 weight storage: bound 1e-2 against the f32 reference (the issue's), measured printed.
#[test]
fn fp16_weights_stay_within_one_percent() {
    for (name, dir) in [("tiny", "tiny"), ("tiny-b", "tiny-b")] {
        let tmp = tempfile::tempdir().unwrap();
        // Every part fp16: decoder linears, lm_head, embedding table, vision tower.
        let opts = st_export::ExportOptions::new(st_export::Precision::Fp16);
        let mut g = export(name, tmp.path(), &opts);
        let want: Array2<f32> = read_npy(&golden(&format!("{dir}/logits.npy")));
        let (logits, _) = prefill(&mut g, dir, want.nrows() as i64);
        let err = rel_err(&logits, &want);
        eprintln!("{name}: fp16 logits max|Δ|/max|ref| = {err:.3e}");
        assert!(err <= 1e-2, "{name}: fp16 relative error {err}");
    }
}

/// The standard-ops decoder (the default is GroupQueryAttention): same logits and tokens.
#[test]
fn standard_attention_decoder_matches_transformers() {
    let opts = st_export::ExportOptions { attention: st_export::Attention::Standard, ..Default::default() };
    check_model_with("tiny", "tiny", &opts);
    check_model_with("tiny-b", "tiny-b", &opts);
}
