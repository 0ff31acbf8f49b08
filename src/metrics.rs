//! Prometheus metrics, served on the ops listener's `/metrics`: Prometheus text 0.0.4, or
//! OpenMetrics 1.0 when the scraper asks for it, which adds exemplars (the trace id of an
//! observation made inside a sampled trace) to the latency histograms.
//!
//! Labels are bounded sets only: provider names, HTTP status codes, public error codes,
//! verification results. Tenant ids appear only when `[ops] metrics_tenant_labels = true`
//! (an operator's choice for small fleets). Never a secret: nothing here sees one.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// A provider name or tenant id as a label value: shared text, so the label set a request
/// builds to find its counter copies nothing (the ids keep their text in an `Arc`).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct Name(Arc<str>);

impl Name {
    /// `-`: no provider (routing failed).
    pub(crate) fn none() -> Name {
        static NONE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("-"));
        Name(NONE.clone())
    }
}

impl From<&keyward_core::ids::ProviderName> for Name {
    fn from(n: &keyward_core::ids::ProviderName) -> Name {
        Name(n.shared())
    }
}

impl From<&keyward_core::ids::TenantId> for Name {
    fn from(t: &keyward_core::ids::TenantId) -> Name {
        Name(t.shared())
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(&self.0)
    }
}

/// `provider`, `status` (HTTP code) and `error` (keyward's code, or empty).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// Provider name, or `-` when routing failed.
    pub provider: Name,
    /// HTTP status answered.
    pub status: u16,
    /// keyward's error code, empty for relayed answers.
    pub error: &'static str,
}

/// The same, per tenant (opt-in).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TenantRequestLabels {
    /// Tenant id.
    pub tenant: Name,
    /// Provider name.
    pub provider: Name,
    /// HTTP status answered.
    pub status: u16,
}

/// `provider`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ProviderLabels {
    /// Provider name.
    pub provider: Name,
}

/// `provider`, `result` (`verified` / `rejected`) and `reason` (the rejection code).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WebhookLabels {
    /// Provider name.
    pub provider: Name,
    /// `verified` or `rejected`.
    pub result: &'static str,
    /// Rejection code, empty when verified.
    pub reason: &'static str,
}

/// A latency exemplar's labels: the trace the observation was made in.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TraceExemplar {
    /// W3C trace id (hex).
    pub trace_id: String,
}

/// Seconds, with a trace exemplar per bucket when traces are on.
pub(crate) type Latency = HistogramWithExemplars<TraceExemplar>;

/// Latency histograms by label set `L`.
pub(crate) type LatencyFamily<L> = Family<L, Latency, fn() -> Latency>;

/// 50 µs … 1.6 s: a cache hit is microseconds, a store read or KMS call milliseconds.
fn latency() -> Latency {
    HistogramWithExemplars::new(exponential_buckets(0.00005, 2.0, 16))
}

/// 0.5 ms … 4 s: a provider's answer (speech synthesis can take seconds).
fn upstream_latency() -> Latency {
    HistogramWithExemplars::new(exponential_buckets(0.0005, 2.0, 14))
}

/// Records `seconds`, with the trace id as the exemplar when there is one.
pub(crate) fn observe(h: &Latency, seconds: f64, trace_id: Option<String>) {
    h.observe(seconds, trace_id.map(|trace_id| TraceExemplar { trace_id }), None);
}

/// `kms` (`vault-transit`, `pkcs11`) and `op` (`wrap`, `unwrap`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KmsLabels {
    /// The source's kind.
    pub kms: &'static str,
    /// The call.
    pub op: &'static str,
}

/// KMS calls, timed where they are made (the keyring has no handle on a `Metrics`); every
/// registry registers this one family.
pub(crate) static KMS_CALLS: std::sync::LazyLock<LatencyFamily<KmsLabels>> =
    std::sync::LazyLock::new(|| Family::new_with_constructor(latency as fn() -> Latency));

/// Values read from the rest of the daemon at scrape time.
#[derive(Debug)]
struct Derived {
    sources: Vec<Arc<dyn DerivedSource>>,
}

/// Something that contributes counters or gauges at scrape time.
pub(crate) trait DerivedSource: std::fmt::Debug + Send + Sync {
    /// `(name, help, is_counter, value)` rows.
    fn values(&self) -> Vec<(&'static str, &'static str, bool, u64)>;
}

