//! Write a random-weight bf16 checkpoint with the shapes of a given `config.json` (e.g. the
//! real SpatialThinker-7B's), tensor by tensor in bounded memory, as safetensors shards with an
//! index — the 7B-shaped model performance work is measured on (models/make-7b-checkpoint).
//!
//! cargo run --release --example random_checkpoint -- CONFIG.json OUT_DIR [SHARD_GB]

use rand::{Rng, SeedableRng};
use st::st_checkpoint::{ModelConfig, layout};
use std::io::Write;
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (config_path, out) = match (args.get(1), args.get(2)) {
        (Some(c), Some(o)) => (Path::new(c), Path::new(o)),
        _ => anyhow::bail!("usage: random_checkpoint CONFIG.json OUT_DIR [SHARD_GB]"),
    };
    let shard_bytes: u64 =
        args.get(3).map(|s| s.parse::<f64>()).transpose()?.map_or(4 << 30, |gb| (gb * (1u64 << 30) as f64) as u64);
    let config = ModelConfig::from_file(config_path)?;
    std::fs::create_dir_all(out)?;
    std::fs::copy(config_path, out.join("config.json"))?;

    // Group tensors into shards of about `shard_bytes`.
    let specs = layout::expected_tensors(&config);
    let mut shards: Vec<Vec<&layout::TensorSpec>> = vec![vec![]];
    let mut size = 0u64;
    for s in &specs {
        let bytes = s.shape.iter().product::<usize>() as u64 * 2;
        if size + bytes > shard_bytes && !shards.last().is_some_and(|v| v.is_empty()) {
            shards.push(vec![]);
            size = 0;
        }
        size += bytes;
        shards.last_mut().expect("one shard").push(s);
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut total = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        let mut header = serde_json::Map::new();
        let mut offset = 0u64;
        for s in shard {
            let bytes = s.shape.iter().product::<usize>() as u64 * 2;
            header.insert(
                s.name.clone(),
                serde_json::json!({"dtype": "BF16", "shape": s.shape, "data_offsets": [offset, offset + bytes]}),
            );
            weight_map.insert(s.name.clone(), name.clone().into());
            offset += bytes;
        }
        let mut h = serde_json::to_vec(&header)?;
        while h.len() % 8 != 0 {
            h.push(b' ');
        }
        let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(out.join(&name))?);
        f.write_all(&(h.len() as u64).to_le_bytes())?;
        f.write_all(&h)?;
        let mut buf = Vec::with_capacity(1 << 22);
        for s in shard {
            let numel: usize = s.shape.iter().product();
            // Norm weights near 1, everything else small: activations stay finite through 28 layers.
            let (center, spread) = if s.name.ends_with("norm.weight")
                || s.name.contains("norm1")
                || s.name.contains("norm2")
                || s.name.ends_with("ln_q.weight")
            {
                (1.0f32, 0.1f32)
            } else {
                (0.0, 0.02)
            };
            let mut left = numel;
            while left > 0 {
                let m = left.min(1 << 20);
                buf.clear();
                for _ in 0..m {
                    let v = center + spread * (rng.random::<f32>() * 2.0 - 1.0);
                    buf.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
                }
                f.write_all(&buf)?;
                left -= m;
            }
        }
        f.flush()?;
        total += offset;
        eprintln!("wrote {name} ({:.2} GB)", offset as f64 / 1e9);
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(out.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index)?)?;
    eprintln!("{} tensors, {:.2} GB in {n} shards at {}", specs.len(), total as f64 / 1e9, out.display());
    Ok(())
}
