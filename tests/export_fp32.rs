//! `st export --precision fp32` run through ONNX Runtime from Rust against the transformers
//! goldens: logits of a full forward, and a greedy loop over the exported graphs.
//!
//! The vision graph is also checked alone against the golden vision tower output. Bound: max|Δ| / max|ref| ≤ 1e-4 (f32 with a different summation order than
//! PyTorch; measured values are printed).

mod common;

use common::{golden, model, read_json, read_npy};
use ndarray::{Array2, Array3, Axis, s};
use ort::session::Session;
use ort::value::Tensor;

struct Graphs {
    vision: Session,
    embed: Session,
    decoder: Session,
    manifest: st::st_checkpoint::Manifest,
}

fn export(name: &str, out: &std::path::Path) -> Graphs {
    let env = &st::engine::init_ort(None).unwrap().environment;
    let dir = out.join(name);
    let manifest = st_export::export(&model(name), &dir, &st_export::ExportOptions::default()).unwrap();
    assert_eq!(manifest, st::st_checkpoint::Manifest::from_dir(&dir).unwrap());
    let open = |f: &str| Session::builder(env).unwrap().commit_from_file(dir.join(f)).unwrap();
    Graphs { vision: open("vision.onnx"), embed: open("embed.onnx"), decoder: open("decoder.onnx"), manifest }
}

/// One decoder call: returns (logits [keep, vocab], present caches).
fn step(
    g: &mut Graphs,
    embeds: Array3<f32>,
    positions: Array2<i64>,
    past_len: usize,
    cache: &mut Vec<(Array3<f32>, Array3<f32>)>,
    keep: i64,
) -> Array2<f32> {
    let c = &g.manifest.config.text;
    let seq = embeds.dim().1;
    let (cos, sin) = st::rope::mrope_cos_sin(positions.view(), c.head_dim, c.rope_theta, &c.mrope_section).unwrap();
    let total = past_len + seq;
    // Causal by token index: new token i sees cached tokens and new tokens ≤ i.
    let mut bias = ndarray::Array4::<f32>::zeros((1, 1, seq, total));
    for i in 0..seq {
        for j in past_len + i + 1..total {
            bias[[0, 0, i, j]] = f32::MIN;
        }
    }
    let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = vec![
        ("inputs_embeds".into(), Tensor::from_array(embeds).unwrap().into()),
        ("rope_cos".into(), Tensor::from_array(cos.insert_axis(Axis(0))).unwrap().into()),
        ("rope_sin".into(), Tensor::from_array(sin.insert_axis(Axis(0))).unwrap().into()),
        ("attention_bias".into(), Tensor::from_array(bias).unwrap().into()),
        ("logits_to_keep".into(), Tensor::from_array(ndarray::arr1(&[keep])).unwrap().into()),
    ];
    for (i, (k, v)) in cache.iter().enumerate() {
        inputs.push((format!("past_key.{i}"), Tensor::from_array(k.clone().insert_axis(Axis(0))).unwrap().into()));
        inputs.push((format!("past_value.{i}"), Tensor::from_array(v.clone().insert_axis(Axis(0))).unwrap().into()));
    }
    let out = g.decoder.run(inputs).unwrap();
    for (i, slot) in cache.iter_mut().enumerate() {
        let k = out[format!("present_key.{i}")].try_extract_array::<f32>().unwrap();
        let v = out[format!("present_value.{i}")].try_extract_array::<f32>().unwrap();
        *slot = (
            k.index_axis(Axis(0), 0).to_owned().into_dimensionality().unwrap(),
            v.index_axis(Axis(0), 0).to_owned().into_dimensionality().unwrap(),
        );
    }
    let logits = out["logits"].try_extract_array::<f32>().unwrap();
    logits.index_axis(Axis(0), 0).to_owned().into_dimensionality().unwrap()
}

fn embed(g: &mut Graphs, ids: &[i64]) -> Array3<f32> {
    let ids = Array2::from_shape_vec((1, ids.len()), ids.to_vec()).unwrap();
    let out = g.embed.run(ort::inputs!["input_ids" => Tensor::from_array(ids).unwrap()]).unwrap();
    out["inputs_embeds"].try_extract_array::<f32>().unwrap().to_owned().into_dimensionality().unwrap()
}

fn argmax(row: ndarray::ArrayView1<'_, f32>) -> i64 {
    row.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as i64
}

