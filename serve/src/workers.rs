//! The worker pool: `--workers` threads, each with its own [`Engine`] clone (one loaded model,
//! a KV cache each), taking jobs from a bounded queue (`--queue`). The model never runs on the
//! async executor: handlers submit a [`Job`] and await its [`Event`]s. A job whose client went
//! away (its event receiver dropped) is skipped or stopped at the next token.

use crate::error::ApiError;
use crate::frames::{FrameCache, frame_bytes};
use crate::images::ImageInput;
use crate::metrics::Metrics;
use st::engine::{Answer, Engine, Frame, GenerateOptions, TokenEvent};
use st::prompt::Message;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// What the model is asked.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// SpatialThinker's prompt around the question (needs the image).
    SpatialThinker { question: String },
    /// The messages through the checkpoint's chat template as they are.
    Chat { messages: Vec<Message> },
}

/// One generation.
pub struct Job {
    pub image: Option<ImageInput>,
    pub prompt: Prompt,
    pub opts: GenerateOptions,
    /// Send each token's text as it comes (streaming responses).
    pub stream: bool,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
}

/// What a worker reports about a job.
#[derive(Debug)]
pub enum Event {
    Token(String),
    Done(Box<Finished>),
    Failed(ApiError),
}

/// A finished generation.
#[derive(Debug)]
pub struct Finished {
    pub answer: Answer,
    /// `st-run --json`'s object for this answer (when it had an image).
    pub json: Option<serde_json::Value>,
    pub frame_cached: bool,
    pub queue_ms: f64,
    pub ttft_ms: f64,
    pub total_ms: f64,
}

/// The queue and its workers.
pub struct Pool {
    queue: Mutex<Option<SyncSender<Job>>>,
    pub workers: usize,
    pub queue_len: usize,
    metrics: Arc<Metrics>,
    /// Set at the end of a graceful shutdown's grace period: every generation stops at its next token.
    cancel: Arc<AtomicBool>,
}

struct Worker {
    base: Engine,
    engine: Engine,
    rx: Arc<Mutex<Receiver<Job>>>,
    cache: Arc<Mutex<FrameCache>>,
    metrics: Arc<Metrics>,
    cancel: Arc<AtomicBool>,
}

impl Pool {
    /// Start `workers` threads over clones of `engine` with room for `queue` waiting jobs.
    pub fn start(engine: &Engine, workers: usize, queue: usize, cache: FrameCache, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = sync_channel(queue);
        let rx = Arc::new(Mutex::new(rx));
        let cache = Arc::new(Mutex::new(cache));
        let cancel = Arc::new(AtomicBool::new(false));
        for i in 0..workers.max(1) {
            let w = Worker {
                base: engine.clone(),
                engine: engine.clone(),
                rx: Arc::clone(&rx),
                cache: Arc::clone(&cache),
                metrics: Arc::clone(&metrics),
                cancel: Arc::clone(&cancel),
            };
            let spawned = std::thread::Builder::new().name(format!("st-worker-{i}")).spawn(move || w.run());
            if let Err(e) = spawned {
                tracing::error!("could not start worker {i}: {e}");
            }
        }
        Self { queue: Mutex::new(Some(tx)), workers: workers.max(1), queue_len: queue, metrics, cancel }
    }

