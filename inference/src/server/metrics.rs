//! Prometheus metrics with vLLM's meanings under our `sandgraph_infer_` prefix, so dashboards
//! built for vLLM (running/waiting requests, token counters, TTFT, inter-token, end-to-end and
//! queue-time histograms, KV-cache usage) work against this server by swapping the prefix.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets in seconds (1 ms .. ~65 s).
fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
        7.5, 10.0, 20.0, 40.0, 80.0,
    ]
    .into_iter()
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    running: Gauge,
    waiting: Gauge,
    kv_usage: Gauge<f64, AtomicU64>,
    prompt_tokens: Counter,
    prefix_cache_queries: Counter,
    prefix_cache_hits: Counter,
    generation_tokens: Counter,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue: Histogram,
    finished: Family<Vec<(&'static str, &'static str)>, Counter>,
}

/// Why a request ended, as vLLM's `finished_reason` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// End of sequence or a stop sequence.
    Stop,
    /// `max_tokens` or the context length reached.
    Length,
    /// The client went away (queued or running).
    Abort,
    /// The engine failed while the request ran.
    Error,
}

impl Finished {
    pub fn as_str(self) -> &'static str {
        match self {
            Finished::Stop => "stop",
            Finished::Length => "length",
            Finished::Abort => "abort",
            Finished::Error => "error",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics labelled `model_name="model"`; use [`Metrics::for_model`] to name the model.
    pub fn new() -> Metrics {
        Self::for_model("model")
    }

    /// Every series carries `model_name="<model_name>"`, as vLLM's do (dashboards filter on it).
    pub fn for_model(model_name: &str) -> Metrics {
        let mut registry = Registry::with_prefix_and_labels(
            "sandgraph_infer",
            [(
                std::borrow::Cow::Borrowed("model_name"),
                std::borrow::Cow::Owned(model_name.to_owned()),
            )]
            .into_iter(),
        );
        let m = Metrics {
            running: Gauge::default(),
            waiting: Gauge::default(),
            kv_usage: Gauge::default(),
            prompt_tokens: Counter::default(),
            prefix_cache_queries: Counter::default(),
            prefix_cache_hits: Counter::default(),
            generation_tokens: Counter::default(),
            ttft: Histogram::new(latency_buckets()),
            itl: Histogram::new(latency_buckets()),
            e2e: Histogram::new(latency_buckets()),
            queue: Histogram::new(latency_buckets()),
            finished: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "num_requests_running",
            "Requests holding a KV-cache slot (prefilling or decoding)",
            m.running.clone(),
        );
        registry.register(
            "num_requests_waiting",
            "Requests queued for a slot",
            m.waiting.clone(),
        );
        registry.register(
            "kv_cache_usage_perc",
            "Fraction of KV-cache positions in use (1 = full)",
            m.kv_usage.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens of requests admitted to a slot (cancelled ones and cached prefixes included)",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "prefix_cache_queries",
            "Prompt tokens looked up in the slots' cached prefixes",
            m.prefix_cache_queries.clone(),
        );
        registry.register(
            "prefix_cache_hits",
            "Prompt tokens found in a slot's cached prefix (not prefilled again)",
            m.prefix_cache_hits.clone(),
        );
        registry.register(
            "generation_tokens",
            "Tokens generated",
            m.generation_tokens.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "From request arrival (queue time included) to the first generated token",
            m.ttft.clone(),
        );
        registry.register(
            "inter_token_latency_seconds",
            "Time between consecutive generated tokens of one request",
            m.itl.clone(),
        );
        registry.register(
            "e2e_request_latency_seconds",
            "From request arrival (queue time included) to the request's last token",
            m.e2e.clone(),
        );
        registry.register(
            "request_queue_time_seconds",
            "Time a request waited in the queue before getting a slot",
            m.queue.clone(),
        );
        registry.register(
            "request_success",
            "Requests ended, by finished_reason (stop, length, abort, error)",
            m.finished.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn set_running(&self, running: usize, kv_usage: f64) {
        self.running.set(running as i64);
        self.kv_usage.set(kv_usage);
    }
    pub fn set_waiting(&self, waiting: usize) {
        self.waiting.set(waiting as i64);
    }
    pub fn add_generation_tokens(&self, n: u64) {
        self.generation_tokens.inc_by(n);
    }
    pub fn observe_ttft(&self, d: Duration) {
        self.ttft.observe(d.as_secs_f64());
    }
    pub fn observe_itl(&self, d: Duration) {
        self.itl.observe(d.as_secs_f64());
    }
    pub fn observe_queue_time(&self, d: Duration) {
        self.queue.observe(d.as_secs_f64());
    }
    /// A request ended for `why`, `d` after it arrived: counted by reason, and its end-to-end
    /// latency observed (aborted requests included, as vLLM does).
    pub fn request_finished(&self, why: Finished, d: Duration) {
        self.finished
            .get_or_create(&vec![("finished_reason", why.as_str())])
            .inc();
        self.e2e.observe(d.as_secs_f64());
    }
    /// A request admitted to a slot: its prompt tokens, `cached` of them reused from the slot's
    /// KV cache (counted whatever becomes of the request).
    pub fn add_prompt_tokens(&self, n: u64, cached: u64) {
        self.prompt_tokens.inc_by(n);
        self.prefix_cache_queries.inc_by(n);
        self.prefix_cache_hits.inc_by(cached);
    }
    /// Prompt tokens of a running request copied from another slot's KV cache (prefix sharing
    /// across slots), on top of what its own slot held at admission.
    pub fn add_prefix_cache_hits(&self, n: u64) {
        self.prefix_cache_hits.inc_by(n);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_the_prefix_and_vllm_names() {
        let m = Metrics::new();
        m.set_running(2, 0.25);
        m.add_generation_tokens(5);
        m.request_finished(Finished::Stop, Duration::from_millis(30));
        m.request_finished(Finished::Abort, Duration::from_millis(5));
        m.add_prompt_tokens(7, 3);
        let text = m.render();
        assert!(
            text.contains("sandgraph_infer_num_requests_running{model_name=\"model\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("sandgraph_infer_generation_tokens_total{model_name=\"model\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("sandgraph_infer_prompt_tokens_total{model_name=\"model\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("sandgraph_infer_prefix_cache_hits_total{model_name=\"model\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("sandgraph_infer_kv_cache_usage_perc{model_name=\"model\"} 0.25"),
            "{text}"
        );
        assert!(
            text.contains(
                "sandgraph_infer_e2e_request_latency_seconds_count{model_name=\"model\"} 2"
            ),
            "{text}"
        );
        for reason in ["stop", "abort"] {
            let line = format!(
                "sandgraph_infer_request_success_total{{model_name=\"model\",finished_reason=\"{reason}\"}} 1"
            );
            assert!(text.contains(&line), "no `{line}` in {text}");
        }
    }
}
