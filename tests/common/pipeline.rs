//! The exported graphs run through ONNX Runtime, as a plain loop (the engine proper comes with
//! the runtime issue): vision → embed + image rows → decoder prefill → greedy decode.

use super::{golden, model, read_npy};
use ndarray::{Array2, Array3, Axis, s};
use ort::session::Session;
use ort::value::Tensor;

pub struct Graphs {
    pub vision: Session,
    pub embed: Session,
    pub decoder: Session,
    pub manifest: st::st_checkpoint::Manifest,
}

pub fn export(name: &str, out: &std::path::Path, opts: &st_export::ExportOptions) -> Graphs {
    let env = &st::engine::init_ort(None).unwrap().environment;
    let dir = out.join(name);
    let manifest = st_export::export(&model(name), &dir, opts).unwrap();
    assert_eq!(manifest, st::st_checkpoint::Manifest::from_dir(&dir).unwrap());
    // st's custom ops (ai.st.MatMulInt4 / MatMulFp8 in `--target cuda` graphs) registered as the runtime does.
    let open = |f: &str| {
        let _guard = st::engine::ops::commit_lock();
        Session::builder(env)
            .unwrap()
            .with_operators(st::engine::ops::domain().unwrap())
            .unwrap()
            .commit_from_file(dir.join(f))
            .unwrap()
    };
    Graphs { vision: open("vision.onnx"), embed: open("embed.onnx"), decoder: open("decoder.onnx"), manifest }
}

/// One decoder call: returns (logits [keep, vocab], present caches).
pub fn step(
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
        ("logits_to_keep".into(), Tensor::from_array(ndarray::arr1(&[keep])).unwrap().into()),
    ];
    let gqa = g.manifest.graphs["decoder"].inputs.iter().any(|i| i.name == "seqlens_k");
    if gqa {
        // GroupQueryAttention: causal inside the op; it takes the last index and the total length.
        inputs.push(("seqlens_k".into(), Tensor::from_array(ndarray::arr1(&[total as i32 - 1])).unwrap().into()));
        inputs.push(("total_sequence_length".into(), Tensor::from_array(ndarray::arr0(total as i32)).unwrap().into()));
    } else {
        inputs.push(("attention_bias".into(), Tensor::from_array(bias).unwrap().into()));
    }
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

pub fn embed(g: &mut Graphs, ids: &[i64]) -> Array3<f32> {
    let ids = Array2::from_shape_vec((1, ids.len()), ids.to_vec()).unwrap();
    let out = g.embed.run(ort::inputs!["input_ids" => Tensor::from_array(ids).unwrap()]).unwrap();
    out["inputs_embeds"].try_extract_array::<f32>().unwrap().to_owned().into_dimensionality().unwrap()
}

pub fn argmax(row: ndarray::ArrayView1<'_, f32>) -> i64 {
    row.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as i64
}

/// Run the exported vision graph on the golden pixel_values.
pub fn run_vision(g: &mut Graphs, golden_dir: &str) -> Array2<f32> {
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

/// Prefill the golden prompt (image rows from the exported vision graph): the logits of the
/// last `keep` positions and the KV cache.
/// Per layer (keys, values), each [kv_heads, tokens, head_dim].
pub type KvCache = Vec<(Array3<f32>, Array3<f32>)>;

pub fn prefill(g: &mut Graphs, golden_dir: &str, keep: i64) -> (Array2<f32>, KvCache) {
    let c = g.manifest.config.clone();
    let ids: Array2<i64> = read_npy(&golden(&format!("{golden_dir}/input_ids.npy")));
    let ids: Vec<i64> = ids.iter().copied().collect();
    let pos: Array3<i64> = read_npy(&golden(&format!("{golden_dir}/position_ids.npy")));
    let pos = pos.index_axis(Axis(1), 0).to_owned();
    let vision = run_vision(g, golden_dir);
    let mut embeds = embed(g, &ids);
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
    let logits = step(g, embeds, pos, 0, &mut cache, keep);
    (logits, cache)
}

/// max|a − b| / max|b|.
pub fn rel_err(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    let max_ref = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b.iter()).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / max_ref
}
