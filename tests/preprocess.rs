//! Preprocessing against the reference (qwen-vl-utils + HF PIL image processor) on real photos
//! and synthetic images of awkward sizes and modes, and bad input.
//!
//! Tolerances: the resize is Pillow's bicubic reproduced by fast_image_resize, which rounds
//! its 16-bit fixed-point coefficients differently from Pillow's 22-bit ones; the bound
//! is ≤ 1 uint8 level on ≥ 99.9 % of values. pixel_values are compared at one level
//! (1/255/std ≈ 0.0151) plus f32 rounding, with the same fraction.

mod common;

use common::{fixtures, golden, image, read_json, read_npy};
use ndarray::{Array1, Array2};
use st::preprocess::{DecodeLimits, PatchGeometry, PixelBounds, PreprocessOptions, Preprocessor, smart_resize};

fn preprocessor(min: Option<u64>, max: Option<u64>) -> Preprocessor {
    let g = PatchGeometry { patch_size: 14, temporal_patch_size: 2, merge_size: 2 };
    let mut o = PreprocessOptions::for_geometry(&g);
    let d = PixelBounds { min_pixels: 3136, max_pixels: 12_845_056 };
    o.pixels = PixelBounds { min_pixels: min.unwrap_or(d.min_pixels), max_pixels: max.unwrap_or(d.max_pixels) };
    Preprocessor::new(g, o)
}

/// Fraction of values off by more than `tol`, and the largest difference.
fn mismatch(a: impl Iterator<Item = f64>, b: impl Iterator<Item = f64>, tol: f64) -> (f64, f64, usize) {
    let (mut bad, mut n, mut worst) = (0usize, 0usize, 0f64);
    for (x, y) in a.zip(b) {
        let d = (x - y).abs();
        worst = worst.max(d);
        bad += (d > tol) as usize;
        n += 1;
    }
    (bad as f64 / n.max(1) as f64, worst, n)
}