impl Collector for Derived {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut rows = Vec::new();
        for s in &self.sources {
            rows.extend(s.values());
        }
        for (name, help, counter, v) in rows {
            if counter {
                let m = ConstCounter::new(v);
                let e = encoder.encode_descriptor(name, help, None, m.metric_type())?;
                m.encode(e)?;
            } else {
                let m = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
                let e = encoder.encode_descriptor(name, help, None, m.metric_type())?;
                m.encode(e)?;
            }
        }
        Ok(())
    }
}

/// Each [`Metrics`] has its own, so that a thread's cache of counters (below) never hands
/// one registry's counter to another (tests build many in one process).
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// How many label sets a thread keeps: providers × statuses seen lately.
const CACHED: usize = 32;

/// A thread's cache of one family's counters: registry id, label set, counter.
type CounterCache<L> = std::cell::RefCell<Vec<(u64, L, Counter)>>;

thread_local! {
    /// The `proxy_requests` counters this thread used last, with the registry's id. A
    /// request finds its counter by comparing a pointer and two small values instead of
    /// hashing its labels with SipHash under the family's lock (every request). The family
    /// never drops a counter, so a cached clone stays the one `/metrics` shows.
    static REQUEST_COUNTERS: CounterCache<RequestLabels> = const { std::cell::RefCell::new(Vec::new()) };
    /// The same for `webhook_verifications` (every delivery).
    static WEBHOOK_COUNTERS: CounterCache<WebhookLabels> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Labels a thread's cache can tell apart without hashing.
trait CheapEq {
    /// The same label set: the same shared name (held by the cache entry, so its address
    /// is not reused) and the same small values.
    fn same(&self, other: &Self) -> bool;
}

impl CheapEq for RequestLabels {
    fn same(&self, m: &Self) -> bool {
        Arc::ptr_eq(&self.provider.0, &m.provider.0) && self.status == m.status && self.error == m.error
    }
}

impl CheapEq for WebhookLabels {
    fn same(&self, m: &Self) -> bool {
        Arc::ptr_eq(&self.provider.0, &m.provider.0) && self.result == m.result && self.reason == m.reason
    }
}

/// Increments `labels`' counter in `family`, found in this thread's `cache` when it was used
/// lately (a name that is equal but not shared misses once, and is cached as well).
fn inc_cached<L>(
    cache: &'static std::thread::LocalKey<CounterCache<L>>,
    id: u64,
    family: &Family<L, Counter>,
    labels: L,
) where
    L: CheapEq + Clone + std::hash::Hash + Eq,
{
    cache.with_borrow_mut(|cache| {
        if let Some((_, _, counter)) = cache.iter().find(|(i, l, _)| *i == id && l.same(&labels)) {
            counter.inc();
            return;
        }
        let counter = family.get_or_create(&labels).clone();
        counter.inc();
        if cache.len() == CACHED {
            cache.remove(0);
        }
        cache.push((id, labels, counter));
    });
}

/// Every metric keyward exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    id: u64,
    registry: Registry,
    /// Outbound requests answered, by provider and status.
    pub proxy_requests: Family<RequestLabels, Counter>,
    /// The same by tenant, when enabled.
    pub proxy_requests_by_tenant: Option<Family<TenantRequestLabels, Counter>>,
    /// Time to the upstream's response head, by provider.
    pub upstream_latency: LatencyFamily<ProviderLabels>,
    /// Time to the tenant's credential (cache hit, or store read and unwrap).
    pub credential_resolve: Latency,
    /// Webhook verifications, by provider, result and reason.
    pub webhook_verifications: Family<WebhookLabels, Counter>,
}