fn check_model(name: &str, golden_dir: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = export(name, tmp.path());
    let c = g.manifest.config.clone();
    let ids: Array2<i64> = read_npy(&golden(&format!("{golden_dir}/input_ids.npy")));
    let ids: Vec<i64> = ids.iter().copied().collect();
    let pos: Array3<i64> = read_npy(&golden(&format!("{golden_dir}/position_ids.npy")));
    let pos = pos.index_axis(Axis(1), 0).to_owned();
    let delta: Array2<i64> = read_npy(&golden(&format!("{golden_dir}/rope_deltas.npy")));
    // The image rows come from the exported vision graph: the whole pipeline is under test.
    let vision = run_vision(&mut g, golden_dir);
    let want_logits: Array2<f32> = read_npy(&golden(&format!("{golden_dir}/logits.npy")));
    let want_tokens: ndarray::Array1<i64> = read_npy(&golden(&format!("{golden_dir}/greedy_tokens.npy")));
    let meta = read_json(&golden(&format!("{golden_dir}/meta.json")));

    // Prefill: text embeddings with the image rows replaced by the vision tower output.
    let mut embeds = embed(&mut g, &ids);
    let mut next_image_row = 0;
    for (i, &id) in ids.iter().enumerate() {
        if id == c.image_token_id as i64 {
            embeds.slice_mut(s![0, i, ..]).assign(&vision.row(next_image_row));
            next_image_row += 1;
        }
    }
    assert_eq!(next_image_row, vision.nrows());
    let (kv, hd) = (c.text.num_key_value_heads, c.text.head_dim);
    let mut cache =
        vec![(Array3::<f32>::zeros((kv, 0, hd)), Array3::<f32>::zeros((kv, 0, hd))); c.text.num_hidden_layers];
    let keep = want_logits.nrows() as i64;
    let logits = step(&mut g, embeds, pos, 0, &mut cache, keep);
    let max_ref = want_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_err = logits.iter().zip(want_logits.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!(
        "{name}: logits max|Δ|/max|ref| = {:.3e} (margin of the first greedy token {})",
        max_err / max_ref,
        meta["last_logit_margin"]
    );
    assert!(max_err / max_ref <= 1e-4, "{name}: relative logit error {}", max_err / max_ref);

    // Greedy decode, one token per step, positions continuing at index + rope delta.
    let mut tokens = vec![argmax(logits.row(logits.nrows() - 1))];
    let eos = g.manifest.generation.eos_token_ids.clone();
    while tokens.len() < want_tokens.len() && !eos.contains(&(*tokens.last().unwrap() as u32)) {
        let index = ids.len() + tokens.len() - 1;
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

/// Run the exported vision graph on the golden pixel_values.
fn run_vision(g: &mut Graphs, golden_dir: &str) -> Array2<f32> {
    let pv: Array2<f32> = read_npy(&golden("chelsea_224x140.pixel_values.npy"));
    let grid: Array2<i64> = read_npy(&golden(&format!("{golden_dir}/image_grid_thw.npy")));
    let grid = [grid[[0, 0]] as usize, grid[[0, 1]] as usize, grid[[0, 2]] as usize];
    let vi = st::vision::vision_inputs(grid, &g.manifest.config.vision).unwrap();
    let out = g
        .vision
        .run(ort::inputs![
            "pixel_values" => Tensor::from_array(pv).unwrap(),
            "patch_index" => Tensor::from_array(ndarray::Array1::from(vi.patch_index)).unwrap(),
            "rope_cos" => Tensor::from_array(vi.rope_cos).unwrap(),
            "rope_sin" => Tensor::from_array(vi.rope_sin).unwrap(),
            "window_bias" => Tensor::from_array(vi.window_bias).unwrap(),
            "full_bias" => Tensor::from_array(vi.full_bias).unwrap(),
            "merge_index" => Tensor::from_array(ndarray::Array1::from(vi.merge_index)).unwrap(),
        ])
        .unwrap();
    out["image_embeds"].try_extract_array::<f32>().unwrap().to_owned().into_dimensionality().unwrap()
}

fn check_vision(name: &str, golden_dir: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = export(name, tmp.path());
    let got = run_vision(&mut g, golden_dir);
    let want: Array2<f32> = read_npy(&golden(&format!("{golden_dir}/vision_embeds.npy")));
    assert_eq!(got.shape(), want.shape());
    let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_err = got.iter().zip(want.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("{name}: vision max|Δ|/max|ref| = {:.3e}", max_err / max_ref);
    assert!(max_err / max_ref <= 1e-4, "{name}: vision relative error {}", max_err / max_ref);
}

#[test]
fn vision_fp32_matches_transformers() {
    check_vision("tiny", "tiny");
    check_vision("tiny-b", "tiny-b");
}