    /// Queue `job`, or refuse at once when the queue is full (never waits).
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        let guard = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = guard.as_ref() else { return Err(ApiError::ShuttingDown) };
        // Counted before the send so a worker taking it at once never drives the gauge below 0.
        self.metrics.queue_depth.inc();
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.queue_depth.dec();
                Err(match e {
                    TrySendError::Full(_) => {
                        ApiError::Busy { workers: self.workers, queue: self.queue_len, retry_after_s: 1 }
                    }
                    TrySendError::Disconnected(_) => ApiError::ShuttingDown,
                })
            }
        }
    }

    /// Stop taking jobs (workers finish the queue, then exit).
    pub fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Stop every running and queued generation at its next token.
    pub fn cancel_all(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

impl Worker {
    fn run(mut self) {
        loop {
            let job = match self.rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                Ok(job) => job,
                Err(_) => return, // the pool closed
            };
            self.metrics.queue_depth.dec();
            if job.events.is_closed() {
                continue; // the client left while the job waited
            }
            if self.cancel.load(Ordering::SeqCst) {
                let _ = job.events.send(Event::Failed(ApiError::ShuttingDown));
                continue;
            }
            self.metrics.busy_workers.inc();
            let events = job.events.clone();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.answer(&job)));
            self.metrics.busy_workers.dec();
            let event = match outcome {
                Ok(Ok(finished)) => Event::Done(Box::new(finished)),
                Ok(Err(e)) => Event::Failed(e),
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!("a worker panicked: {what}; its engine is replaced");
                    // The engine may be mid-step: start over from a fresh clone (same sessions).
                    self.engine = self.base.clone();
                    Event::Failed(ApiError::Internal(format!("the generation panicked: {what}")))
                }
            };
            let _ = events.send(event);
        }
    }

    /// The frame of `image`: from the cache, or encoded now and kept.
    fn frame(&mut self, image: &ImageInput) -> Result<(Frame, bool), ApiError> {
        let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&image.hash);
        if let Some(frame) = cached {
            self.metrics.frame_cache_hits.inc();
            return Ok((frame, true));
        }
        self.metrics.frame_cache_misses.inc();
        let frame = self.engine.encode_bytes(&image.bytes, &image.name)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(image.hash, frame.clone(), frame_bytes(&frame));
        self.metrics.frame_cache_frames.set(cache.len() as i64);
        self.metrics.frame_cache_bytes.set(cache.bytes() as i64);
        Ok((frame, false))
    }

    fn answer(&mut self, job: &Job) -> Result<Finished, ApiError> {
        let start = Instant::now();
        let queue_ms = (start - job.arrived).as_secs_f64() * 1e3;
        let (frame, frame_cached) = match &job.image {
            Some(image) => {
                let (f, cached) = self.frame(image)?;
                (Some(f), cached)
            }
            None => (None, false),
        };
        let mut first_token: Option<Instant> = None;
        let cancel = &self.cancel;
        let on_token = |t: &TokenEvent<'_>| {
            first_token.get_or_insert_with(Instant::now);
            if job.stream && !t.text.is_empty() {
                let _ = job.events.send(Event::Token(t.text.to_string()));
            }
            if job.events.is_closed() || cancel.load(Ordering::Relaxed) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let answer = match (&job.prompt, &frame) {
            (Prompt::SpatialThinker { question }, Some(f)) => {
                self.engine.ask_streaming(f, question, &job.opts, on_token)?
            }
            (Prompt::SpatialThinker { .. }, None) => {
                return Err(ApiError::invalid("messages", "the SpatialThinker prompt needs an image"));
            }
            (Prompt::Chat { messages }, f) => self.engine.chat_streaming(f.as_ref(), messages, &job.opts, on_token)?,
        };
        let end = Instant::now();
        let m = &self.metrics;
        m.prompt_tokens.inc_by(answer.prompt_tokens as u64);
        m.generated_tokens.inc_by(answer.token_ids.len() as u64);
        let first = first_token.unwrap_or(end);
        m.ttft_seconds.observe((first - job.arrived).as_secs_f64());
        m.request_seconds.observe((end - job.arrived).as_secs_f64());
        let t = &answer.timings;
        if t.decode_tokens > 0 {
            m.decode_seconds_per_token.observe(t.decode_ms.iter().sum::<f64>() / 1e3 / t.decode_tokens as f64);
        }
        let json = frame.as_ref().map(|f| answer.to_json(f, self.engine.model()));
        Ok(Finished {
            answer,
            json,
            frame_cached,
            queue_ms,
            ttft_ms: (first - job.arrived).as_secs_f64() * 1e3,
            total_ms: (end - job.arrived).as_secs_f64() * 1e3,
        })
    }
}
