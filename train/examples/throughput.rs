//! Forward + backward throughput of LoRA training on this machine (docs/TRAINING.md):
//!
//!   cargo run --release -p st-train --example throughput -- MODEL_DIR [--seq N] [--batch B]
//!       [--labels N] [--rank R] [--steps N] [--checkpointing] [--device cpu|cuda]
//!
//! Random token ids (no image), labels on the last `--labels` positions of each sequence (a
//! completion), LoRA on the seven text linears; prints ms per step and tokens/s (all positions).

use st_train::{Batch, LoadOptions, LoraOptions, TextModel};
use std::time::Instant;
use tch::{Kind, Tensor};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).ok_or_else(|| anyhow::anyhow!("usage: throughput MODEL_DIR [options]"))?;
    let (seq, batch, labels, rank, steps): (i64, i64, i64, usize, usize) = (
        arg(&args, "--seq", 256),
        arg(&args, "--batch", 1),
        arg(&args, "--labels", 64),
        arg(&args, "--rank", 16),
        arg(&args, "--steps", 3),
    );
    let ckpt_layers = args.iter().any(|a| a == "--checkpointing");
    let device = st_train::parse_device(&arg(&args, "--device", "cpu".to_string()))?;
    let t = Instant::now();
    let ckpt = st_checkpoint::Checkpoint::open(dir)?;
    let mut model = TextModel::load(&ckpt, &LoadOptions { device, kind: None })?;
    model.add_lora(&LoraOptions { rank, alpha: 2.0 * rank as f64, dropout: 0.0, ..Default::default() }, 0)?;
    println!(
        "loaded {} layers in {:.1} s (threads {})",
        model.num_layers(),
        t.elapsed().as_secs_f64(),
        tch::get_num_threads()
    );
    let vocab = ckpt.config.text.vocab_size as i64;
    // Token ids below the special tokens, never the image token.
    let ids = Tensor::randint(vocab.min(150_000), [batch, seq], (Kind::Int64, tch::Device::Cpu))
        .clamp(0, i64::from(ckpt.config.image_token_id) - 1);
    let pos = Tensor::arange(seq, (Kind::Int64, tch::Device::Cpu))
        .view([1, 1, seq])
        .expand([3, batch, seq], false)
        .contiguous();
    let lab = Tensor::full([batch, seq], -100, (Kind::Int64, tch::Device::Cpu));
    lab.narrow(1, seq - labels, labels).copy_(&ids.narrow(1, seq - labels, labels));
    let b = Batch { input_ids: ids, positions: pos, image_embeds: None };
    let params: Vec<Tensor> = model.lora_parameters().iter().map(|(_, p)| p.shallow_clone()).collect();
    let params: Vec<&Tensor> = params.iter().collect();
    let mut times = Vec::new();
    for step in 0..=steps {
        st_train::optim::zero_grad(&params);
        let t = Instant::now();
        model.forward_backward(&b, &lab, 1.0 / (batch * labels) as f64, ckpt_layers)?;
        if device != tch::Device::Cpu {
            tch::Cuda::synchronize(0);
        }
        if step > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    println!(
        "seq {seq} x batch {batch}, labels {labels}, rank {rank}, checkpointing {ckpt_layers}: forward+backward {:.1} ms/step (median of {steps}), {:.0} tokens/s",
        med * 1e3,
        (seq * batch) as f64 / med
    );
    Ok(())
}
