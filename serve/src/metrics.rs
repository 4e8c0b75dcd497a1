//! `GET /metrics` in the Prometheus text format (prometheus-client): requests by route and
//! status, queue depth, busy workers, tokens, time to first token and decode time per token,
//! frame-cache hits and misses.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
}

/// Every metric the server keeps, registered once.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub queue_depth: Gauge,
    pub busy_workers: Gauge,
    pub prompt_tokens: Counter,
    pub generated_tokens: Counter,
    pub ttft_seconds: Histogram,
    pub decode_seconds_per_token: Histogram,
    pub request_seconds: Histogram,
    pub frame_cache_hits: Counter,
    pub frame_cache_misses: Counter,
    pub frame_cache_frames: Gauge,
    pub frame_cache_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("st"),
            requests: Family::default(),
            queue_depth: Gauge::default(),
            busy_workers: Gauge::default(),
            prompt_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            // 10 ms … ~330 s: a cached frame on a desktop GPU up to a new 7B frame on 2 cores.
            ttft_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            // 1 ms … ~33 s per token.
            decode_seconds_per_token: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            request_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 18)),
            frame_cache_hits: Counter::default(),
            frame_cache_misses: Counter::default(),
            frame_cache_frames: Gauge::default(),
            frame_cache_bytes: Gauge::default(),
        };
        m.registry.register("requests", "HTTP requests answered, by route and status", m.requests.clone());
        m.registry.register("queue_depth", "Requests waiting for a worker", m.queue_depth.clone());
        m.registry.register("busy_workers", "Workers running a generation", m.busy_workers.clone());
        m.registry.register("prompt_tokens", "Prompt tokens of finished generations", m.prompt_tokens.clone());
        m.registry.register("generated_tokens", "Tokens generated", m.generated_tokens.clone());
        m.registry.register("ttft_seconds", "Time from a request's arrival to its first token", m.ttft_seconds.clone());
        m.registry.register(
            "decode_seconds_per_token",
            "Decode time per token after the first, one sample per generation",
            m.decode_seconds_per_token.clone(),
        );
        m.registry.register(
            "request_seconds",
            "Time from a generation request's arrival to its end",
            m.request_seconds.clone(),
        );
        m.registry.register(
            "frame_cache_hits",
            "Images whose encoded frame came from the cache",
            m.frame_cache_hits.clone(),
        );
        m.registry.register(
            "frame_cache_misses",
            "Images encoded (vision tower + prefix prefill)",
            m.frame_cache_misses.clone(),
        );
        m.registry.register("frame_cache_frames", "Frames held by the cache", m.frame_cache_frames.clone());
        m.registry.register("frame_cache_bytes", "Host bytes held by the cached frames", m.frame_cache_bytes.clone());
        m
    }
}

impl Metrics {
    pub fn request(&self, route: &'static str, status: u16) {
        self.requests.get_or_create(&RequestLabels { route, status }).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_the_text_format() {
        let m = super::Metrics::default();
        m.request("/v1/scene", 200);
        m.ttft_seconds.observe(0.5);
        let text = m.render();
        assert!(text.contains("st_requests_total{route=\"/v1/scene\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("st_ttft_seconds_count 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
