//! `st serve`'s `/v1/scene` body, JSON or multipart (an uploaded image and form fields), read as the
//! router reads it, then turned into the question and options: an error naming the field, never a
//! panic.
#![no_main]

use axum::body::Body;
use axum::extract::Request;
use libfuzzer_sys::fuzz_target;
use st_serve::images::ImageSources;
use st_serve::scene::read_request;
use std::sync::LazyLock;

static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().build().expect("a runtime"));

fuzz_target!(|data: &[u8]| {
    // The first byte picks the body's type; multipart bodies use the boundary `XB`.
    let (kind, body) = data.split_first().unwrap_or((&0, &[]));
    let content_type = if kind & 1 == 1 { "multipart/form-data; boundary=XB" } else { "application/json" };
    let req = Request::builder()
        .method("POST")
        .uri("/v1/scene")
        .header("content-type", content_type)
        .body(Body::from(body.to_vec()))
        .expect("a request");
    let sources = ImageSources { max_bytes: 64 << 10, local_dir: None };
    if let Ok((fields, upload)) = RUNTIME.block_on(read_request(req, &sources, 1 << 20)) {
        let _ = fields.parts(upload, &sources);
    }
});
