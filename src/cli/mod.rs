//! Command-line front doors: clap arguments and one file per subcommand. The binaries' `main` is one
//! `match` over [`Command`].

pub mod bench;
pub mod bench_peers;
pub mod data;
pub mod doctor;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod inspect;
pub mod reward;
pub mod run;
pub mod serve;
pub mod soak;

use clap::{Parser, Subcommand};

/// `st`: the SpatialThinker edge runtime.
#[derive(Debug, Parser)]
#[command(name = "st", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// FinetuneArgs is larger than the others; the command line is parsed once, so boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Preprocess an image, build the prompt and M-RoPE ids, and save them as .npy for comparison with Python.
    Inspect(inspect::InspectArgs),
    /// Answer a question about an image.
    Run(run::RunArgs),
    /// Export a Hugging Face checkpoint to ONNX graphs and a manifest.
    Export(export::ExportArgs),
    /// Time the whole path (TTFT split, decode tokens/s, peak RSS) on this device.
    Bench(bench::BenchArgs),
    /// Score completions with the dense spatial reward (docs/FORMATS.md#the-dense-reward), JSON lines in and out.
    Reward(reward::RewardArgs),
    /// Evaluate the model on STVQA-format rows: accuracy per category, reward, validity, timings.
    Eval(eval::EvalArgs),
    /// Datasets: `st data synth` renders a synthetic spatial dataset.
    Data(data::DataArgs),
    /// Fine-tune with LoRA: `--sft` trains on ground-truth completions (needs the `train` feature).
    Finetune(finetune::FinetuneArgs),
    /// Report which ONNX Runtime library is found and whether it loads.
    Doctor(doctor::DoctorArgs),
    /// Serve the model over HTTP: OpenAI-compatible chat completions, /v1/scene, /metrics (docs/SERVING.md).
    Serve(serve::ServeArgs),
}

/// Pixel budget of the resized image, shared by the commands that preprocess.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct PixelArgs {
    /// Lower bound on resized pixels (default: the model's preprocessor config).
    #[arg(long)]
    pub min_pixels: Option<u64>,
    /// Upper bound on resized pixels; lower it on edge devices (e.g. 200704 = 256 image tokens).
    #[arg(long)]
    pub max_pixels: Option<u64>,
}

impl PixelArgs {
    pub fn overrides(&self) -> crate::inspect::PixelOverrides {
        crate::inspect::PixelOverrides { min_pixels: self.min_pixels, max_pixels: self.max_pixels }
    }
}

/// The default model directory: `$ST_MODEL`, else the bundled tiny model.
pub fn default_model_dir() -> std::path::PathBuf {
    match std::env::var_os("ST_MODEL") {
        Some(v) => v.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny"),
    }
}

/// Which model and where it runs, shared by the commands that load one.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Exported model or HF checkpoint directory (default: $ST_MODEL, else the bundled tiny model).
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Execution provider: cpu, cuda[:N], tensorrt[:N].
    #[arg(long, default_value = "cpu")]
    pub device: crate::engine::Device,
    /// TensorRT engine cache directory.
    #[arg(long)]
    pub trt_cache: Option<std::path::PathBuf>,
    /// Run on CPU (with a warning) when the device's provider is unavailable.
    #[arg(long)]
    pub cpu_fallback: bool,
    /// Intra-op threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// libonnxruntime.so.1.31.1 to use.
    #[arg(long)]
    pub ort_lib: Option<std::path::PathBuf>,
    /// Keep the vision tower loaded (resident) or load it for each frame and release it after
    /// (on-demand: less memory while answering, a session load per frame).
    #[arg(long, value_enum, default_value = "resident")]
    pub vision_session: crate::engine::VisionSession,
    /// The vision tower's weights in memory on the CPU: as exported (fp16 widened per call: memory at
    /// the files' size) or widened to f32 copies at load (faster encoding, the tower's memory doubled).
    #[arg(long, value_enum, default_value = "as-exported")]
    pub vision_weights: crate::engine::VisionWeights,
    /// Write ONNX Runtime's per-node profile of each graph's session to PREFIX-<graph>_<time>.json
    /// when it is released.
    #[arg(long, value_name = "PREFIX")]
    pub ort_profile: Option<std::path::PathBuf>,
    /// Back the loaded weights with transparent huge pages (Linux; best effort): fewer TLB misses per
    /// decode step.
    #[arg(long, value_enum, default_value = "on")]
    pub huge_pages: crate::engine::HugePages,
}

impl ModelArgs {
    /// Load the engine (exporting an HF checkpoint once into the cache) with `pixels` applied.
    pub fn engine(&self, pixels: &PixelArgs) -> anyhow::Result<crate::engine::Engine> {
        let dir = crate::engine::cache::exported_model(&self.model.clone().unwrap_or_else(default_model_dir))?;
        let mut device = self.device.clone();
        if let crate::engine::Device::TensorRt { cache_dir, .. } = &mut device {
            cache_dir.clone_from(&self.trt_cache);
        }
        let opts = crate::engine::SessionOptions {
            ort_lib: self.ort_lib.clone(),
            threads: self.threads,
            device,
            cpu_fallback: self.cpu_fallback,
            vision: self.vision_session,
            vision_weights: self.vision_weights,
            profile: self.ort_profile.clone(),
            huge_pages: self.huge_pages,
        };
        let mut engine = crate::engine::Engine::load(&dir, &opts)?;
        let b = &mut engine.preprocessor.options.pixels;
        b.min_pixels = pixels.min_pixels.unwrap_or(b.min_pixels);
        b.max_pixels = pixels.max_pixels.unwrap_or(b.max_pixels);
        Ok(engine)
    }
}

/// Log st's notices and everyone's warnings (e.g. a CPU fallback) to stderr; `RUST_LOG` overrides the level.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("st=info,warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// A hidden sibling of `path` for writing before the final rename (`.NAME.partial-PID`), so an
/// interrupted command never leaves a half-written output under the real name.
pub fn partial_path(path: &std::path::Path) -> std::path::PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// Write `bytes` to `path` through [`partial_path`] and a rename; errors name `what` and the file.
/// On an error (a full disk, say) the temporary file is removed and `path` is as it was.
pub fn write_then_rename(path: &std::path::Path, bytes: &[u8], what: &str) -> anyhow::Result<()> {
    let tmp = partial_path(path);
    let written = std::fs::write(&tmp, bytes)
        .map_err(|e| anyhow::anyhow!("{what} {}: {e}", tmp.display()))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("{what} {}: {e}", path.display())));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
