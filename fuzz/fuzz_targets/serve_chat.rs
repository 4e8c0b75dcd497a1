//! `st serve`'s chat completions body: JSON → the OpenAI request → the prompt, the image and the
//! generation options (images as data URLs, under the byte limit): an OpenAI-shaped error naming
//! the field, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use st_serve::images::ImageSources;
use st_serve::openai::{ChatRequest, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<ChatRequest>(data) else { return };
    let sources = ImageSources { max_bytes: 64 << 10, local_dir: None };
    let _ = parse(req, &sources);
});
