//! The secrets TLS contexts use: one slot per SDS secret (source cluster and name),
//! shared by every context that names it and filled by its SDS subscription. A new
//! value applies to the next handshake; connections already up keep theirs.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use arc_swap::ArcSwapOption;
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::{
    config::tls::{CertificatePem, SanMatcher, SdsSecret, SecretSource, SecretValue},
    telemetry::stats::{Counter, Store},
};

/// A secret ready for handshakes.
#[derive(Debug)]
pub enum Resolved {
    Certificate {
        key: Arc<CertifiedKey>,
        pem: Arc<CertificatePem>,
    },
    Validation {
        roots: Option<super::certs::Roots>,
        san: Vec<SanMatcher>,
        pem: Option<crate::config::tls::CaBundle>,
    },
}

impl Resolved {
    /// Parses what SDS delivered (already compiled, so it parses).
    pub fn new(v: SecretValue) -> Result<Self, String> {
        Ok(match v {
            SecretValue::Certificate(pem) => Resolved::Certificate {
                key: super::certs::certified_key(&pem)?,
                pem,
            },
            SecretValue::Validation { trusted_ca, san } => Resolved::Validation {
                roots: trusted_ca
                    .as_ref()
                    .map(super::certs::Roots::new)
                    .transpose()?,
                san,
                pem: trusted_ca,
            },
        })
    }
}

/// One SDS secret's current value.
#[derive(Debug)]
pub struct Slot {
    pub secret: SdsSecret,
    value: ArcSwapOption<Resolved>,
    ready: watch::Sender<bool>,
    pub stats: SdsStats,
    /// What `/config_dump` shows: the version, when it arrived, and the `Secret` with
    /// its private key redacted.
    shown: Mutex<Option<Shown>>,
    /// Dropped with the slot: ends its subscription.
    _alive: tokio::sync::oneshot::Sender<()>,
}

#[derive(Debug, Clone)]
pub struct SdsStats {
    pub update_success: Counter,
    pub update_rejected: Counter,
    pub update_failure: Counter,
    pub init_fetch_timeout: Counter,
}

impl SdsStats {
    fn new(store: &Store, name: &str) -> Self {
        let c = |s: &str| store.counter_tagged_by_default(format!("sds.{name}.{s}"));
        SdsStats {
            update_success: c("update_success"),
            update_rejected: c("update_rejected"),
            update_failure: c("update_failure"),
            init_fetch_timeout: c("init_fetch_timeout"),
        }
    }
}

/// A secret as `/config_dump` lists it.
#[derive(Debug, Clone)]
struct Shown {
    version: String,
    at: std::time::SystemTime,
    secret: envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
}

impl Slot {
    /// Takes a new value from SDS: `secret` as received, `version` its response's.
    pub fn update(
        &self,
        v: Resolved,
        version: &str,
        mut secret: envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
    ) {
        use envoy_types::pb::envoy::{
            config::core::v3::{DataSource, data_source::Specifier},
            extensions::transport_sockets::tls::v3::secret::Type,
        };
        // As Envoy's dump: the key never leaves the process.
        if let Some(Type::TlsCertificate(c)) = &mut secret.r#type
            && c.private_key.is_some()
        {
            c.private_key = Some(DataSource {
                specifier: Some(Specifier::InlineString("[redacted]".into())),
                ..Default::default()
            });
        }
        *self.shown.lock().unwrap_or_else(|e| e.into_inner()) = Some(Shown {
            version: version.to_owned(),
            at: std::time::SystemTime::now(),
            secret,
        });
        self.set(v);
    }

    pub fn get(&self) -> Option<Arc<Resolved>> {
        self.value.load_full()
    }

    pub fn set(&self, v: Resolved) {
        self.value.store(Some(Arc::new(v)));
        self.ready.send_replace(true);
    }

    /// Waits until the secret has a value, at most its `initial_fetch_timeout`
    /// (forever with `0s`, as Istio sets it). True when it has one.
    pub async fn wait(&self) -> bool {
        let mut rx = self.ready.subscribe();
        let arrived = rx.wait_for(|r| *r);
        match self.secret.initial_fetch_timeout {
            Some(t) => match tokio::time::timeout(t, arrived).await {
                Ok(r) => r.is_ok(),
                Err(_) => {
                    self.stats.init_fetch_timeout.inc();
                    false
                }
            },
            None => arrived.await.is_ok(),
        }
    }

