//! Time one decode step (1 new token over a cache of PAST tokens) of an exported decoder:
//! the per-token cost of the weights-bound part of generation. Until `st bench` exists (runtime
//! issue) this is how export choices (int4 block size, accuracy level) are compared.
//!
//! cargo run --release --example decoder_step -- MODEL_DIR [PAST=256] [RUNS=5] [THREADS=2]

use ndarray::{Array1, Array3, Array4};
use ort::session::Session;
use ort::value::Tensor;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(
        args.get(1).ok_or_else(|| anyhow::anyhow!("usage: decoder_step MODEL_DIR [PAST] [RUNS] [THREADS]"))?,
    );
    let past: usize = args.get(2).map_or(Ok(256), |s| s.parse())?;
    let runs: usize = args.get(3).map_or(Ok(5), |s| s.parse())?;
    let threads: usize = args.get(4).map_or(Ok(2), |s| s.parse())?;
    let manifest = st::st_checkpoint::Manifest::from_dir(&dir)?;
    let t = &manifest.config.text;
    let env = &st::engine::init_ort(None)?.environment;
    let load = Instant::now();
    let mut decoder = Session::builder(env)?
        .with_intra_threads(threads)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .commit_from_file(dir.join("decoder.onnx"))?;
    eprintln!("loaded decoder in {:.1} s", load.elapsed().as_secs_f64());
    let mut times = Vec::new();
    for _ in 0..runs + 1 {
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = vec![
            ("inputs_embeds".into(), Tensor::from_array(Array3::<f32>::from_elem((1, 1, t.hidden_size), 0.01))?.into()),
            ("rope_cos".into(), Tensor::from_array(Array3::<f32>::ones((1, 1, t.head_dim)))?.into()),
            ("rope_sin".into(), Tensor::from_array(Array3::<f32>::zeros((1, 1, t.head_dim)))?.into()),
            ("logits_to_keep".into(), Tensor::from_array(Array1::from(vec![1i64]))?.into()),
        ];
        if manifest.graphs["decoder"].inputs.iter().any(|i| i.name == "seqlens_k") {
            inputs.push(("seqlens_k".into(), Tensor::from_array(Array1::from(vec![past as i32]))?.into()));
            inputs.push(("total_sequence_length".into(), Tensor::from_array(ndarray::arr0(past as i32 + 1))?.into()));
        } else {
            inputs
                .push(("attention_bias".into(), Tensor::from_array(Array4::<f32>::zeros((1, 1, 1, past + 1)))?.into()));
        }
        for i in 0..t.num_hidden_layers {
            for kind in ["key", "value"] {
                let cache = Array4::<f32>::zeros((1, t.num_key_value_heads, past, t.head_dim));
                inputs.push((format!("past_{kind}.{i}"), Tensor::from_array(cache)?.into()));
            }
        }
        let start = Instant::now();
        let out = decoder.run(inputs)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        drop(out);
    }
    times.remove(0); // warm-up
    times.sort_by(f64::total_cmp);
    let lin = &manifest.graphs["decoder"].precision;
    println!(
        "{}: decode step over {past} cached tokens, {threads} threads: median {:.1} ms, min {:.1}, max {:.1} ({runs} runs; {lin:?})",
        dir.display(),
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    Ok(())
}
