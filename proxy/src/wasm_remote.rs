//! `vm_config.code.remote`: a plugin's module fetched through a configured cluster,
//! checked against its `sha256`, before the config that names it is accepted.
//!
//! As Envoy's `RemoteAsyncDataProvider`: one `GET` of `http_uri.uri` to a host of
//! `http_uri.cluster` (the URI's host only fills `Host` / `:authority`; the cluster
//! decides where the request goes), each attempt bounded by `http_uri.timeout` (zero:
//! none). Anything but a 200 whose body hashes to `sha256` fails the attempt; a
//! failed attempt is retried `retry_policy.num_retries` times (default 1) after
//! Envoy's jittered exponential back-off (`retry_back_off`, default 1 s base, 10 s
//! cap): a uniform wait in `[0, (2^n - 1) × base)`, capped. The request goes through
//! the proxy's own upstream pools on the main thread, so the cluster's breakers and
//! connection stats see it.
//!
//! Fetched modules are kept in memory by digest (Envoy's code cache: entries unused
//! for 24 h are dropped), so a reload that changes only a plugin's configuration
//! does not fetch again. Envoy's stats: `wasm.remote_load_cache_hits`,
//! `remote_load_cache_misses`, `remote_load_fetch_successes`,
//! `remote_load_fetch_failures` and the gauge `remote_load_cache_entries`.
//!
//! Unlike Envoy, the fetch happens before the config is accepted, never after: a
//! failed fetch is an error naming the field, so a reload is refused and the running
//! config keeps serving. Envoy instead accepts the config and runs without the
//! plugin (skipping the filter when `fail_open`, answering every request 503
//! otherwise); Strait does that only at startup with `fail_open` (`runtime.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use rand::Rng;
use strait_filters::wasm::sha256_hex;
use strait_xds::model::{RemoteCode, UpstreamProtocol};

use crate::body::RequestBody;
use crate::cluster::ClusterRuntime;
use crate::pool;
use crate::runtime::FastMap;
use crate::stats::{Counter, Gauge, Scope, Store};

/// How long a fetched module stays cached unused (Envoy's
/// `CODE_CACHE_SECONDS_CACHING_TTL`).
const CACHE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Envoy's `wasm.remote_load_*` stats.
struct RemoteLoadStats {
    cache_hits: Counter,
    cache_misses: Counter,
    fetch_successes: Counter,
    fetch_failures: Counter,
    cache_entries: Gauge,
}

impl RemoteLoadStats {
    fn register(store: &Store) -> RemoteLoadStats {
        let scope = Scope::custom("wasm");
        RemoteLoadStats {
            cache_hits: store.counter(&scope, "remote_load_cache_hits"),
            cache_misses: store.counter(&scope, "remote_load_cache_misses"),
            fetch_successes: store.counter(&scope, "remote_load_fetch_successes"),
            fetch_failures: store.counter(&scope, "remote_load_fetch_failures"),
            cache_entries: store.gauge(&scope, "remote_load_cache_entries"),
        }
    }
}

/// Fetched modules by sha256, with their last use.
static CODE_CACHE: Mutex<Option<HashMap<String, (Bytes, Instant)>>> = Mutex::new(None);

/// The module `remote` names: from the code cache, else fetched (with retries) and
/// verified. Errors name the field: `<remote>.sha256: module sha256 is X, config
/// says Y`, `<remote>.http_uri: …`.
pub async fn load(
    remote: &RemoteCode,
    clusters: &FastMap<String, Arc<ClusterRuntime>>,
    store: &Store,
) -> anyhow::Result<Bytes> {
    let stats = RemoteLoadStats::register(store);
    let now = Instant::now();
    let cached = {
        let mut cache = CODE_CACHE.lock();
        let cache = cache.get_or_insert_with(HashMap::new);
        cache.retain(|sha, (_, used)| sha == &remote.sha256 || now - *used < CACHE_TTL);
        stats.cache_entries.set(cache.len() as i64);
        cache.get_mut(&remote.sha256).map(|(code, used)| {
            *used = now;
            code.clone()
        })
    };
    if let Some(code) = cached {
        stats.cache_hits.inc();
        return Ok(code);
    }
    stats.cache_misses.inc();
    let Some(cluster) = clusters.get(&remote.cluster) else {
        stats.fetch_failures.inc();
        return Err(anyhow!(
            "{}.http_uri.cluster: unknown cluster '{}'",
            remote.path,
            remote.cluster
        ));
    };
    match fetch(remote, cluster).await {
        Ok(code) => {
            stats.fetch_successes.inc();
            let mut cache = CODE_CACHE.lock();
            let cache = cache.get_or_insert_with(HashMap::new);
            cache.insert(remote.sha256.clone(), (code.clone(), Instant::now()));
            stats.cache_entries.set(cache.len() as i64);
            Ok(code)
        }
        Err(e) => {
            stats.fetch_failures.inc();
            Err(e)
        }
    }
}

/// Why one attempt failed.
enum AttemptError {
    /// The body arrived but is not the module the config names.
    Digest(String),
    Other(String),
}

