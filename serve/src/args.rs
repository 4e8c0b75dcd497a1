//! `st serve`'s command line.

use std::path::PathBuf;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "st serve",
    bin_name = "st serve",
    version,
    about = "Serve the model over HTTP: OpenAI-compatible chat completions and a typed scene endpoint"
)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: st::cli::ModelArgs,
    #[command(flatten)]
    pub pixels: st::cli::PixelArgs,
    /// Address to bind (the loopback by default: set 0.0.0.0 to serve the network, with --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the chosen one is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The model's name in requests and /v1/models (default: the model directory's name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Generations run at once, each on its own engine clone (one loaded model).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Requests waiting for a worker; one more is answered 503 with Retry-After.
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
    /// Require `Authorization: Bearer KEY` on /v1/* (default: $ST_API_KEY if set).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Let `file://` image URLs read images inside this directory (and nowhere else).
    #[arg(long)]
    pub allow_local_files: Option<PathBuf>,
    /// Largest request body.
    #[arg(long, default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// Largest encoded image (decoded pixels are bounded by the preprocessor's limits).
    #[arg(long, default_value_t = 20 << 20)]
    pub max_image_bytes: usize,
    /// Frames (vision output + prompt prefix KV) kept for later questions about the same image (0: off).
    #[arg(long, default_value_t = 16)]
    pub frame_cache: usize,
    /// Host bytes the cached frames may hold.
    #[arg(long, default_value_t = 1 << 30)]
    pub frame_cache_bytes: usize,
    /// Seconds a shutdown (SIGINT/SIGTERM) lets running requests finish before cancelling them.
    #[arg(long, default_value_t = 30.0)]
    pub shutdown_timeout: f64,
}
