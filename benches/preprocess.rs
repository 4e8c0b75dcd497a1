//! Preprocessing a 1920×1080 photo (the astronaut photo scaled up) at the default pixel budget
//! and at an edge budget of 256 merged tokens (≈ 448×448), from JPEG bytes (a camera frame)
//! and from decoded RGB.

use criterion::{Criterion, criterion_group, criterion_main};
use st::preprocess::{PatchGeometry, PixelBounds, PreprocessOptions, Preprocessor};
use std::hint::black_box;
use std::path::Path;

fn photo_1080p() -> (image::RgbImage, Vec<u8>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/astronaut.png");
    let img = image::open(&src).expect("bundled photo").to_rgb8();
    let big = image::imageops::resize(&img, 1920, 1080, image::imageops::FilterType::CatmullRom);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&big).expect("encode");
    (big, jpeg)
}

fn bench(c: &mut Criterion) {
    let (rgb, jpeg) = photo_1080p();
    let g = PatchGeometry { patch_size: 14, temporal_patch_size: 2, merge_size: 2 };
    for (label, max_pixels) in [("default", 12_845_056u64), ("edge-256-tokens", 256 * 28 * 28)] {
        let mut options = PreprocessOptions::for_geometry(&g);
        options.pixels = PixelBounds { min_pixels: 3136, max_pixels };
        let pre = Preprocessor::new(g, options);
        c.bench_function(&format!("preprocess_1920x1080_jpeg/{label}"), |b| {
            b.iter(|| pre.load_bytes(black_box(&jpeg), "bench").expect("preprocess"))
        });
        c.bench_function(&format!("preprocess_1920x1080_rgb/{label}"), |b| {
            b.iter(|| pre.process_rgb(black_box(&rgb), "bench").expect("preprocess"))
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
