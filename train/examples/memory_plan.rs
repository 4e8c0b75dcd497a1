//! The one-GPU memory plan of LoRA training for a checkpoint's config (docs/TRAINING.md):
//!
//!   cargo run -p st-train --example memory_plan -- CONFIG.json [--rank R] [--seq N] [--group G]
//!
//! Bytes of: the frozen bf16 weights (text + vision), LoRA weights with their gradients and AdamW
//! moments (f32), the rollout KV cache (G sequences of `--seq` tokens), and the activations autograd
//! keeps per micro-batch sequence with and without per-layer checkpointing (counted tensor by
//! tensor from the layer's code in `st_train::model`).

use st_checkpoint::ModelConfig;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn gb(b: f64) -> String {
    format!("{:.2} GB", b / 1e9)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or_else(|| anyhow::anyhow!("usage: memory_plan CONFIG.json [--rank R] [--seq N] [--group G]"))?;
    let c = ModelConfig::from_file(std::path::Path::new(path))?;
    let (rank, seq, group) = (arg(&args, "--rank", 64), arg(&args, "--seq", 2048), arg(&args, "--group", 8));
    let t = &c.text;
    let (h, ff, l) = (t.hidden_size as f64, t.intermediate_size as f64, t.num_hidden_layers as f64);
    let (q, kv) = ((t.num_attention_heads * t.head_dim) as f64, (t.num_key_value_heads * t.head_dim) as f64);
    let params: f64 =
        st_checkpoint::layout::expected_tensors(&c).iter().map(|s| s.shape.iter().product::<usize>() as f64).sum();
    let weights = params * 2.0;
    // LoRA on q, k, v, o, gate, up, down: r·(in + out) each.
    let r = rank as f64;
    let lora_per_layer = r * ((h + q) + (h + kv) * 2.0 + (q + h) + (h + ff) * 2.0 + (ff + h));
    let lora = lora_per_layer * l;
    let lora_state = lora * 4.0 * 4.0; // weights, gradients, two AdamW moments, f32
    let kv_per_token = l * kv * 2.0 * 2.0; // K and V, bf16
    let rollout_kv = kv_per_token * (seq * group) as f64;
    // Saved for backward per token of one layer (bf16 = 2 bytes, f32 = 4), from the layer's code:
    // two RMSNorm inputs (f32 upcasts: 4h each) and outputs (2h each); q, k, v after rotary (2(q + 2kv));
    // attention output (2q); the LoRA inputs in f32 and their A·x (4h·… : x for q/k/v/gate/up = 4h once,
    // 4q for o, 4ff for down; r-wide products 4r·7); gate/up outputs and silu (3·2ff); the residuals (2·2h).
    let per_token_layer = 2.0 * 4.0 * h
        + 2.0 * 2.0 * h
        + 2.0 * (q + 2.0 * kv)
        + 2.0 * q
        + 4.0 * h
        + 4.0 * q
        + 4.0 * ff
        + 4.0 * r * 7.0
        + 3.0 * 2.0 * ff
        + 2.0 * 2.0 * h;
    let act_full = per_token_layer * l * seq as f64;
    let act_ckpt = (2.0 * h * l + per_token_layer) * seq as f64;
    let logits = 4.0 * t.vocab_size as f64 * 2.0; // f32 logits + log-softmax per labelled token
    println!(
        "config {path}: {} text layers, hidden {}, {} parameters in all",
        t.num_hidden_layers, t.hidden_size, params as u64
    );
    println!("frozen weights (bf16, text + vision)         {}", gb(weights));
    println!("LoRA r={rank}: {:.1} M parameters; + grads + AdamW (f32)  {}", lora / 1e6, gb(lora_state));
    println!("rollout KV: {:.1} KB/token x {seq} tokens x {group} sequences  {}", kv_per_token / 1e3, gb(rollout_kv));
    println!(
        "activations per sequence of {seq} tokens: plain {}, checkpointed per layer {}",
        gb(act_full),
        gb(act_ckpt)
    );
    println!("logits per labelled token (f32 + log-softmax): {:.2} MB", logits / 1e6);
    let fixed = weights + lora_state;
    for (name, cap) in [("80 GB", 80e9), ("16 GB", 16e9)] {
        let free = cap - fixed - 1.5e9; // CUDA context and allocator slack
        println!(
            "{name}: {} left after weights + LoRA state; fits {:.1} checkpointed sequences or {:.1} plain ones of {seq} tokens besides the rollout KV ({})",
            gb(free),
            (free - rollout_kv).max(0.0) / act_ckpt,
            (free - rollout_kv).max(0.0) / act_full,
            gb(rollout_kv)
        );
    }
    Ok(())
}
