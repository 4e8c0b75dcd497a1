//! A checkpoint's weights: `model.safetensors.index.json` and a safetensors shard (header and
//! data), mapped, every tensor read, checked against the tiny model's layout: an error naming the
//! file and tensor, never a read past the map or a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use st_checkpoint::{ModelConfig, Weights, layout};
use std::sync::LazyLock;

static CONFIG: LazyLock<ModelConfig> =
    LazyLock::new(|| ModelConfig::from_dir(&st_fuzz::fixture("models/tiny")).expect("the tiny fixture's config"));

fuzz_target!(|data: &[u8]| {
    // [flags, index.json, shard]: flag bit 0 writes the index (which must name the shard).
    let parts = st_fuzz::parts(data, 3);
    let dir = st_fuzz::scratch_dir("safetensors");
    let indexed = parts[0].first().is_some_and(|f| f & 1 == 1);
    let shard = if indexed { "model-00001-of-00001.safetensors" } else { "model.safetensors" };
    std::fs::write(dir.join(shard), parts[2]).expect("scratch write");
    if indexed {
        std::fs::write(dir.join("model.safetensors.index.json"), parts[1]).expect("scratch write");
    }
    let Ok(weights) = Weights::open(&dir) else { return };
    let names: Vec<String> = weights.names().map(str::to_string).collect();
    for name in &names {
        let t = weights.get(name).expect("a listed tensor can be had");
        let _ = t.to_f32();
        let _ = t.expect_shape(&[1, 2]);
    }
    let _ = layout::check(&CONFIG, &weights);
    for _ in weights.shard_headers() {}
});
