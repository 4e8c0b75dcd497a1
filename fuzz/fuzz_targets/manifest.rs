//! An exported model's `manifest.json`: an error naming the file (a newer format named as such),
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use st_checkpoint::Manifest;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = Manifest::from_json_str(text, Path::new("manifest.json")) {
        let _ = st::preprocess::Preprocessor::from_vision_config(&m.config.vision);
        let _ = st_checkpoint::layout::expected_tensors(&m.config);
    }
});
