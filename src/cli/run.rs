//! `st run` / `st-run IMAGE "QUESTION"`: answer a question about an image. Readable sections on
//! a terminal, or one JSON object with `--json`; `--draw` writes the image with the scene's
//! boxes. `--model` may be an exported directory (with manifest.json) or a Hugging Face
//! checkpoint, which is exported once (fp32) into a cache keyed by its fingerprint.

use crate::decode::SamplingParams;
use crate::decode::grammar::Bounds;
use crate::engine::{Answer, Engine, GenerateOptions};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

pub use crate::engine::cache::exported_model;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Image file.
    pub image: PathBuf,
    /// The question (options as "(A) … (B) …" when it has them).
    pub question: String,
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write the image with the scene graph's boxes and labels drawn (PNG/JPEG by extension).
    #[arg(long, value_name = "OUT")]
    pub draw: Option<PathBuf>,
    /// Generate without the output grammar (for comparison; the grammar makes every answer valid).
    #[arg(long)]
    pub no_grammar: bool,
    /// Exact speculation: up to N prompt-lookup draft tokens per decoder pass, each kept only if
    /// the model picks it itself (the same output; 0 = off).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub speculate: usize,
    /// Token budget of the <observe> text under the grammar.
    #[arg(long, default_value_t = Bounds::default().observe_tokens)]
    pub observe_tokens: u32,
    /// Token budget of the <think> text under the grammar.
    #[arg(long, default_value_t = Bounds::default().think_tokens)]
    pub think_tokens: u32,
    /// Print tokens to stderr as they are generated.
    #[arg(long)]
    pub stream: bool,
    /// At most this many new tokens [default: 2048, or what the context leaves after the prompt if less].
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub pixels: super::PixelArgs,
}

/// The sampling chain's settings; greedy when no temperature is given.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        }
    }
}

/// The answer as readable sections.
fn print_text(a: &Answer) {
    let r = &a.response;
    let none = "(missing)";
    println!("observe: {}", r.observe.as_deref().unwrap_or(none));
    match &r.scene {
        Some(g) => {
            println!("scene:");
            for o in &g.objects {
                println!("  {:<16} {}", o.id, serde_json::json!(o)["bbox"]);
            }
            for rel in &g.relationships {
                println!("  {} —{}→ {}", rel.subject, rel.predicate, rel.object);
            }
        }
        None => println!("scene: {none}"),
    }
    println!("think: {}", r.think.as_deref().unwrap_or(none));
    match &r.answer {
        Some(c) => match c.letter {
            Some(l) => println!("answer: ({l}) {}", c.text),
            None => println!("answer: {}", c.text),
        },
        None => println!("answer: {none}"),
    }
    if !r.valid {
        println!("valid: no — {}", r.reasons.join("; "));
        println!("raw: {}", a.raw);
    }
}

/// Decode the original image, draw the scene, write it to `out` through a temporary file.
fn draw(engine: &Engine, image: &Path, a: &Answer, out: &Path) -> anyhow::Result<()> {
    let o = &engine.preprocessor.options;
    let mut rgb = crate::preprocess::decode_file(image, &o.limits, o.apply_exif_orientation)?;
    if let Some(scene) = &a.response.scene {
        crate::scene::draw_scene(&mut rgb, scene);
    }
    let format = image::ImageFormat::from_path(out)
        .map_err(|e| anyhow::anyhow!("--draw {}: unknown image format ({e})", out.display()))?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    rgb.write_to(&mut bytes, format).map_err(|e| anyhow::anyhow!("--draw {}: {e}", out.display()))?;
    super::write_then_rename(out, bytes.get_ref(), "--draw")
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut engine = args.model.engine(&args.pixels)?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let frame = engine.encode_image(&args.image)?;
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: args.sampling.params(),
        grammar: !args.no_grammar,
        bounds: Bounds { observe_tokens: args.observe_tokens, think_tokens: args.think_tokens, ..Default::default() },
        speculate: args.speculate,
        ..Default::default()
    };
    let answer = engine.ask_streaming(&frame, &args.question, &opts, |t| {
        if args.stream {
            eprint!("{}", t.text);
            let _ = std::io::stderr().flush();
        }
        ControlFlow::Continue(())
    })?;
    if args.stream {
        eprintln!();
    }
    if let Some(out) = &args.draw {
        draw(&engine, &args.image, &answer, out)?;
    }
    if args.json {
        let mut v = answer.to_json(&frame, engine.model());
        v["image"]["path"] = serde_json::json!(args.image);
        v["timings"]["load_ms"] = load_ms.into();
        println!("{v}");
    } else {
        print_text(&answer);
        let t = &answer.timings;
        eprintln!(
            "{} prompt tokens ({} reused) + {} new; preprocess {:.0} ms, vision {:.0} ms, prefill {:.0} ms, decode {:.1} tok/s",
            answer.prompt_tokens,
            answer.reused_prompt_tokens,
            answer.token_ids.len(),
            t.preprocess_ms,
            t.vision_ms,
            t.prefix_prefill_ms + t.prefill_ms,
            t.decode_tokens_per_s()
        );
    }
    Ok(())
}