/// Up to `1 + num_retries` attempts with back-off between them; the last failure
/// is the error.
async fn fetch(remote: &RemoteCode, cluster: &Arc<ClusterRuntime>) -> anyhow::Result<Bytes> {
    let attempts = remote.num_retries.saturating_add(1);
    let mut attempt = 1;
    loop {
        let error = match attempt_once(remote, cluster, attempt).await {
            Ok(code) => return Ok(code),
            Err(e) => e,
        };
        if attempt >= attempts {
            return Err(match error {
                AttemptError::Digest(actual) => anyhow!(
                    "{}.sha256: module sha256 is {actual}, config says {} (fetched from {})",
                    remote.path,
                    remote.sha256,
                    remote.uri
                ),
                AttemptError::Other(why) => anyhow!(
                    "{}.http_uri: cannot fetch {} through cluster '{}' ({attempts} attempts): {why}",
                    remote.path,
                    remote.uri,
                    remote.cluster
                ),
            });
        }
        let wait = back_off(remote, attempt, rand::thread_rng().gen());
        let why = match &error {
            AttemptError::Digest(actual) => format!("sha256 is {actual}"),
            AttemptError::Other(why) => why.clone(),
        };
        tracing::warn!(uri = %remote.uri, attempt, error = %why, retry_in = ?wait, "wasm module fetch failed");
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

/// Envoy's `JitteredExponentialBackOffStrategy`: after the `retry`-th failure
/// (from 1), a wait drawn uniformly from `[0, (2^retry - 1) × base)`, capped at
/// `max_interval`.
fn back_off(remote: &RemoteCode, retry: u32, random: u64) -> Duration {
    let base = remote.base_interval.as_millis().max(1) as u64;
    let multiplier = (1u64 << retry.min(63)) - 1;
    let ceiling = multiplier.saturating_mul(base).max(1);
    let max = remote.max_interval.as_millis() as u64;
    Duration::from_millis((random % ceiling).min(max))
}

async fn attempt_once(
    remote: &RemoteCode,
    cluster: &Arc<ClusterRuntime>,
    attempt: u32,
) -> Result<Bytes, AttemptError> {
    let exchange = exchange(remote, cluster, attempt);
    let body = match remote.timeout.is_zero() {
        true => exchange.await,
        false => tokio::time::timeout(remote.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {:?}", remote.timeout))),
    }
    .map_err(AttemptError::Other)?;
    let actual = sha256_hex(&body);
    match actual == remote.sha256 {
        true => Ok(body),
        false => Err(AttemptError::Digest(actual)),
    }
}

/// One request and its whole body, on a host of the cluster (attempts rotate over
/// the available hosts).
async fn exchange(
    remote: &RemoteCode,
    cluster: &Arc<ClusterRuntime>,
    attempt: u32,
) -> Result<Bytes, String> {
    let set = cluster.hosts.load();
    let available: Vec<_> = set.hosts.iter().filter(|h| h.is_available()).collect();
    let pool = match available.is_empty() {
        true => set.hosts.iter().collect(),
        false => available,
    };
    let Some(host) = pool.get(attempt as usize % pool.len().max(1)).copied() else {
        return Err("the cluster has no hosts".into());
    };
    let h2 = cluster.config.protocol == UpstreamProtocol::Http2;
    let mut request = Request::builder().method(Method::GET);
    request = match h2 {
        true => request.version(Version::HTTP_2).uri(
            Uri::builder()
                .scheme("http")
                .authority(remote.authority.as_str())
                .path_and_query(remote.path_and_query.as_str())
                .build()
                .map_err(|e| e.to_string())?,
        ),
        false => request
            .version(Version::HTTP_11)
            .uri(remote.path_and_query.as_str())
            .header(header::HOST, remote.authority.as_str()),
    };
    let request = request
        .body(RequestBody::empty())
        .map_err(|e| e.to_string())?;
    let (response, _lease) = pool::send(
        cluster,
        host,
        h2,
        false,
        Default::default(),
        Box::new(request.into()),
    )
    .await
    .map_err(|e| format!("{e} ({})", host.addr))?;
    cluster.stats.record_status(response.status().as_u16());
    if response.status() != StatusCode::OK {
        return Err(format!("{} answered {}", host.addr, response.status()));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the body from {}: {e}", host.addr))?;
    Ok(body.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(base_ms: u64, max_ms: u64) -> RemoteCode {
        RemoteCode {
            path: "p".into(),
            uri: "http://h/m".into(),
            authority: "h".into(),
            path_and_query: "/m".into(),
            cluster: "c".into(),
            timeout: Duration::from_secs(1),
            sha256: String::new(),
            num_retries: 3,
            base_interval: Duration::from_millis(base_ms),
            max_interval: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn back_off_is_envoys_jittered_exponential() {
        let r = remote(100, 1000);
        // First retry: [0, 100) ms; second: [0, 300); third: [0, 700); then capped.
        assert_eq!(back_off(&r, 1, 99), Duration::from_millis(99));
        assert_eq!(back_off(&r, 1, 100), Duration::ZERO);
        assert_eq!(back_off(&r, 2, 299), Duration::from_millis(299));
        assert_eq!(back_off(&r, 3, 699), Duration::from_millis(699));
        assert_eq!(back_off(&r, 5, 2999), Duration::from_millis(1000));
        assert_eq!(back_off(&r, 80, 5000), Duration::from_millis(1000));
    }
}
