//! The routes: shared state in one struct, one handler per route, the API key and the request
//! log as middleware.

use crate::ServeArgs;
use crate::error::ApiError;
use crate::frames::FrameCache;
use crate::images::{ImageInput, ImageSources};
use crate::metrics::Metrics;
use crate::openai::{self, ChatRequest};
use crate::scene;
use crate::workers::{Event, Finished, Job, Pool, Prompt};
use anyhow::Context;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio_stream::wrappers::ReceiverStream;

/// Everything the handlers share.
pub struct AppState {
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
    pub model_name: String,
    pub sources: ImageSources,
    /// BLAKE3 of the API key: compared in constant time with the hash of what a request sends.
    pub api_key_hash: Option<blake3::Hash>,
    pub max_body_bytes: usize,
    pub created: u64,
    pub shutting_down: AtomicBool,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

impl AppState {
    /// Load the model and start the workers.
    pub fn load(args: &ServeArgs) -> anyhow::Result<Self> {
        let engine = args.model.engine(&args.pixels)?;
        let model_dir = args.model.model.clone().unwrap_or_else(st::cli::default_model_dir);
        let model_name = args.model_name.clone().unwrap_or_else(|| {
            model_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "st".into())
        });
        let local_dir = match &args.allow_local_files {
            Some(d) => Some(d.canonicalize().with_context(|| format!("--allow-local-files {}", d.display()))?),
            None => None,
        };
        let api_key = args.api_key.clone().or_else(|| std::env::var("ST_API_KEY").ok()).filter(|k| !k.is_empty());
        Ok(Self::new(
            &engine,
            model_name,
            api_key.as_deref(),
            ImageSources { max_bytes: args.max_image_bytes, local_dir },
            args,
        ))
    }

    /// State over an already loaded `engine` (tests build the router on it directly).
    pub fn new(
        engine: &st::engine::Engine,
        model_name: String,
        api_key: Option<&str>,
        sources: ImageSources,
        args: &ServeArgs,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let cache = FrameCache::new(args.frame_cache, args.frame_cache_bytes);
        Self {
            pool: Pool::start(engine, args.workers, args.queue, cache, Arc::clone(&metrics)),
            metrics,
            model_name,
            sources,
            api_key_hash: api_key.map(|k| blake3::hash(k.as_bytes())),
            max_body_bytes: args.max_body_bytes,
            created: unix_now(),
            shutting_down: AtomicBool::new(false),
        }
    }

    fn check_model(&self, asked: &str) -> Result<(), ApiError> {
        if asked == self.model_name {
            Ok(())
        } else {
            Err(ApiError::UnknownModel { asked: asked.into(), served: self.model_name.clone() })
        }
    }

    /// Queue a generation and return the receiver of its events.
    fn submit(
        &self,
        image: Option<ImageInput>,
        prompt: Prompt,
        opts: st::engine::GenerateOptions,
        stream: bool,
        arrived: Instant,
    ) -> Result<UnboundedReceiver<Event>, ApiError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::ShuttingDown);
        }
        let (events, rx) = unbounded_channel();
        self.pool.submit(Job { image, prompt, opts, stream, events, arrived })?;
        Ok(rx)
    }
}

type Shared = Arc<AppState>;

/// The routes over `state`.
pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/scene", post(scene))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), require_api_key));
    Router::new()
        .merge(api)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, Json(json!({"error": {"message": "no such route", "type": "invalid_request_error", "param": null, "code": "not_found"}}))) })
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), log_request))
        .with_state(state)
}

/// What a generation reports to the request log.
#[derive(Clone, Debug)]
struct GenerationLog {
    prompt_tokens: usize,
    tokens: usize,
    queue_ms: f64,
    ttft_ms: f64,
    frame_cached: bool,
}

impl GenerationLog {
    fn of(f: &Finished) -> Self {
        Self {
            prompt_tokens: f.answer.prompt_tokens,
            tokens: f.answer.token_ids.len(),
            queue_ms: f.queue_ms,
            ttft_ms: f.ttft_ms,
            frame_cached: f.frame_cached,
        }
    }
}

