//! A robotics-style loop: a camera thread produces frames; the perception thread encodes each
//! frame once (vision tower + prompt prefix) and asks it several questions, each paying only for
//! its own tokens. The channel holds one frame: when perception is busy, stale frames are dropped
//! rather than queued, so answers are always about a recent image.
//!
//!   cargo run --release --example robotics_loop [MODEL_DIR] [FRAMES]
//!
//! MODEL_DIR defaults to the bundled tiny model (random weights: boxes and answers are noise).

use st::engine::{Engine, GenerateOptions, SessionOptions};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const QUESTIONS: [&str; 3] = [
    "Is the cup to the left of the plate? (A) yes (B) no",
    "Which object is closer to the camera? (A) the cup (B) the plate",
    "How many cups are on the table? (A) one (B) two (C) three",
];

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut args = std::env::args().skip(1);
    let model = args.next().map(PathBuf::from).unwrap_or_else(|| root.join("tests/fixtures/models/tiny"));
    let frames: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(6);

    // The "camera": cycles through bundled photos at ~10 frames/s.
    let (tx, rx) = mpsc::sync_channel::<(usize, image::RgbImage)>(1);
    let photos =
        ["chelsea.png", "astronaut.png", "coffee_edge.png"].map(|p| root.join("tests/fixtures/images").join(p));
    let camera = std::thread::spawn(move || -> anyhow::Result<usize> {
        let mut dropped = 0;
        for i in 0..frames {
            let rgb = image::open(&photos[i % photos.len()])?.to_rgb8();
            if let Err(mpsc::TrySendError::Full(_)) = tx.try_send((i, rgb)) {
                dropped += 1; // perception is busy: skip this frame
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(dropped)
    });

    let mut engine = Engine::open(&model, &SessionOptions::default())?;
    engine.preprocessor.options.pixels.max_pixels = 256 * 28 * 28; // an edge budget: ≤ 256 image tokens
    let opts = GenerateOptions { max_new_tokens: Some(256), ..Default::default() };
    for (i, rgb) in rx {
        let t = Instant::now();
        let frame = engine.encode_rgb(&rgb, &format!("camera frame {i}"))?;
        println!(
            "frame {i}: encoded in {:.0} ms ({} prefix tokens)",
            t.elapsed().as_secs_f64() * 1e3,
            frame.timings.prefix_tokens
        );
        for q in QUESTIONS {
            let a = engine.ask(&frame, q, &opts)?;
            let objects: Vec<String> =
                a.response.scene.iter().flat_map(|s| &s.objects).map(|o| format!("{} {:?}", o.id, o.bbox)).collect();
            println!(
                "  {q:?} → {:?} valid={} objects={objects:?} ttft {:.0} ms, {} tokens",
                a.response.answer.as_ref().map(|c| &c.text),
                a.response.valid,
                a.timings.prefill_ms,
                a.token_ids.len()
            );
        }
    }
    let dropped = camera.join().map_err(|_| anyhow::anyhow!("camera thread panicked"))??;
    println!("{dropped} stale frames dropped while perception was busy");
    Ok(())
}
