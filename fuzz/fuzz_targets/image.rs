//! Encoded image bytes → decode (the default limits) → smart resize → patches, as every frame
//! is made (`st-run`, the C ABI, `st serve`): an error, never a panic, an allocation above the
//! limits or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use st::preprocess::Preprocessor;
use st_checkpoint::ModelConfig;
use std::sync::LazyLock;

static PRE: LazyLock<Preprocessor> = LazyLock::new(|| {
    let config = ModelConfig::from_dir(&st_fuzz::fixture("models/tiny")).expect("the tiny fixture's config");
    Preprocessor::from_vision_config(&config.vision)
});

fuzz_target!(|data: &[u8]| {
    let _ = st_fuzz::checks::image(&PRE, data);
});