/// A streamed response: its log line is written when the stream ends.
#[derive(Clone, Debug)]
struct Streamed;

fn log_line(method: &str, path: &str, status: u16, ms: f64, g: Option<&GenerationLog>) {
    match g {
        Some(g) => tracing::info!(
            "{method} {path} {status} {ms:.0} ms (queue {:.0} ms, first token {:.0} ms, {} prompt + {} tokens, frame {})",
            g.queue_ms,
            g.ttft_ms,
            g.prompt_tokens,
            g.tokens,
            if g.frame_cached { "cached" } else { "encoded" }
        ),
        None => tracing::info!("{method} {path} {status} {ms:.0} ms"),
    }
}

async fn log_request(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let route = match req.extensions().get::<MatchedPath>().map(MatchedPath::as_str) {
        Some("/v1/chat/completions") => "/v1/chat/completions",
        Some("/v1/scene") => "/v1/scene",
        Some("/v1/models") | Some("/v1/models/{id}") => "/v1/models",
        Some("/health") => "/health",
        Some("/metrics") => "/metrics",
        _ => "other",
    };
    let response = next.run(req).await;
    let status = response.status().as_u16();
    s.metrics.request(route, status);
    if response.extensions().get::<Streamed>().is_none() {
        let ms = start.elapsed().as_secs_f64() * 1e3;
        log_line(&method, &path, status, ms, response.extensions().get::<GenerationLog>());
    }
    response
}

async fn require_api_key(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(want) = &s.api_key_hash {
        let sent = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(sent) = sent else {
            return ApiError::Unauthorized(
                "missing `Authorization: Bearer <key>`: this server was started with --api-key",
            )
            .into_response();
        };
        // blake3::Hash's equality is constant-time.
        if blake3::hash(sent.trim().as_bytes()) != *want {
            return ApiError::Unauthorized("the API key is not this server's").into_response();
        }
    }
    next.run(req).await
}

fn body_error(e: BytesRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge { limit }
    } else {
        ApiError::Malformed(e.body_text())
    }
}

/// Wait for a generation's end (token events are for streams).
async fn finished(rx: &mut UnboundedReceiver<Event>) -> Result<Box<Finished>, ApiError> {
    loop {
        match rx.recv().await {
            Some(Event::Done(f)) => return Ok(f),
            Some(Event::Failed(e)) => return Err(e),
            Some(Event::Token(_)) => {}
            None => return Err(ApiError::Internal("the worker ended without an answer".into())),
        }
    }
}

fn completion_id() -> String {
    format!("chatcmpl-{}", &openai::unique_hash().to_hex()[..24])
}

async fn chat_completions(State(s): State<Shared>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let body = body.map_err(|e| body_error(e, s.max_body_bytes))?;
    let req: ChatRequest = serde_json::from_slice(&body).map_err(|e| ApiError::Malformed(e.to_string()))?;
    s.check_model(&req.model)?;
    let p = openai::parse(req, &s.sources)?;
    let mut rx = s.submit(p.image, p.prompt, p.opts, p.stream, arrived)?;
    let (id, created) = (completion_id(), unix_now());
    if !p.stream {
        let f = finished(&mut rx).await?;
        let mut response = Json(openai::completion(&id, created, &s.model_name, &f)).into_response();
        response.extensions_mut().insert(GenerationLog::of(&f));
        return Ok(response);
    }
    // The first event decides the status: an input the runtime refuses is a 4xx, not a 200 stream.
    let first = match rx.recv().await {
        Some(Event::Failed(e)) => return Err(e),
        Some(ev) => ev,
        None => return Err(ApiError::Internal("the worker ended without an answer".into())),
    };
    let (tx, out) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let relay = Relay { id, created, model: s.model_name.clone(), include_usage: p.include_usage, arrived };
    tokio::spawn(relay.run(first, rx, tx));
    let mut response = Sse::new(ReceiverStream::new(out)).keep_alive(KeepAlive::default()).into_response();
    response.extensions_mut().insert(Streamed);
    Ok(response)
}

