//! The operator domain a GPU session registers (`st::engine::ops::domain_for`): st's CPU kernels plus the
//! CUDA provider's `ai.st.MatMulInt4`, `ai.st.MatMulFp8` and `ai.st.GroupQueryAttention` (its lengths
//! declared in host memory, its caches in place). No GPU here: ORT must accept the declarations, and a
//! session on its CPU provider with that domain runs a `--target cuda` export on the CPU kernels with the
//! logits of a session that registered only those.

mod common;

use common::model;
use ort::session::Session;
use st::engine::Device;

fn logits(dir: &std::path::Path, device: &Device) -> Vec<f32> {
    let env = &st::engine::init_ort(None).unwrap().environment;
    let domain = st::engine::ops::domain_for(device).unwrap();
    let mut s = {
        let _guard = st::engine::ops::commit_lock();
        Session::builder(env)
            .unwrap()
            .with_operators(domain)
            .unwrap()
            .commit_from_file(dir.join("decoder.onnx"))
            .unwrap()
    };
    let manifest = st::st_checkpoint::Manifest::from_dir(dir).unwrap();
    let t = &manifest.config.text;
    let (seq, cap) = (5usize, 8usize);
    let embeds = ndarray::Array3::from_shape_fn((1, seq, t.hidden_size), |(_, i, j)| {
        ((i * 31 + j * 7) % 13) as f32 / 13.0 - 0.5
    });
    let positions = ndarray::Array2::from_shape_fn((3, seq), |(_, i)| i as i64);
    let (cos, sin) = st::rope::mrope_cos_sin(positions.view(), t.head_dim, t.rope_theta, &t.mrope_section).unwrap();
    let value = |a: ndarray::ArrayD<f32>| ort::value::Tensor::from_array(a).unwrap().into_dyn();
    let mut inputs: Vec<(String, ort::value::DynValue)> = vec![
        ("inputs_embeds".into(), value(embeds.into_dyn())),
        ("rope_cos".into(), value(cos.insert_axis(ndarray::Axis(0)).into_dyn())),
        ("rope_sin".into(), value(sin.insert_axis(ndarray::Axis(0)).into_dyn())),
        ("logits_to_keep".into(), ort::value::Tensor::from_array(ndarray::arr1(&[1i64])).unwrap().into_dyn()),
        ("seqlens_k".into(), ort::value::Tensor::from_array(ndarray::arr1(&[seq as i32 - 1])).unwrap().into_dyn()),
        ("total_sequence_length".into(), ort::value::Tensor::from_array(ndarray::arr0(seq as i32)).unwrap().into_dyn()),
    ];
    for i in 0..t.num_hidden_layers {
        for kind in ["key", "value"] {
            let past = ndarray::Array4::<f32>::zeros((1, t.num_key_value_heads, cap, t.head_dim));
            inputs.push((format!("past_{kind}.{i}"), value(past.into_dyn())));
        }
    }
    let out = s.run(inputs).unwrap();
    out["logits"].try_extract_array::<f32>().unwrap().iter().copied().collect()
}

#[test]
fn the_cuda_domain_registers_and_leaves_cpu_sessions_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    let mut opts = st_export::ExportOptions::new(st_export::Precision::Int4);
    opts.target = st_export::Target::Cuda;
    st_export::export(&model("tiny"), &dir, &opts).unwrap();
    let cpu = logits(&dir, &Device::Cpu);
    let with_cuda_ops = logits(&dir, &Device::Cuda { device_id: 0 });
    assert!(cpu.iter().all(|v| v.is_finite()) && !cpu.is_empty());
    assert!(cpu == with_cuda_ops, "registering the CUDA kernels changed a CPU session's results");
}