    /// A slot with a value already (unit tests, static secrets).
    #[cfg(test)]
    pub fn filled(secret: SdsSecret, v: Resolved) -> Arc<Self> {
        let slot = Slot::empty(secret, SdsStats::new(&Store::new(), "test")).0;
        slot.set(v);
        Arc::new(slot)
    }

    fn empty(secret: SdsSecret, stats: SdsStats) -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (alive, gone) = tokio::sync::oneshot::channel();
        let slot = Slot {
            secret,
            value: ArcSwapOption::empty(),
            ready: watch::channel(false).0,
            stats,
            shown: Mutex::default(),
            _alive: alive,
        };
        (slot, gone)
    }
}

/// Where an SDS cluster is and how long to wait for it to connect.
#[derive(Debug, Clone)]
pub struct SdsSource {
    pub target: crate::xds::ads::Target,
    pub connect_timeout: Duration,
}

/// The static clusters an SDS stream can use: those with an IP or pipe endpoint.
pub fn sources(clusters: &[crate::config::ClusterConfig]) -> HashMap<String, SdsSource> {
    clusters
        .iter()
        .filter_map(|c| {
            let e = c.endpoints.first()?;
            let target = match &e.pipe {
                Some(p) => crate::xds::ads::Target::Unix(p.clone()),
                None => crate::xds::ads::Target::Tcp(std::net::SocketAddr::new(
                    e.host.parse().ok()?,
                    e.port,
                )),
            };
            Some((
                c.name.clone(),
                SdsSource {
                    target,
                    connect_timeout: c.connect_timeout,
                },
            ))
        })
        .collect()
}

/// Every secret in use, by source cluster and name.
#[derive(Debug, Default)]
pub struct SecretStore {
    /// The static clusters SDS may stream from.
    sources: HashMap<String, SdsSource>,
    node: envoy_types::pb::envoy::config::core::v3::Node,
    /// Where subscriptions run (the control runtime); none in unit tests.
    runtime: Option<tokio::runtime::Handle>,
    stats: Arc<Store>,
    slots: Mutex<HashMap<(SecretSource, String), Weak<Slot>>>,
    /// `dynamic_resources.ads_config` is set: secrets may come over ADS.
    ads: bool,
    /// Set by the ADS client: called when a secret over ADS gets its first user.
    ads_interest: std::sync::OnceLock<Notify>,
}

/// A callback (for `Debug`, which closures lack).
struct Notify(Box<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Notify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notify")
    }
}

impl SecretStore {
    pub fn new(
        sources: HashMap<String, SdsSource>,
        node: envoy_types::pb::envoy::config::core::v3::Node,
        runtime: tokio::runtime::Handle,
        stats: Arc<Store>,
        ads: bool,
    ) -> Self {
        SecretStore {
            ads,
            sources,
            node,
            runtime: Some(runtime),
            stats,
            slots: Mutex::default(),
            ads_interest: std::sync::OnceLock::new(),
        }
    }

    /// The slot of `secret`, subscribing to it when nothing holds it yet. A source that
    /// is not a static cluster is an error (as Envoy requires for gRPC config sources).
    pub fn slot(&self, secret: &SdsSecret) -> Result<Arc<Slot>, String> {
        let source = match &secret.source {
            SecretSource::Grpc(cluster) => match self.sources.get(cluster) {
                Some(s) => Some(s.clone()),
                None => {
                    return Err(format!(
                        "SDS secret '{}': cluster '{cluster}' is not a static cluster",
                        secret.name
                    ));
                }
            },
            SecretSource::Ads if !self.ads => {
                return Err(format!(
                    "SDS secret '{}': sds_config.ads needs dynamic_resources.ads_config",
                    secret.name
                ));
            }
            SecretSource::File(_) | SecretSource::Ads => None,
        };
        let key = (secret.source.clone(), secret.name.clone());
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = slots.get(&key).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let (slot, gone) = Slot::empty(secret.clone(), SdsStats::new(&self.stats, &secret.name));
        let slot = Arc::new(slot);
        slots.insert(key, Arc::downgrade(&slot));
        if let Some(rt) = &self.runtime {
            match (source, &secret.source) {
                (Some(source), _) => rt.spawn(super::sds::subscribe(
                    Arc::downgrade(&slot),
                    source,
                    self.node.clone(),
                    gone,
                )),
                (None, SecretSource::File(path)) => rt.spawn(super::sds::watch_file(
                    Arc::downgrade(&slot),
                    path.clone(),
                    gone,
                )),
                // Filled by the ADS stream, which subscribes to it once it exists.
                (None, SecretSource::Ads) => {
                    drop(slots);
                    if let Some(Notify(notify)) = self.ads_interest.get() {
                        notify();
                    }
                    return Ok(slot);
                }
                (None, SecretSource::Grpc(_)) => unreachable!("checked above"),
            };
        }
        Ok(slot)
    }

