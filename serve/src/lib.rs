//! `st serve`: the runtime over HTTP. Requests come in on tokio (axum); the model runs on
//! [`workers`] threads, never on the async executor; encoded frames are kept in a [`frames`]
//! cache keyed by the image bytes' hash.
//!
//! - `POST /v1/chat/completions` ([`openai`]): the OpenAI chat API, streamed or not;
//! - `POST /v1/scene` ([`scene`]): image + question + options → `st-run --json`'s typed answer;
//! - `GET /health`, `GET /v1/models`, `GET /metrics` ([`metrics`]).
//!
//! Errors become responses in one place ([`error::ApiError`]), in the OpenAI error shape.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use clap::Parser;
//! let args = st_serve::ServeArgs::parse_from(["st serve", "--model", "tests/fixtures/models/tiny", "--port", "0"]);
//! st_serve::run(args) // until SIGINT/SIGTERM
//! # }
//! ```

pub mod args;
pub mod error;
pub mod frames;
pub mod images;
pub mod metrics;
pub mod openai;
pub mod routes;
pub mod scene;
pub mod workers;

pub use args::ServeArgs;
pub use routes::{AppState, router};

use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Logs to stderr through tracing: one line per request; `RUST_LOG` overrides the levels.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("st=info,st_serve=info,warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

/// Load the model, bind, serve until SIGINT/SIGTERM, then shut down gracefully: stop accepting,
/// let running requests finish for `--shutdown-timeout` seconds, cancel what is left, return.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let state = Arc::new(AppState::load(&args)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("st-http")
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(state, &args.host, args.port, Duration::from_secs_f64(args.shutdown_timeout.max(0.0))))
}

/// Serve `state` on `host:port` until a signal.
pub async fn serve(state: Arc<AppState>, host: &str, port: u16, grace: Duration) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("binding {host}:{port} (--host, --port)"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(
        "serving `{}` on http://{addr} ({} workers, queue {})",
        state.model_name,
        state.pool.workers,
        state.pool.queue_len
    );
    let app = router(Arc::clone(&state));
    let on_signal = {
        let state = Arc::clone(&state);
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down: no new requests; running ones get {:.0} s", grace.as_secs_f64());
            state.shutting_down.store(true, Ordering::SeqCst);
            state.pool.close();
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                tracing::warn!("shutdown grace period over: cancelling running generations");
                state.pool.cancel_all();
                // A generation stops at its next token; a vision pass already running cannot be
                // interrupted, so give it a bounded while, then leave regardless.
                tokio::time::sleep(Duration::from_secs(10)).await;
                tracing::warn!("requests still open 10 s after cancelling: exiting");
                std::process::exit(0);
            });
        }
    };
    axum::serve(listener, app).with_graceful_shutdown(on_signal).await.context("serving")?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