#[test]
fn matches_reference_on_every_golden_image() {
    let dir = fixtures().join("preprocess");
    let cases = read_json(&dir.join("cases.json"));
    let one_level = 1.0 / 255.0 / 0.261_302_58 + 1e-5;
    let mut report = Vec::new();
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let pre = preprocessor(case["min_pixels"].as_u64(), case["max_pixels"].as_u64());
        let out = pre.load(&image(case["file"].as_str().unwrap())).unwrap_or_else(|e| panic!("{name}: {e}"));
        let grid: Vec<usize> =
            case["grid_thw"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(out.grid_thw.to_vec(), grid, "{name}: grid");
        let orig: Vec<u32> =
            case["original_size"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!([out.original_size.0, out.original_size.1], [orig[0], orig[1]], "{name}: original size");

        // The resized RGB image against PIL's.
        let golden_rgb = image::open(dir.join(format!("{name}.resized.png"))).unwrap().to_rgb8();
        assert_eq!(golden_rgb.dimensions(), out.resized_size, "{name}: resized size");
        let ours = st::preprocess::decode_file(&image(case["file"].as_str().unwrap()), &DecodeLimits::default(), false)
            .unwrap();
        let ours = st::preprocess::resize_bicubic(&ours, out.resized_size.0, out.resized_size.1).unwrap();
        let (frac, worst, n) =
            mismatch(ours.as_raw().iter().map(|&v| v as f64), golden_rgb.as_raw().iter().map(|&v| v as f64), 1.0);
        report.push(format!("{name}: {n} values, {:.4}% > 1 level, max {worst}", frac * 100.0));
        assert!(frac <= 0.001, "{name}: {:.4}% of resized values differ by more than one level", frac * 100.0);

        // pixel_values: whole when stored, otherwise row and column sums.
        if case["pixel_values_stored"].as_bool().unwrap() {
            let g: Array2<f32> = read_npy(&dir.join(format!("{name}.pixel_values.npy")));
            assert_eq!(g.dim(), out.pixel_values.dim(), "{name}");
            let (frac, _, _) =
                mismatch(g.iter().map(|&v| v as f64), out.pixel_values.iter().map(|&v| v as f64), one_level);
            assert!(frac <= 0.001, "{name}: pixel_values differ beyond one level on {:.4}%", frac * 100.0);
        }
        // Normalisation and patch layout at full size: patchify PIL's resized image and compare
        // with the row and column sums of the reference's pixel_values (f32 rounding only).
        let (pv, _) = st::preprocess::patchify(&golden_rgb, &pre.geometry, &pre.options.norm).unwrap();
        let pv = pv.mapv(|v| v as f64);
        let rows: Array1<f64> = read_npy(&dir.join(format!("{name}.rowsum.npy")));
        let cols: Array1<f64> = read_npy(&dir.join(format!("{name}.colsum.npy")));
        let (nr, nc) = pv.dim();
        let (fr, wr, _) =
            mismatch(rows.iter().copied(), pv.sum_axis(ndarray::Axis(1)).iter().copied(), 1e-5 * nc as f64);
        let (fc, wc, _) =
            mismatch(cols.iter().copied(), pv.sum_axis(ndarray::Axis(0)).iter().copied(), 1e-5 * nr as f64);
        assert!(fr == 0.0 && fc == 0.0, "{name}: pixel_values sums differ (rows by {wr}, columns by {wc})");
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn smart_resize_matches_reference_table() {
    let rows = read_json(&golden("smart_resize.json"));
    for r in rows.as_array().unwrap() {
        let v: Vec<Option<u64>> = r.as_array().unwrap().iter().map(|x| x.as_u64()).collect();
        let (h, w, mn, mx) = (v[0].unwrap() as u32, v[1].unwrap() as u32, v[2].unwrap(), v[3].unwrap());
        let got = smart_resize(h, w, 28, &PixelBounds { min_pixels: mn, max_pixels: mx }, "table");
        match (v[4], v[5]) {
            // A zero side from the reference is an image PIL cannot resize to: refused here.
            (Some(eh), Some(ew)) if eh > 0 && ew > 0 => {
                assert_eq!(got.unwrap(), (eh as u32, ew as u32), "{h}x{w} [{mn}, {mx}]")
            }
            _ => assert!(got.is_err(), "{h}x{w} [{mn}, {mx}] should be refused"),
        }
    }
}

fn err(r: st::Result<st::preprocess::PreprocessedImage>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_images_give_clear_errors() {
    let pre = preprocessor(None, None);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);

    std::fs::write(p("empty.png"), b"").unwrap();
    let e = err(pre.load(&p("empty.png")));
    assert!(e.contains("empty.png"), "{e}");

    std::fs::write(p("text.jpg"), b"this is not an image at all").unwrap();
    let e = err(pre.load(&p("text.jpg")));
    assert!(e.contains("text.jpg") && e.contains("decode"), "{e}");

    let png = std::fs::read(image("chelsea.png")).unwrap();
    std::fs::write(p("truncated.png"), &png[..png.len() / 3]).unwrap();
    let e = err(pre.load(&p("truncated.png")));
    assert!(e.contains("truncated.png"), "{e}");

    let e = err(pre.load(&p("missing.png")));
    assert!(e.contains("missing.png"), "{e}");

    // A header that claims 100000 × 100000 pixels fails on the limit before allocating.
    std::fs::write(p("huge.png"), huge_png_header(100_000, 100_000)).unwrap();
    let e = err(pre.load(&p("huge.png")));
    assert!(e.contains("huge.png") && e.contains("limit"), "{e}");

    // Aspect ratio above 200.
    image::RgbImage::new(201, 1).save(p("thin.png")).unwrap();
    let e = err(pre.load(&p("thin.png")));
    assert!(e.contains("thin.png") && e.contains("aspect ratio"), "{e}");

    // Too small for a configured minimum side.
    let mut strict = preprocessor(None, None);
    strict.options.limits.min_side = 8;
    image::RgbImage::new(7, 7).save(p("small.png")).unwrap();
    let e = err(strict.load(&p("small.png")));
    assert!(e.contains("small.png") && e.contains("min side 8"), "{e}");

    // A max_pixels too small for the aspect ratio.
    let tiny_budget = preprocessor(Some(100), Some(800));
    let e = err(tiny_budget.load(&image("thin_29x1000.png")));
    assert!(e.contains("max_pixels"), "{e}");
}

/// A PNG signature and IHDR (valid CRC) claiming `w`×`h`, with no image data.
fn huge_png_header(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let crc = crc32(&ihdr);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&ihdr);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

#[test]
fn exif_orientation_is_opt_in() {
    let mut pre = preprocessor(None, None);
    let plain = pre.load(&image("exif_rot_jpeg.jpg")).unwrap();
    assert_eq!(plain.original_size, (300, 200), "the reference ignores EXIF orientation");
    pre.options.apply_exif_orientation = true;
    let rotated = pre.load(&image("exif_rot_jpeg.jpg")).unwrap();
    assert_eq!(rotated.original_size, (200, 300));
}

#[test]
fn bytes_and_files_agree() {
    let pre = preprocessor(None, Some(64 * 28 * 28));
    let bytes = std::fs::read(image("chelsea.png")).unwrap();
    let a = pre.load(&image("chelsea.png")).unwrap();
    let b = pre.load_bytes(&bytes, "camera frame").unwrap();
    assert_eq!(a.pixel_values, b.pixel_values);
}
