//! Shared by the training tests: fixture paths and the golden inputs as tensors.
#![allow(dead_code)]

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::ReadNpyExt;
use st_checkpoint::Checkpoint;
use st_train::{Batch, LoadOptions, TextModel};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn model_dir(name: &str) -> PathBuf {
    root().join("tests/fixtures/models").join(name)
}

pub fn golden_dir(name: &str) -> PathBuf {
    root().join("tests/fixtures/goldens").join(name)
}

pub fn npy_f32(path: &Path) -> ArrayD<f32> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ArrayD::<f32>::read_npy(f).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn npy_i64(path: &Path) -> ArrayD<i64> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ArrayD::<i64>::read_npy(f).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn tensor_f32(a: &ArrayD<f32>) -> Tensor {
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    Tensor::from_slice(a.as_standard_layout().as_slice().unwrap()).view(shape.as_slice())
}

pub fn tensor_i64(a: &ArrayD<i64>) -> Tensor {
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    Tensor::from_slice(a.as_standard_layout().as_slice().unwrap()).view(shape.as_slice())
}

pub fn to_array(t: &Tensor) -> ArrayD<f32> {
    let t = t.to_kind(tch::Kind::Float).contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let v = Vec::<f32>::try_from(&t.view([-1])).unwrap();
    ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap()
}

/// The golden prompt of `golden` (input ids, M-RoPE positions, transformers' image embeddings).
pub fn golden_batch(golden: &str) -> (Batch, i64) {
    let g = golden_dir(golden);
    let ids = npy_i64(&g.join("input_ids.npy"));
    let pos = npy_i64(&g.join("position_ids.npy"));
    let delta = npy_i64(&g.join("rope_deltas.npy")).iter().copied().next().unwrap();
    let img = npy_f32(&g.join("vision_embeds.npy"));
    (Batch { input_ids: tensor_i64(&ids), positions: tensor_i64(&pos), image_embeds: Some(tensor_f32(&img)) }, delta)
}

pub fn load(model: &str) -> (Checkpoint, TextModel) {
    let ckpt = Checkpoint::open(model_dir(model)).unwrap();
    let m = TextModel::load(&ckpt, &LoadOptions::cpu()).unwrap();
    (ckpt, m)
}

/// max |a − b| / max |b| (the relative error the parity tests bound).
pub fn rel_err(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let scale = b.iter().fold(0.0f64, |m, &x| m.max(x.abs() as f64));
    let diff = a.iter().zip(b).fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    diff / scale
}

/// Last `rows` rows of `[1, S, V]` logits as `[rows, V]`.
pub fn last_rows(logits: &Tensor, rows: i64) -> ArrayD<f32> {
    let s = logits.size()[1];
    to_array(&logits.squeeze_dim(0).narrow(0, s - rows, rows))
}