impl Metrics {
    /// Registers every metric; `sources` add scrape-time values (token refreshes, replay
    /// cache size…).
    pub(crate) fn new(tenant_labels: bool, sources: Vec<Arc<dyn DerivedSource>>) -> Metrics {
        let mut registry = Registry::default();
        let info = Info::new(vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())]);
        registry.register("keyward_build", "keyward build information", info);
        let proxy_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "keyward_proxy_requests",
            "Outbound requests answered, by provider and status",
            proxy_requests.clone(),
        );
        let proxy_requests_by_tenant = tenant_labels.then(|| {
            let f = Family::<TenantRequestLabels, Counter>::default();
            registry.register(
                "keyward_proxy_requests_by_tenant",
                "Outbound requests answered, by tenant, provider and status",
                f.clone(),
            );
            f
        });
        let upstream_latency = Family::new_with_constructor(upstream_latency as fn() -> Latency);
        registry.register(
            "keyward_upstream_response_seconds",
            "Time from sending to the provider's response head",
            upstream_latency.clone(),
        );
        let credential_resolve = latency();
        registry.register(
            "keyward_credential_resolve_seconds",
            "Time to a tenant's credential: a cache hit, or the store read and key unwrap",
            credential_resolve.clone(),
        );
        registry.register("keyward_kms_call_seconds", "Calls to the KMS holding the master key", KMS_CALLS.clone());
        let webhook_verifications = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "keyward_webhook_verifications",
            "Webhook deliveries verified or rejected, by provider and reason",
            webhook_verifications.clone(),
        );
        registry.register_collector(Box::new(Derived { sources }));
        Metrics {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            registry,
            proxy_requests,
            proxy_requests_by_tenant,
            upstream_latency,
            credential_resolve,
            webhook_verifications,
        }
    }

    /// Counts one answered request in `proxy_requests`.
    pub(crate) fn count_request(&self, labels: RequestLabels) {
        inc_cached(&REQUEST_COUNTERS, self.id, &self.proxy_requests, labels);
    }

    /// Counts one webhook delivery verified or rejected in `webhook_verifications`.
    pub(crate) fn count_webhook(&self, labels: WebhookLabels) {
        inc_cached(&WEBHOOK_COUNTERS, self.id, &self.webhook_verifications, labels);
    }

    /// The counters an operator reads at a glance (requests, webhook verifications, cache,
    /// Google refreshes), as `{name, labels, value}`, read back from the exposition so they
    /// are exactly what `/metrics` says.
    pub(crate) fn counters(&self) -> Vec<serde_json::Value> {
        const WANTED: [&str; 5] = [
            "keyward_proxy_requests_total",
            "keyward_webhook_verifications_total",
            "keyward_credential_cache_hits_total",
            "keyward_credential_cache_misses_total",
            "keyward_google_token_refreshes_total",
        ];
        let mut out = Vec::new();
        for line in self.render().lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = match line.rsplit_once(' ') {
                Some(p) => p,
                None => continue,
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if !WANTED.contains(&name) {
                continue;
            }
            let mut map = serde_json::Map::new();
            for kv in labels.split("\",").filter(|s| !s.is_empty()) {
                if let Some((k, v)) = kv.split_once("=\"") {
                    map.insert(
                        k.trim_start_matches(',').to_string(),
                        serde_json::Value::String(v.trim_end_matches('"').to_string()),
                    );
                }
            }
            let value: f64 = value.parse().unwrap_or(0.0);
            out.push(serde_json::json!({"name": name, "labels": map, "value": value}));
        }
        out
    }

    /// The exposition text.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// OpenMetrics 1.0 text, exemplars included.
    pub(crate) fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, labels: &str) -> &'a str {
        let start = format!("keyward_proxy_requests_total{{{labels}}} ");
        text.lines().find_map(|l| l.strip_prefix(start.as_str())).unwrap_or("absent")
    }

    #[test]
    fn cached_counters_count_in_their_own_registry_and_survive_eviction() {
        let (a, b) = (Metrics::new(false, vec![]), Metrics::new(false, vec![]));
        let vapi = || Name(Arc::from("vapi"));
        let labels = |provider: Name, status| RequestLabels { provider, status, error: "" };
        let shared = vapi();
        for _ in 0..3 {
            a.count_request(labels(shared.clone(), 200));
        }
        b.count_request(labels(shared.clone(), 200));
        // Another `Arc` with the same text is the same label set.
        a.count_request(labels(vapi(), 200));
        // More label sets than the cache holds, then the first one again.
        for status in 300..300 + 2 * CACHED as u16 {
            a.count_request(labels(shared.clone(), status));
        }
        a.count_request(labels(shared.clone(), 200));
        let (ta, tb) = (a.render(), b.render());
        assert_eq!(line(&ta, r#"provider="vapi",status="200",error="""#), "5");
        assert_eq!(line(&tb, r#"provider="vapi",status="200",error="""#), "1");
        assert_eq!(line(&ta, r#"provider="vapi",status="301",error="""#), "1");
        assert_eq!(line(&tb, r#"provider="vapi",status="301",error="""#), "absent");
    }
}
