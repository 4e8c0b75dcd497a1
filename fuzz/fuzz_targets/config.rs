//! A checkpoint's JSON files — `config.json`, `generation_config.json`, `preprocessor_config.json` —
//! and what the runtime derives from them (the tensor layout, the preprocessor's geometry): an
//! error naming the file and field, never a panic, an overflow or an allocation sized by a field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use st_checkpoint::{GenerationConfig, ImageProcessorConfig, ModelConfig, layout};

fuzz_target!(|data: &[u8]| {
    let parts = st_fuzz::parts(data, 3);
    let dir = st_fuzz::scratch_dir("config");
    for (name, bytes) in ["config.json", "generation_config.json", "preprocessor_config.json"].iter().zip(&parts) {
        std::fs::write(dir.join(name), bytes).expect("scratch write");
    }
    if let Ok(c) = ModelConfig::from_dir(&dir) {
        let _ = (c.vision.head_dim(), c.vision.patch_values(), c.vision.image_factor());
        let specs = layout::expected_tensors(&c);
        assert!(!specs.is_empty());
        let _ = st::preprocess::Preprocessor::from_vision_config(&c.vision);
    }
    let _ = GenerationConfig::from_dir(&dir);
    let _ = ImageProcessorConfig::from_dir(&dir);
});