    /// Waits until every secret in use has arrived (each within its
    /// `initial_fetch_timeout`; Istio's `0s` waits as long as it takes): Envoy's
    /// listeners and clusters warm until then, and the server is not ready before.
    /// The secrets wait side by side, as Envoy's do: each fetch's timeout runs from now,
    /// not after the one before it.
    pub async fn arrived(&self) {
        let waiting: Vec<_> = self
            .current()
            .into_iter()
            .filter(|slot| slot.get().is_none())
            .collect();
        futures_util::future::join_all(waiting.iter().map(|slot| slot.wait())).await;
    }

    /// Envoy's `SecretsConfigDump`: the secrets in use that arrived (keys redacted),
    /// and those still awaited as warming.
    pub fn dump(&self) -> envoy_types::pb::envoy::admin::v3::SecretsConfigDump {
        use envoy_types::pb::envoy::admin::v3::{
            SecretsConfigDump, secrets_config_dump::DynamicSecret,
        };
        let mut out = SecretsConfigDump::default();
        for slot in self.current() {
            let shown = slot.shown.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match shown {
                Some(s) => out.dynamic_active_secrets.push(DynamicSecret {
                    name: slot.secret.name.clone(),
                    version_info: s.version,
                    last_updated: Some(crate::admin::config_dump::timestamp(s.at)),
                    secret: Some(crate::xds::resource::pack(&s.secret)),
                    ..Default::default()
                }),
                None => out.dynamic_warming_secrets.push(DynamicSecret {
                    name: slot.secret.name.clone(),
                    ..Default::default()
                }),
            }
        }
        out
    }

    /// The secrets in use that come over ADS (its SDS subscription).
    pub fn ads_names(&self) -> std::collections::BTreeSet<String> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .filter(|((source, _), w)| *source == SecretSource::Ads && w.strong_count() > 0)
            .map(|((_, name), _)| name.clone())
            .collect()
    }

    /// The slot of a secret in use that comes over ADS.
    pub fn ads_slot(&self, name: &str) -> Option<Arc<Slot>> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .get(&(SecretSource::Ads, name.to_owned()))
            .and_then(Weak::upgrade)
    }

    /// The versions of the secrets over ADS that arrived (delta xDS's initial versions).
    pub fn ads_versions(&self) -> HashMap<String, String> {
        self.current()
            .into_iter()
            .filter(|s| s.secret.source == SecretSource::Ads)
            .filter_map(|s| {
                let shown = s.shown.lock().unwrap_or_else(|e| e.into_inner());
                shown
                    .as_ref()
                    .map(|x| (s.secret.name.clone(), x.version.clone()))
            })
            .collect()
    }

    /// Tells the ADS client when a new ADS secret is wanted (it then subscribes).
    pub fn on_ads_interest(&self, notify: impl Fn() + Send + Sync + 'static) {
        let _ = self.ads_interest.set(Notify(Box::new(notify)));
    }

    /// Whether a secret in use has not arrived yet.
    pub fn pending(&self) -> bool {
        self.current().iter().any(|s| s.get().is_none())
    }

    /// The secrets in use, for `/certs` and `/config_dump`.
    pub fn current(&self) -> Vec<Arc<Slot>> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = slots.values().filter_map(Weak::upgrade).collect();
        out.sort_by(|a, b| a.secret.name.cmp(&b.secret.name));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Envoy's secrets time out side by side: two missing ones hold readiness for one
    /// `initial_fetch_timeout`, not two (Istio's "all" bootstrap has two that never
    /// come, and Envoy is ready after 15 s).
    #[tokio::test(start_paused = true)]
    async fn missing_secrets_time_out_together() {
        let store = SecretStore {
            sources: HashMap::new(),
            node: Default::default(),
            runtime: None,
            stats: Store::new(),
            slots: Mutex::default(),
            ads: true,
            ads_interest: std::sync::OnceLock::new(),
        };
        let secret = |name: &str| SdsSecret {
            name: name.into(),
            source: SecretSource::Ads,
            initial_fetch_timeout: Some(Duration::from_secs(15)),
        };
        let _held = [
            store.slot(&secret("a")).unwrap(),
            store.slot(&secret("b")).unwrap(),
        ];
        assert!(store.pending());
        let start = tokio::time::Instant::now();
        store.arrived().await;
        assert_eq!(start.elapsed(), Duration::from_secs(15));
    }
}