/// Turns a generation's events into `chat.completion.chunk` server-sent events. When the client
/// goes away the send fails, the relay ends and drops the event receiver, which stops the worker.
struct Relay {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    arrived: Instant,
}

impl Relay {
    fn data(v: &serde_json::Value) -> Result<SseEvent, Infallible> {
        Ok(SseEvent::default().data(v.to_string()))
    }

    async fn run(
        self,
        first: Event,
        mut rx: UnboundedReceiver<Event>,
        tx: tokio::sync::mpsc::Sender<Result<SseEvent, Infallible>>,
    ) {
        let chunk = |delta, finish| Self::data(&openai::chunk(&self.id, self.created, &self.model, delta, finish));
        if tx.send(chunk(json!({"role": "assistant", "content": ""}), None)).await.is_err() {
            return;
        }
        let mut next = Some(first);
        let mut status = 200;
        let mut log = None;
        loop {
            let event = match next.take() {
                Some(e) => e,
                None => match rx.recv().await {
                    Some(e) => e,
                    None => break,
                },
            };
            let sent = match event {
                Event::Token(text) => tx.send(chunk(json!({"content": text}), None)).await,
                Event::Done(f) => {
                    log = Some(GenerationLog::of(&f));
                    let mut r = tx.send(chunk(json!({}), Some(openai::finish_reason(f.answer.stop)))).await;
                    if r.is_ok() && self.include_usage {
                        let v = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                            "model": self.model, "choices": [], "usage": openai::usage(&f)});
                        r = tx.send(Self::data(&v)).await;
                    }
                    if r.is_ok() {
                        r = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                    }
                    let _ = r;
                    break;
                }
                Event::Failed(e) => {
                    status = e.status().as_u16();
                    let _ = tx.send(Self::data(&e.body())).await;
                    let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                    break;
                }
            };
            if sent.is_err() {
                status = 499; // the client closed the stream
                break;
            }
        }
        let ms = self.arrived.elapsed().as_secs_f64() * 1e3;
        log_line("POST", "/v1/chat/completions (stream)", status, ms, log.as_ref());
    }
}

async fn scene(State(s): State<Shared>, req: Request) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let (fields, upload) = scene::read_request(req, &s.sources, s.max_body_bytes).await?;
    if let Some(m) = &fields.model {
        s.check_model(m)?;
    }
    let (image, question, opts) = fields.parts(upload, &s.sources)?;
    let mut rx = s.submit(Some(image), Prompt::SpatialThinker { question }, opts, false, arrived)?;
    let f = finished(&mut rx).await?;
    let body = f.json.clone().unwrap_or_default();
    let mut response = Json(body).into_response();
    response.extensions_mut().insert(GenerationLog::of(&f));
    Ok(response)
}

async fn models(State(s): State<Shared>) -> Json<serde_json::Value> {
    Json(json!({"object": "list", "data": [model_object(&s)]}))
}

async fn model(State(s): State<Shared>, UrlPath(id): UrlPath<String>) -> Result<Json<serde_json::Value>, ApiError> {
    s.check_model(&id)?;
    Ok(Json(model_object(&s)))
}

fn model_object(s: &AppState) -> serde_json::Value {
    json!({"id": s.model_name, "object": "model", "created": s.created, "owned_by": "st"})
}

async fn health(State(s): State<Shared>) -> Response {
    let m = &s.metrics;
    let body = json!({
        "status": if s.shutting_down.load(Ordering::SeqCst) { "shutting_down" } else { "ok" },
        "model": s.model_name,
        "workers": s.pool.workers,
        "busy_workers": m.busy_workers.get(),
        "queue_depth": m.queue_depth.get(),
    });
    let status = if s.shutting_down.load(Ordering::SeqCst) { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (status, Json(body)).into_response()
}

async fn metrics(State(s): State<Shared>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.render())
        .into_response()
}
