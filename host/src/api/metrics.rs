//! `/metrics`: Prometheus metrics in the OpenMetrics text format, which
//! Prometheus scrapes natively. Per tenant and model: requests, errors, tokens,
//! latency and time to first token; server-wide (from the server context):
//! instances, KV memory, mapped files and batches.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::runtime::ServerContext;
use crate::tenants::Tenants;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub tenant: String,
    /// A model of the models directory, or `-` (an unknown name never becomes
    /// a label, so clients cannot grow the series without bound).
    pub model: String,
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub tenant: String,
    pub model: String,
    pub endpoint: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

type Histograms = Family<RequestLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    /// One scrape at a time: a total catches up with the server's once.
    rendering: std::sync::Mutex<()>,
    pub requests: Family<RequestLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub prompt_tokens: Family<RequestLabels, Counter>,
    pub completion_tokens: Family<RequestLabels, Counter>,
    pub latency: Histograms,
    pub time_to_first_token: Histograms,
    running: Family<TenantLabels, Gauge>,
    kv_tokens: Family<TenantLabels, Gauge>,
    live_instances: Gauge,
    replaced_instances: Total,
    kv_bytes: Gauge,
    model_files: Gauge,
    batches: Total,
    batched_sequences: Total,
    batched_tokens: Total,
}

/// A monotonic total kept elsewhere (by the server context), exported as a
/// counter: `inc_by` the growth since the last scrape.
type Total = Counter;

fn catch_up(total: &Total, now: u64) {
    let seen = total.get();
    if now > seen {
        total.inc_by(now - seen);
    }
}

fn seconds() -> Histogram {
    // 5 ms to about 3 minutes.
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("realm");
        let requests = Family::default();
        let errors = Family::default();
        let prompt_tokens = Family::default();
        let completion_tokens = Family::default();
        let latency = Histograms::new_with_constructor(seconds);
        let time_to_first_token = Histograms::new_with_constructor(seconds);
        let running = Family::default();
        let kv_tokens = Family::default();
        let live_instances = Gauge::default();
        let replaced_instances = Total::default();
        let kv_bytes = Gauge::default();
        let model_files = Gauge::default();
        let (batches, batched_sequences, batched_tokens) = (Total::default(), Total::default(), Total::default());
        registry.register("requests", "Generation requests admitted", requests.clone());
        registry.register("errors", "Requests answered with an error status", errors.clone());
        registry.register("prompt_tokens", "Prompt tokens processed", prompt_tokens.clone());
        registry.register("completion_tokens", "Tokens generated", completion_tokens.clone());
        registry.register(
            "request_duration_seconds",
            "Time from admission to the last byte of the answer",
            latency.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from admission to the first generated chunk",
            time_to_first_token.clone(),
        );
        registry.register("running_requests", "Requests in flight", running.clone());
        registry.register(
            "kv_tokens_reserved",
            "KV cache positions reserved against the tenant's limit",
            kv_tokens.clone(),
        );
        registry.register("live_instances", "Engine instances alive", live_instances.clone());
        registry.register(
            "replaced_instances",
            "Instances replaced after a trap or a deadline since start",
            replaced_instances.clone(),
        );
        registry.register("kv_cache_bytes", "Host memory held by KV caches", kv_bytes.clone());
        registry.register(
            "model_files_mapped",
            "Model files memory-mapped, each once for every tenant",
            model_files.clone(),
        );
        registry.register(
            "batches",
            "Batched forward steps run since start (steps of every tenant on one model merged)",
            batches.clone(),
        );
        registry.register(
            "batched_sequences",
            "Sequences in those batches since start (divided by batches: the mean batch size)",
            batched_sequences.clone(),
        );
        registry.register(
            "batched_tokens",
            "Tokens in those batches since start (prompt chunks and decode steps)",
            batched_tokens.clone(),
        );
        Self {
            registry,
            rendering: std::sync::Mutex::new(()),
            requests,
            errors,
            prompt_tokens,
            completion_tokens,
            latency,
            time_to_first_token,
            running,
            kv_tokens,
            live_instances,
            replaced_instances,
            kv_bytes,
            model_files,
            batches,
            batched_sequences,
            batched_tokens,
        }
    }
}

impl Metrics {
    /// The exposition, with the gauges and totals read now.
    pub fn render(&self, tenants: &Tenants, server: &ServerContext) -> String {
        let _one_at_a_time = self.rendering.lock().unwrap_or_else(|e| e.into_inner());
        for tenant in tenants.all() {
            let labels = TenantLabels {
                tenant: tenant.id.clone(),
            };
            self.running
                .get_or_create(&labels)
                .set(tenant.running_requests().into());
            self.kv_tokens
                .get_or_create(&labels)
                .set(tenant.kv_tokens().used().try_into().unwrap_or(i64::MAX));
        }
        let gauge = |v: u64| v.try_into().unwrap_or(i64::MAX);
        self.live_instances.set(gauge(server.instances.live() as u64));
        catch_up(&self.replaced_instances, server.instances.replaced());
        self.kv_bytes.set(gauge(server.scheduler.backend().kv_host_bytes()));
        self.model_files.set(gauge(server.registry.open_files() as u64));
        let totals = server.scheduler.totals();
        catch_up(&self.batches, totals.batches);
        catch_up(&self.batched_sequences, totals.sequences);
        catch_up(&self.batched_tokens, totals.tokens);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
