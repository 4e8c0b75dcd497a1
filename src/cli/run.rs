//! `st run` / `st-run IMAGE "QUESTION"`: answer a question about an image (greedy, CPU — the
//! engine's first cut). `--model` may be an exported directory (with manifest.json) or a Hugging
//! Face checkpoint, which is exported once (fp32) into a cache keyed by its fingerprint.

use crate::engine::{Engine, SessionOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Image file.
    pub image: PathBuf,
    /// The question (options as "(A) … (B) …" when it has them).
    pub question: String,
    /// Exported model or HF checkpoint directory (default: $ST_MODEL, else the bundled tiny model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    #[command(flatten)]
    pub pixels: super::PixelArgs,
    /// Intra-op threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// libonnxruntime.so.1.31.1 to use.
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
}

/// Where exported copies of checkpoints are kept: $ST_CACHE_DIR, else ~/.cache/st.
fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ST_CACHE_DIR") {
        return d.into();
    }
    match std::env::var_os("HOME") {
        Some(h) => Path::new(&h).join(".cache/st"),
        None => std::env::temp_dir().join("st-cache"),
    }
}

/// An exported model directory for `model`: itself when it has a manifest, else an fp32 export
/// of the checkpoint, made once and reused while the checkpoint is unchanged.
pub fn exported_model(model: &Path) -> anyhow::Result<PathBuf> {
    if model.join(st_checkpoint::manifest::MANIFEST_FILE).is_file() {
        return Ok(model.to_path_buf());
    }
    let ckpt = st_checkpoint::Checkpoint::open(model)?;
    let key = ckpt.fingerprint()?.replace(':', "-");
    let out = cache_dir().join(key);
    if out.join(st_checkpoint::manifest::MANIFEST_FILE).is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(cache_dir())?;
    eprintln!("exporting {} to {} (once)", model.display(), out.display());
    match st_export::export(model, &out, &st_export::ExportOptions::default()) {
        Ok(_) => Ok(out),
        // Another process finished the same export first.
        Err(st_export::Error::OutputExists { .. }) if out.join("manifest.json").is_file() => Ok(out),
        Err(e) => Err(e.into()),
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let model = exported_model(&args.model.clone().unwrap_or_else(super::default_model_dir))?;
    let opts = SessionOptions { ort_lib: args.ort_lib.clone(), threads: args.threads };
    let mut engine = Engine::load(&model, &opts)?;
    let loaded = start.elapsed();
    let b = &mut engine.preprocessor.options.pixels;
    b.min_pixels = args.pixels.min_pixels.unwrap_or(b.min_pixels);
    b.max_pixels = args.pixels.max_pixels.unwrap_or(b.max_pixels);
    let t0 = Instant::now();
    let frame = engine.encode_image(&args.image)?;
    let encoded = t0.elapsed();
    let t1 = Instant::now();
    let out = engine.generate(&frame, &args.question, args.max_new_tokens)?;
    let generated = t1.elapsed();
    if args.json {
        let v = serde_json::json!({
            "raw": out.text,
            "token_ids": out.token_ids,
            "prompt_tokens": out.prompt_tokens,
            "image": {"original_size": frame.image.original_size, "resized_size": frame.image.resized_size},
            "timings_ms": {
                "load": loaded.as_secs_f64() * 1e3,
                "preprocess_and_vision": encoded.as_secs_f64() * 1e3,
                "prefill_and_decode": generated.as_secs_f64() * 1e3,
            },
        });
        println!("{v}");
    } else {
        println!("{}", out.text);
        eprintln!(
            "{} prompt + {} new tokens; vision {:.0} ms, generation {:.0} ms",
            out.prompt_tokens,
            out.token_ids.len(),
            encoded.as_secs_f64() * 1e3,
            generated.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
