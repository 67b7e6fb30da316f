//! `remote_jwks`: a key set fetched with a GET through a cluster and kept for
//! `cache_duration`. Without `async_fetch` the first request that finds no fresh set
//! fetches it (and waits); with it a background task keeps the set fresh, refetching
//! five seconds before it would expire, or `failed_refetch_duration` after a failure.
//! A failed fetch caches nothing, so the next request tries again, as in Envoy.
use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use arc_swap::ArcSwapOption;
use http::{Method, Request, header};
use tokio::time::Instant;

use super::jwks::Jwks;
use crate::{
    http::body,
    telemetry::stats::Counter,
    upstream::manager::{ClusterManager, ClusterMap},
};

#[derive(Debug)]
pub struct RemoteJwks {
    pub uri: http::Uri,
    pub cluster: String,
    pub timeout: Duration,
    pub cache_duration: Duration,
    /// `async_fetch.failed_refetch_duration`, when fetching in the background.
    pub async_refetch_after_failure: Option<Duration>,
    /// `retry_policy.num_retries` (one when a retry policy is set without a count).
    pub retries: u32,
    fresh: ArcSwapOption<(Arc<Jwks>, Option<Instant>)>,
    /// The background refresh was started (once per key set, however many listeners
    /// share the config).
    refreshing: std::sync::atomic::AtomicBool,
}

/// Counted per fetch, under the filter's stats.
#[derive(Debug, Clone)]
pub struct FetchStats {
    pub success: Counter,
    pub failed: Counter,
}

impl RemoteJwks {
    pub fn new(
        uri: http::Uri,
        cluster: String,
        timeout: Duration,
        cache_duration: Duration,
        async_refetch_after_failure: Option<Duration>,
        retries: u32,
    ) -> Self {
        RemoteJwks {
            uri,
            cluster,
            timeout,
            cache_duration,
            async_refetch_after_failure,
            retries,
            fresh: ArcSwapOption::empty(),
            refreshing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The key set, fetched now if there is none fresh; `None` when the fetch failed.
    pub async fn get(&self, clusters: &ClusterMap, stats: &FetchStats) -> Option<Arc<Jwks>> {
        if let Some(f) = self.fresh.load().as_ref()
            && f.1.is_none_or(|t| Instant::now() < t)
        {
            return Some(f.0.clone());
        }
        self.fetch(clusters, stats).await
    }

    async fn fetch(&self, clusters: &ClusterMap, stats: &FetchStats) -> Option<Arc<Jwks>> {
        for _ in 0..=self.retries {
            if let Some(set) = self.fetch_once(clusters).await {
                stats.success.inc();
                let set = Arc::new(set);
                // A set kept fresh in the background does not expire on its own.
                let expiry = match self.async_refetch_after_failure {
                    Some(_) => None,
                    None => Some(Instant::now() + self.cache_duration),
                };
                self.fresh.store(Some(Arc::new((set.clone(), expiry))));
                return Some(set);
            }
        }
        stats.failed.inc();
        None
    }

    async fn fetch_once(&self, clusters: &ClusterMap) -> Option<Jwks> {
        let mut req = Request::new(body::empty());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.uri.clone();
        if let Some(host) = self.uri.authority() {
            req.headers_mut()
                .insert(header::HOST, host.as_str().parse().ok()?);
        }
        let (parts, bytes, _) =
            crate::upstream::side_call::call(clusters, &self.cluster, req, false, self.timeout)
                .await
                .ok()?;
        if parts.status != http::StatusCode::OK || bytes.is_empty() {
            return None;
        }
        Jwks::parse(std::str::from_utf8(&bytes).ok()?).ok()
    }

    /// Starts the background refresh (`async_fetch`); it ends when the config holding
    /// `this` is dropped.
    pub fn keep_fresh(this: &Arc<Self>, clusters: Arc<ClusterManager>, stats: FetchStats) {
        let Some(after_failure) = this.async_refetch_after_failure else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if this
            .refreshing
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(this);
        runtime.spawn(async move {
            loop {
                let Some(me) = weak.upgrade() else { return };
                let ok = me.fetch(&clusters.snapshot(), &stats).await.is_some();
                let wait = if !ok {
                    after_failure
                } else if me.cache_duration > Duration::from_secs(5) {
                    me.cache_duration - Duration::from_secs(5)
                } else {
                    me.cache_duration
                };
                drop(me);
                tokio::time::sleep(wait).await;
            }
        });
    }
}
