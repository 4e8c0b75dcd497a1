//! `st bench --soak N`: N sampled, grammar-constrained questions in one process over frames that
//! keep changing, as a robot's runtime lives — every answer checked by the standalone validator,
//! resident memory and open file descriptors compared between the end of the warm-up and the end.
//! Fails (exit 1) on an invalid answer, RSS growth of 2 % or more, or a changed descriptor count.

use crate::decode::SamplingParams;
use crate::engine::{Engine, GenerateOptions};
use crate::scene::{Rules, parse_response};
use std::path::{Path, PathBuf};

/// RSS growth after the warm-up that fails the soak, in percent.
pub const MAX_RSS_GROWTH_PCT: f64 = 2.0;

const QUESTIONS: [&str; 4] = [
    "Is the cat to the left of the table? (A) yes (B) no",
    "What is next to the cat?",
    "Which object is closest to the camera? (A) the cup (B) the plate (C) the wall (D) the floor",
    "Où est la tasse ? (A) à gauche (B) à droite (C) au milieu",
];

/// Current resident set size (Linux `VmRSS`), MiB.
pub fn rss_mib() -> Option<f64> {
    super::bench::status_mib("VmRSS:")
}

/// Open file descriptors of this process (Linux `/proc/self/fd`).
pub fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// The bundled images the frames rotate through (and `extra`, when given).
fn images(extra: Option<&Path>) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images");
    let mut v: Vec<PathBuf> = ["chelsea.png", "astronaut.png", "coffee_edge.png", "camera_gray.png", "tiny_10x7.png"]
        .iter()
        .map(|n| dir.join(n))
        .collect();
    v.extend(extra.map(Path::to_path_buf));
    v
}

/// Run the soak: `questions` answers, a new frame every `per_frame` questions, up to `tokens` each.
pub fn run(
    engine: &mut Engine,
    questions: usize,
    per_frame: usize,
    tokens: usize,
    extra_image: Option<&Path>,
) -> anyhow::Result<serde_json::Value> {
    let images = images(extra_image);
    // The warm-up covers a tenth of the run and at least one round of every image (each size makes
    // ONNX Runtime's arenas grow once), at most half the run.
    let warmup = (questions / 10).max(per_frame.max(1) * images.len()).min(questions / 2).max(1);
    let started = std::time::Instant::now();
    let (mut invalid, mut frames, mut max_rss) = (Vec::new(), 0usize, 0f64);
    let (mut rss_warm, mut fds_warm) = (None, None);
    let mut frame = None;
    for i in 0..questions {
        if i % per_frame.max(1) == 0 {
            frame = Some(engine.encode_image(&images[frames % images.len()])?);
            frames += 1;
        }
        let Some(f) = frame.as_ref() else { continue };
        let question = QUESTIONS[i % QUESTIONS.len()];
        let opts = GenerateOptions {
            max_new_tokens: Some(tokens),
            sampling: SamplingParams { temperature: Some(1.0), top_p: 0.95, seed: i as u64, ..Default::default() },
            ..Default::default()
        };
        let a = engine.ask(f, question, &opts)?;
        let checked = parse_response(&a.raw, &Rules::new(f.image.original_size, question));
        if !checked.valid || !a.response.valid {
            invalid.push(serde_json::json!({"question": i, "reasons": checked.reasons, "raw": a.raw}));
        }
        if i + 1 == warmup {
            (rss_warm, fds_warm) = (rss_mib(), open_fds());
        }
        if i + 1 >= warmup {
            max_rss = max_rss.max(rss_mib().unwrap_or(0.0));
        }
    }
    drop(frame);
    let (rss_end, fds_end) = (rss_mib(), open_fds());
    let growth = match (rss_warm, rss_end) {
        (Some(a), Some(b)) if a > 0.0 => Some((b - a) / a * 100.0),
        _ => None,
    };
    let report = serde_json::json!({
        "questions": questions, "frames": frames, "warmup_questions": warmup, "tokens": tokens,
        "invalid": invalid.len(), "first_invalid": invalid.first(),
        "rss_after_warmup_mib": rss_warm, "rss_end_mib": rss_end, "rss_max_after_warmup_mib": max_rss,
        "rss_growth_pct": growth, "max_rss_growth_pct": MAX_RSS_GROWTH_PCT,
        "fds_after_warmup": fds_warm, "fds_end": fds_end,
        "seconds": started.elapsed().as_secs_f64(),
    });
    Ok(report)
}

/// The soak's verdict on its report: `Err` with the reason when it failed.
pub fn verdict(report: &serde_json::Value) -> Result<(), String> {
    if report["invalid"].as_u64() != Some(0) {
        return Err(format!("{} invalid answers; first: {}", report["invalid"], report["first_invalid"]));
    }
    if let Some(g) = report["rss_growth_pct"].as_f64()
        && g >= MAX_RSS_GROWTH_PCT
    {
        return Err(format!("RSS grew {g:.2} % after the warm-up (limit {MAX_RSS_GROWTH_PCT} %)"));
    }
    if report["fds_after_warmup"] != report["fds_end"] {
        return Err(format!(
            "open file descriptors changed: {} after the warm-up, {} at the end",
            report["fds_after_warmup"], report["fds_end"]
        ));
    }
    Ok(())
}
