//! The dynamic configuration and how it reaches the data plane. Each resource is
//! decoded, checked and compiled on its own: a bad one is rejected (the response is
//! NACKed with its name and field) while the others apply and the rejected one's last
//! good version keeps serving, as Envoy does. Warming follows Envoy: a cluster is used
//! once its endpoints arrive, a listener takes traffic once its routes arrive, or when
//! `initial_fetch_timeout` passes. The process turns ready after the first CDS (and
//! its EDS), then the first LDS (and its RDS).
use crate::sync::MutexExt;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use envoy_types::pb::{
    envoy::config::{
        cluster::v3::Cluster as ClusterPb, endpoint::v3::ClusterLoadAssignment,
        listener::v3::Listener as ListenerPb, route::v3::RouteConfiguration,
    },
    google::protobuf::Any,
};
use tokio::sync::watch;

use super::{
    Kind, resource,
    stats::{UpdateStats, XdsStats},
};
use crate::{
    config::{ClusterConfig, Discovery, ResourceSource, compile, route_config},
    http::route_match::Routes,
    listener::{self, Listener, ListenerManager},
    readiness::Readiness,
    upstream::{self, cluster::Resolved},
};

/// One response's resources.
#[derive(Debug, Clone)]
pub enum Update {
    /// State of the world: for LDS/CDS the whole set (absent means removed), for
    /// RDS/EDS the named resources sent.
    Full {
        version: String,
        resources: Vec<Any>,
    },
    /// Delta: resources added or changed (name, version, body) and names removed.
    Delta {
        system_version: String,
        resources: Vec<(String, String, Any)>,
        removed: Vec<String>,
    },
}

/// What the client should be subscribed to for one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    Wildcard,
    Names(BTreeSet<String>),
}

/// An EDS assignment: its hosts and overprovisioning factor.
type Hosts = Arc<(Vec<Resolved>, u32)>;

/// A resource as accepted: its version, when, and its body (for change detection and
/// the config dump).
#[derive(Debug, Clone)]
struct Entry<T> {
    version: String,
    updated: SystemTime,
    body: Any,
    value: T,
}

/// The last rejected version of a resource, for the config dump's `error_state`.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub body: Option<Any>,
    pub version: String,
    pub details: String,
    pub at: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Clusters,
    Listeners,
    Done,
}

/// What the dynamic state needs of the running process.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub ctx: listener::Context,
    pub listeners: Arc<ListenerManager>,
    pub readiness: Arc<Readiness>,
}

#[derive(Debug)]
pub struct State {
    rt: Runtime,
    stats: XdsStats,
    lds: Option<ResourceSource>,
    cds: Option<ResourceSource>,
    static_clusters: HashSet<String>,
    static_listeners: HashSet<String>,
    /// Last accepted `version_info` (or delta `system_version_info`) per type.
    versions: HashMap<Kind, String>,
    clusters: BTreeMap<String, Entry<ClusterConfig>>,
    warming_clusters: BTreeMap<String, (Entry<ClusterConfig>, Option<Instant>)>,
    endpoints: BTreeMap<String, Entry<Hosts>>,
    eds_stats: HashMap<String, UpdateStats>,
    listeners: BTreeMap<String, Entry<()>>,
    warming_listeners: BTreeMap<String, (Entry<Arc<Listener>>, Option<Instant>)>,
    routes: BTreeMap<String, Entry<Arc<Routes>>>,
    rds_stats: HashMap<String, UpdateStats>,
    rejected: BTreeMap<(Kind, String), Rejected>,
    phase: Phase,
    phase_deadline: Option<Instant>,
    received: HashSet<Kind>,
}

/// The state behind a lock, and a signal that it changed (subscriptions or deadlines
/// may have moved).
#[derive(Debug)]
pub struct Handle {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Handle {
    pub fn new(
        rt: Runtime,
        lds: Option<ResourceSource>,
        cds: Option<ResourceSource>,
        static_clusters: &[String],
        static_listeners: &[String],
    ) -> Arc<Self> {
        let stats = XdsStats::new(&rt.ctx.store);
        let now = Instant::now();
        let mut state = State {
            phase_deadline: cds
                .as_ref()
                .and_then(|s| s.initial_fetch_timeout())
                .map(|t| now + t),
            rt,
            stats,
            lds,
            cds,
            static_clusters: static_clusters.iter().cloned().collect(),
            static_listeners: static_listeners.iter().cloned().collect(),
            versions: HashMap::new(),
            clusters: BTreeMap::new(),
            warming_clusters: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            eds_stats: HashMap::new(),
            listeners: BTreeMap::new(),
            warming_listeners: BTreeMap::new(),
            routes: BTreeMap::new(),
            rds_stats: HashMap::new(),
            rejected: BTreeMap::new(),
            phase: Phase::Clusters,
            received: HashSet::new(),
        };
        state.advance(now);
        let secrets = state.rt.ctx.clusters.secrets().clone();
        let handle = Arc::new(Handle {
            state: Mutex::new(state),
            changed: watch::channel(0).0,
        });
        // A TLS context that starts waiting for a secret over ADS gets it subscribed.
        let weak = Arc::downgrade(&handle);
        secrets.on_ads_interest(move || {
            if let Some(h) = weak.upgrade() {
                h.changed.send_modify(|g| *g += 1);
            }
        });
        handle
    }

    /// Applies one response; `Err` carries the NACK's `error_detail`.
    pub fn apply(&self, kind: Kind, update: Update, received: Instant) -> Result<(), String> {
        let out = self.state.locked().apply(kind, update, received);
        self.changed.send_modify(|g| *g += 1);
        out
    }

    /// Handles deadlines (warming and initial fetch timeouts) due by `now`.
    pub fn tick(&self, now: Instant) {
        let moved = self.state.locked().tick(now);
        if moved {
            self.changed.send_modify(|g| *g += 1);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.state.locked().next_deadline()
    }

    /// Notified after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn wanted(&self, kind: Kind) -> Option<Wanted> {
        self.state.locked().wanted(kind)
    }

    /// The last accepted version of a type (`""` before the first).
    pub fn version(&self, kind: Kind) -> String {
        let s = self.state.locked();
        s.versions.get(&kind).cloned().unwrap_or_default()
    }

    /// Every resource of a type held now, with its version (delta `initial_resource_versions`).
    pub fn known_versions(&self, kind: Kind) -> HashMap<String, String> {
        self.state.locked().known_versions(kind)
    }

    pub fn set_connected(&self, up: bool) {
        let s = self.state.locked();
        s.stats.connected_state.set(up as i64);
    }

    /// A failed ADS stream (Envoy's `update_failure` of each type it carries).
    pub fn failed(&self) {
        let s = self.state.locked();
        let ads = |src: &Option<ResourceSource>| matches!(src, Some(ResourceSource::Ads { .. }));
        if ads(&s.cds) {
            s.stats.cds.failure.inc();
        }
        if ads(&s.lds) {
            s.stats.lds.failure.inc();
        }
    }

    /// The dynamic parts of `/config_dump`.
    pub fn dump(&self, include_eds: bool) -> Dump {
        self.state.locked().dump(include_eds)
    }
}

/// The dynamic sections of Envoy's config dump, as typed protos.
#[derive(Debug, Default)]
pub struct Dump {
    pub clusters: envoy_types::pb::envoy::admin::v3::ClustersConfigDump,
    pub listeners: envoy_types::pb::envoy::admin::v3::ListenersConfigDump,
    pub routes: envoy_types::pb::envoy::admin::v3::RoutesConfigDump,
    pub endpoints: Option<envoy_types::pb::envoy::admin::v3::EndpointsConfigDump>,
}

/// A resource that passed validation, ready to apply.
struct Prepared<T> {
    name: String,
    version: String,
    any: Any,
    value: T,
}

/// The name a resource is known by.
trait Named {
    fn name(&self) -> &str;
}

impl Named for ClusterPb {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for ListenerPb {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for RouteConfiguration {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for ClusterLoadAssignment {
    fn name(&self) -> &str {
        &self.cluster_name
    }
}

/// A compile error's path made relative to the resource (`.type: …` → `type: …`).
fn relative(e: String) -> String {
    match e.strip_prefix('.') {
        Some(rest) => rest.to_owned(),
        None => e,
    }
}

impl State {
    fn apply(&mut self, kind: Kind, update: Update, received: Instant) -> Result<(), String> {
        if let Some(s) = self.stats.of(kind) {
            s.attempt.inc();
        }
        let version = match &update {
            Update::Full { version, .. } => version.clone(),
            Update::Delta { system_version, .. } => system_version.clone(),
        };
        let (items, removed) = match update {
            Update::Full { resources, .. } => (
                resources
                    .into_iter()
                    .map(|a| (None, version.clone(), a))
                    .collect(),
                None,
            ),
            Update::Delta {
                resources, removed, ..
            } => (
                resources
                    .into_iter()
                    .map(|(n, v, a)| (Some(n), v, a))
                    .collect::<Vec<_>>(),
                Some(removed),
            ),
        };
        let count = items.len();
        let out = match kind {
            Kind::Cluster => self.apply_clusters(items, removed, received),
            Kind::Endpoint => self.apply_endpoints(items, removed),
            Kind::Listener => self.apply_listeners(items, removed, received),
            Kind::Route => self.apply_routes(items, removed),
            Kind::Secret => self.apply_secrets(items, &version),
        };
        self.received.insert(kind);
        tracing::debug!(
            "{} version {version:?}: {count} resources {} in {:?}",
            kind.short(),
            if out.is_ok() { "applied" } else { "rejected" },
            received.elapsed()
        );
        if let Some(s) = self.stats.of(kind) {
            match &out {
                Ok(()) => s.accepted(&version),
                Err(_) => s.rejected.inc(),
            }
            s.duration.record(received.elapsed());
        }
        if out.is_ok() {
            self.versions.insert(kind, version);
        }
        self.advance(Instant::now());
        out
    }

    fn known_clusters(&self) -> HashSet<String> {
        self.static_clusters
            .iter()
            .chain(self.clusters.keys())
            .chain(self.warming_clusters.keys())
            .cloned()
            .collect()
    }

    fn reject(&mut self, kind: Kind, name: &str, body: Option<&Any>, version: &str, e: &str) {
        self.rejected.insert(
            (kind, name.to_owned()),
            Rejected {
                body: body.cloned(),
                version: version.to_owned(),
                details: e.to_owned(),
                at: SystemTime::now(),
            },
        );
    }

    // ---- clusters ----

    fn apply_clusters(
        &mut self,
        items: Vec<(Option<String>, String, Any)>,
        removed: Option<Vec<String>>,
        received: Instant,
    ) -> Result<(), String> {
        let prepared = self.validate(Kind::Cluster, items, |_, c: ClusterPb| {
            compile::cluster(&c, "").map_err(relative)
        })?;
        let mut errors = Vec::new();
        let mut activate = Vec::new();
        let seen: HashSet<String> = prepared.iter().map(|p| p.name.clone()).collect();
        for Prepared {
            name,
            version,
            any,
            value: config,
        } in prepared
        {
            if self.static_clusters.contains(&name) {
                let e = "a static cluster of this name exists".to_owned();
                errors.push(format!("cluster '{name}': {e}"));
                self.reject(Kind::Cluster, &name, Some(&any), &version, &e);
                continue;
            }
            let unchanged = match self.warming_clusters.get(&name) {
                Some((e, _)) => e.body == any,
                None => self.clusters.get(&name).is_some_and(|e| e.body == any),
            };
            if unchanged {
                continue;
            }
            self.rejected.remove(&(Kind::Cluster, name.clone()));
            let entry = Entry {
                version,
                updated: SystemTime::now(),
                body: any,
                value: config,
            };
            match &entry.value.eds {
                Some(eds) if !self.endpoints.contains_key(&eds.service_name) => {
                    let deadline = eds.initial_fetch_timeout.map(|t| received + t);
                    self.warming_clusters.insert(name, (entry, deadline));
                }
                _ => {
                    self.warming_clusters.remove(&name);
                    activate.push(entry);
                }
            }
        }
        let removes =
            removed.unwrap_or_else(|| absent(&self.clusters, &self.warming_clusters, &seen));
        self.activate_clusters(activate, &removes);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Decodes, checks and compiles every resource of a response. Any failure rejects
    /// the whole response with nothing applied, as Envoy's validation of a response
    /// does; failures while applying (a socket that cannot be bound) are per resource.
    fn validate<P, T>(
        &mut self,
        kind: Kind,
        items: Vec<(Option<String>, String, Any)>,
        compile: impl Fn(&State, P) -> Result<T, String>,
    ) -> Result<Vec<Prepared<T>>, String>
    where
        P: prost::Message + prost::Name + Default + Named,
    {
        let mut out = Vec::with_capacity(items.len());
        let mut errors = Vec::new();
        let mut seen = HashSet::new();
        for (hint, version, any) in items {
            let any = match resource::unwrap(any) {
                Ok(a) => a,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let typed: P = match resource::decode_typed(kind, &any) {
                Ok(p) => p,
                Err(e) => {
                    let name = hint.unwrap_or_default();
                    errors.push(format!("{} '{name}': {e}", kind.noun()));
                    continue;
                }
            };
            let name = typed.name().to_owned();
            let checked = if name.is_empty() {
                Err("name: required".to_owned())
            } else if !seen.insert(name.clone()) {
                Err("given twice in one response".to_owned())
            } else {
                resource::check(&any, typed).and_then(|typed| compile(self, typed))
            };
            match checked {
                Ok(value) => out.push(Prepared {
                    name,
                    version,
                    any,
                    value,
                }),
                Err(e) => {
                    errors.push(format!("{} '{name}': {e}", kind.noun()));
                    self.reject(kind, &name, Some(&any), &version, &e);
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors.join("; "))
        }
    }

    /// Publishes `entries` (and removes `removes`) in one swap of the cluster set.
    fn activate_clusters(&mut self, entries: Vec<Entry<ClusterConfig>>, removes: &[String]) {
        let mut gone = Vec::new();
        for n in removes {
            self.warming_clusters.remove(n);
            if self.clusters.remove(n).is_some() {
                gone.push(n.clone());
                self.stats.cluster_removed.inc();
            }
            self.eds_stats.remove(n);
        }
        if entries.is_empty() && gone.is_empty() {
            self.update_cluster_gauges();
            return;
        }
        for e in &entries {
            if self.clusters.contains_key(&e.value.name) {
                self.stats.cluster_modified.inc();
            } else {
                self.stats.cluster_added.inc();
            }
        }
        let configs = entries.iter().map(|e| e.value.clone()).collect();
        let built = self
            .rt
            .ctx
            .clusters
            .apply(configs, &gone, &self.rt.ctx.store);
        for c in &built {
            if let Some(eds) = &c.config.eds
                && let Some(hosts) = self.endpoints.get(&eds.service_name)
            {
                c.set_assignment(&hosts.value.0, hosts.value.1);
            }
        }
        for e in entries {
            self.clusters.insert(e.value.name.clone(), e);
        }
        if !removes.is_empty() {
            // Endpoints no cluster names any more go with the last one that did, as
            // Envoy drops an EDS subscription's resources; a cluster added again waits
            // for its endpoints anew.
            let wanted = self.eds_names();
            self.endpoints.retain(|name, _| wanted.contains(name));
        }
        if !built.is_empty() {
            tokio::spawn(async move { upstream::manager::start(&built).await });
        }
        self.update_cluster_gauges();
    }

    fn update_cluster_gauges(&self) {
        self.stats
            .warming_clusters
            .set(self.warming_clusters.len() as i64);
        self.stats
            .active_clusters
            .set(self.rt.ctx.clusters.len() as i64);
    }

    // ---- endpoints ----

    fn eds_names(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .map(|e| &e.value)
            .chain(self.warming_clusters.values().map(|(e, _)| &e.value))
            .filter_map(|c| c.eds.as_ref().map(|e| e.service_name.clone()))
            .collect()
    }

    fn apply_endpoints(
        &mut self,
        items: Vec<(Option<String>, String, Any)>,
        removed: Option<Vec<String>>,
    ) -> Result<(), String> {
        let wanted = self.eds_names();
        let prepared =
            match self.validate(Kind::Endpoint, items, |_, cla: ClusterLoadAssignment| {
                let eps = compile::endpoints(&cla, "", Discovery::Eds).map_err(relative)?;
                let overprovisioning =
                    compile::overprovisioning_factor(&cla, "").map_err(relative)?;
                let hosts = eps
                    .into_iter()
                    .filter_map(|e| {
                        let ip = e.host.parse().ok()?;
                        Some(Resolved {
                            addr: SocketAddr::new(ip, e.port),
                            hostname: e.hostname.map(Arc::from),
                            attrs: e.attrs,
                        })
                    })
                    .collect();
                Ok(Hosts::new((hosts, overprovisioning)))
            }) {
                Ok(p) => p,
                Err(e) => {
                    self.eds_rejected_all();
                    return Err(e);
                }
            };
        let mut changed = Vec::new();
        for Prepared {
            name,
            version,
            any,
            value: hosts,
        } in prepared
        {
            if !wanted.contains(&name) {
                tracing::debug!("ignoring ClusterLoadAssignment '{name}': not subscribed");
                continue;
            }
            if self.endpoints.get(&name).is_some_and(|e| e.body == any) {
                continue;
            }
            self.endpoints.insert(
                name.clone(),
                Entry {
                    version,
                    updated: SystemTime::now(),
                    body: any,
                    value: hosts,
                },
            );
            changed.push(name);
        }
        for name in removed.unwrap_or_default() {
            if self.endpoints.remove(&name).is_some() {
                changed.push(name);
            }
        }
        self.endpoints_changed(&changed);
        Ok(())
    }

    fn eds_stats(&mut self, cluster: &str) -> &UpdateStats {
        let store = &self.rt.ctx.store;
        self.eds_stats
            .entry(cluster.to_owned())
            .or_insert_with(|| UpdateStats::eds(store, cluster))
    }

    /// A rejected EDS response counts in every EDS cluster's `update_rejected`.
    fn eds_rejected_all(&mut self) {
        let names: Vec<String> = self
            .clusters
            .values()
            .map(|e| &e.value)
            .chain(self.warming_clusters.values().map(|(e, _)| &e.value))
            .filter(|c| c.eds.is_some())
            .map(|c| c.name.clone())
            .collect();
        for n in names {
            self.eds_stats(&n).rejected.inc();
        }
    }

    /// New endpoints for `services`: active clusters take them, warming ones are
    /// activated (all in one swap of the cluster set).
    fn endpoints_changed(&mut self, services: &[String]) {
        let mut by_service: HashMap<&str, Vec<String>> = HashMap::new();
        for c in self
            .clusters
            .values()
            .map(|e| &e.value)
            .chain(self.warming_clusters.values().map(|(e, _)| &e.value))
        {
            if let Some(eds) = &c.eds {
                by_service
                    .entry(eds.service_name.as_str())
                    .or_default()
                    .push(c.name.clone());
            }
        }
        let mut work = Vec::new();
        for service in services {
            let (hosts, version) = self
                .endpoints
                .get(service)
                .map(|e| (e.value.clone(), e.version.clone()))
                .unwrap_or_else(|| (Hosts::new((Vec::new(), 140)), String::new()));
            for name in by_service.get(service.as_str()).into_iter().flatten() {
                work.push((name.clone(), hosts.clone(), version.clone()));
            }
        }
        let mut ready = Vec::new();
        for (name, hosts, version) in work {
            if let Some((e, _)) = self.warming_clusters.remove(&name) {
                ready.push(e);
            } else if let Some(c) = self.rt.ctx.clusters.get(&name) {
                c.set_assignment(&hosts.0, hosts.1);
            }
            self.eds_stats(&name).accepted(&version);
        }
        self.activate_clusters(ready, &[]);
    }

    // ---- listeners ----

    fn apply_listeners(
        &mut self,
        items: Vec<(Option<String>, String, Any)>,
        removed: Option<Vec<String>>,
        received: Instant,
    ) -> Result<(), String> {
        let known = self.known_clusters();
        let prepared = self.validate(Kind::Listener, items, |me, proto: ListenerPb| {
            let config = compile::listener(&proto, "", &known).map_err(relative)?;
            Listener::new(config, &me.rt.ctx).map(Arc::new)
        });
        let prepared = prepared.inspect_err(|_| self.stats.listener_create_failure.inc())?;
        let mut errors = Vec::new();
        let seen: HashSet<String> = prepared.iter().map(|p| p.name.clone()).collect();
        // Removals first, as Envoy's LDS does: a listener may take over the address of
        // one the same response removes.
        let removes =
            removed.unwrap_or_else(|| absent(&self.listeners, &self.warming_listeners, &seen));
        for n in removes {
            self.warming_listeners.remove(&n);
            if self.listeners.remove(&n).is_some() {
                self.rt.listeners.remove(&n);
                self.stats.listener_removed.inc();
            }
            self.rejected.remove(&(Kind::Listener, n));
        }
        for Prepared {
            name,
            version,
            any,
            value: l,
        } in prepared
        {
            if self.static_listeners.contains(&name) {
                let e = "a static listener of this name exists".to_owned();
                errors.push(format!("listener '{name}': {e}"));
                self.reject(Kind::Listener, &name, Some(&any), &version, &e);
                continue;
            }
            let unchanged = match self.warming_listeners.get(&name) {
                Some((e, _)) => e.body == any,
                None => self.listeners.get(&name).is_some_and(|e| e.body == any),
            };
            if unchanged {
                continue;
            }
            let entry = Entry {
                version,
                updated: SystemTime::now(),
                body: any,
                value: l,
            };
            self.fill_slots(&entry.value);
            if entry.value.route_slots().all(|s| s.is_filled()) {
                self.warming_listeners.remove(&name);
                if let Err(e) = self.start_listener(entry) {
                    errors.push(format!("listener '{name}': {e}"));
                }
            } else {
                let deadline = rds_timeout(&entry.value).map(|t| received + t);
                self.warming_listeners.insert(name, (entry, deadline));
            }
        }
        self.prune_routes();
        self.update_listener_gauges();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Puts a warm listener into service (bind, or take over its old sockets).
    fn start_listener(&mut self, entry: Entry<Arc<Listener>>) -> Result<(), String> {
        let name = entry.value.config.name.clone();
        let version = entry.version.clone();
        let body = entry.body.clone();
        match self.rt.listeners.upsert(entry.value.clone()) {
            Ok(how) => {
                if how == listener::manager::Upserted::Added {
                    self.stats.listener_added.inc();
                } else {
                    self.stats.listener_modified.inc();
                }
                self.rejected.remove(&(Kind::Listener, name.clone()));
                self.listeners.insert(
                    name,
                    Entry {
                        version: entry.version,
                        updated: entry.updated,
                        body: entry.body,
                        value: (),
                    },
                );
                Ok(())
            }
            Err(e) => {
                self.stats.listener_create_failure.inc();
                self.reject(Kind::Listener, &name, Some(&body), &version, &e);
                Err(e)
            }
        }
    }

    /// Fills a new listener's empty RDS slots from routes already received.
    fn fill_slots(&self, l: &Listener) {
        for slot in l.route_slots() {
            if !slot.is_filled()
                && let Some(e) = self.routes.get(&slot.name)
            {
                slot.store(Some(e.value.clone()));
            }
        }
    }

    fn update_listener_gauges(&self) {
        self.stats
            .listeners_warming
            .set(self.warming_listeners.len() as i64);
        self.stats
            .listeners_active
            .set(self.rt.listeners.len() as i64);
    }

    /// Starts the warming listeners whose routes have all arrived.
    fn promote_listeners(&mut self) {
        let warm: Vec<String> = self
            .warming_listeners
            .iter()
            .filter(|(_, (e, _))| e.value.route_slots().all(|s| s.is_filled()))
            .map(|(n, _)| n.clone())
            .collect();
        for n in warm {
            if let Some((e, _)) = self.warming_listeners.remove(&n) {
                let _ = self.start_listener(e);
            }
        }
        self.update_listener_gauges();
    }

    // ---- routes ----

    /// Forgets route configurations no listener uses any more.
    fn prune_routes(&mut self) {
        let names: HashSet<String> = self.rt.ctx.routes.prune().into_iter().collect();
        self.routes.retain(|n, _| names.contains(n));
        self.rds_stats.retain(|n, _| names.contains(n));
    }

    fn apply_routes(
        &mut self,
        items: Vec<(Option<String>, String, Any)>,
        removed: Option<Vec<String>>,
    ) -> Result<(), String> {
        let known = self.known_clusters();
        let store = self.rt.ctx.store.clone();
        let prepared = match self.validate(Kind::Route, items, |_, rc: RouteConfiguration| {
            compile_routes(&rc, &known, &store).map(Arc::new)
        }) {
            Ok(p) => p,
            Err(e) => {
                for name in self.rt.ctx.routes.prune() {
                    self.rds_rejected(&name);
                }
                return Err(e);
            }
        };
        for Prepared {
            name,
            version,
            any,
            value: routes,
        } in prepared
        {
            let Some(slot) = self.rt.ctx.routes.find(&name) else {
                tracing::debug!("ignoring RouteConfiguration '{name}': not subscribed");
                continue;
            };
            if self.routes.get(&name).is_some_and(|e| e.body == any) {
                continue;
            }
            slot.store(Some(routes.clone()));
            self.rds_stats(&name).accepted(&version);
            self.routes.insert(
                name,
                Entry {
                    version,
                    updated: SystemTime::now(),
                    body: any,
                    value: routes,
                },
            );
        }
        for name in removed.unwrap_or_default() {
            if self.routes.remove(&name).is_some()
                && let Some(slot) = self.rt.ctx.routes.find(&name)
            {
                slot.store(None);
            }
        }
        self.promote_listeners();
        Ok(())
    }

    fn rds_stats(&mut self, name: &str) -> &UpdateStats {
        let store = &self.rt.ctx.store;
        let prefix = self
            .rt
            .ctx
            .routes
            .find(name)
            .map(|s| s.hcm_prefix.clone())
            .unwrap_or_default();
        self.rds_stats
            .entry(name.to_owned())
            .or_insert_with(|| UpdateStats::rds(store, &prefix, name))
    }

    fn rds_rejected(&mut self, name: &str) {
        if self.rt.ctx.routes.find(name).is_some() {
            self.rds_stats(name).rejected.inc();
        }
    }

    // ---- secrets (SDS over ADS) ----

    /// Each secret a TLS context waits for over ADS takes its value from the response;
    /// one that fails its checks is rejected (NACK) and keeps its last value.
    fn apply_secrets(
        &mut self,
        items: Vec<(Option<String>, String, Any)>,
        version: &str,
    ) -> Result<(), String> {
        let store = self.rt.ctx.clusters.secrets().clone();
        let mut errors = Vec::new();
        for (_, v, any) in items {
            if let Err(e) =
                crate::tls::sds::apply_ads(&store, any, if v.is_empty() { version } else { &v })
            {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    // ---- subscriptions, deadlines, readiness ----

    fn wanted(&mut self, kind: Kind) -> Option<Wanted> {
        let ads = |s: &Option<ResourceSource>| matches!(s, Some(ResourceSource::Ads { .. }));
        match kind {
            Kind::Cluster => ads(&self.cds).then_some(Wanted::Wildcard),
            Kind::Listener => {
                (ads(&self.lds) && self.phase != Phase::Clusters).then_some(Wanted::Wildcard)
            }
            Kind::Endpoint => Some(Wanted::Names(self.eds_names())),
            Kind::Route => Some(Wanted::Names(
                self.rt.ctx.routes.prune().into_iter().collect(),
            )),
            Kind::Secret => Some(Wanted::Names(self.rt.ctx.clusters.secrets().ads_names())),
        }
    }

    fn known_versions(&self, kind: Kind) -> HashMap<String, String> {
        fn of<T>(m: &BTreeMap<String, Entry<T>>) -> HashMap<String, String> {
            m.iter()
                .map(|(n, e)| (n.clone(), e.version.clone()))
                .collect()
        }
        match kind {
            Kind::Cluster => {
                let mut v = of(&self.clusters);
                for (n, (e, _)) in &self.warming_clusters {
                    v.insert(n.clone(), e.version.clone());
                }
                v
            }
            Kind::Endpoint => of(&self.endpoints),
            Kind::Listener => {
                let mut v = of(&self.listeners);
                for (n, (e, _)) in &self.warming_listeners {
                    v.insert(n.clone(), e.version.clone());
                }
                v
            }
            Kind::Route => of(&self.routes),
            Kind::Secret => self.rt.ctx.clusters.secrets().ads_versions(),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Done => None,
            _ => self.phase_deadline,
        };
        self.warming_clusters
            .values()
            .filter_map(|(_, d)| *d)
            .chain(self.warming_listeners.values().filter_map(|(_, d)| *d))
            .chain(phase)
            .min()
    }

    fn tick(&mut self, now: Instant) -> bool {
        let due: Vec<String> = self
            .warming_clusters
            .iter()
            .filter(|(_, (_, d))| d.is_some_and(|d| d <= now))
            .map(|(n, _)| n.clone())
            .collect();
        let mut moved = !due.is_empty();
        let entries: Vec<_> = due
            .iter()
            .filter_map(|n| self.warming_clusters.remove(n).map(|(e, _)| e))
            .collect();
        for e in &entries {
            tracing::warn!(
                "cluster '{}': no endpoints within initial_fetch_timeout; using it without",
                e.value.name
            );
        }
        self.activate_clusters(entries, &[]);
        let due: Vec<String> = self
            .warming_listeners
            .iter()
            .filter(|(_, (_, d))| d.is_some_and(|d| d <= now))
            .map(|(n, _)| n.clone())
            .collect();
        moved |= !due.is_empty();
        for n in due {
            if let Some((e, _)) = self.warming_listeners.remove(&n) {
                tracing::warn!("listener '{n}': routes not received within initial_fetch_timeout");
                let _ = self.start_listener(e);
            }
        }
        self.update_listener_gauges();
        let before = self.phase;
        self.advance(now);
        moved || before != self.phase
    }

    /// Moves initialization on: clusters (CDS received or timed out, none warming),
    /// then listeners (likewise), then ready.
    fn advance(&mut self, now: Instant) {
        loop {
            let (source, kind, warming) = match self.phase {
                Phase::Clusters => (&self.cds, Kind::Cluster, !self.warming_clusters.is_empty()),
                Phase::Listeners => (
                    &self.lds,
                    Kind::Listener,
                    !self.warming_listeners.is_empty(),
                ),
                Phase::Done => return,
            };
            let waiting = source.is_some()
                && !self.received.contains(&kind)
                && self.phase_deadline.is_none_or(|d| now < d);
            if source.is_some() && !self.received.contains(&kind) && !waiting {
                tracing::warn!("no {} within initial_fetch_timeout", kind.short());
                if let Some(s) = self.stats.of(kind) {
                    s.init_fetch_timeout.inc();
                }
            }
            if waiting || warming {
                return;
            }
            if self.phase == Phase::Clusters {
                self.phase = Phase::Listeners;
                self.phase_deadline = self
                    .lds
                    .as_ref()
                    .and_then(|s| s.initial_fetch_timeout())
                    .map(|t| now + t);
            } else {
                self.phase = Phase::Done;
                tracing::info!("initial configuration applied");
                // Ready once the TLS secrets that configuration uses are in too.
                let secrets = self.rt.ctx.clusters.secrets().clone();
                if !secrets.pending() {
                    self.rt.readiness.set_initialized();
                    return;
                }
                let readiness = self.rt.readiness.clone();
                tokio::spawn(async move {
                    secrets.arrived().await;
                    readiness.set_initialized();
                });
            }
        }
    }

    // ---- config dump ----

    fn dump(&self, include_eds: bool) -> Dump {
        use envoy_types::pb::envoy::admin::v3::{
            ClientResourceStatus, ClustersConfigDump, EndpointsConfigDump, ListenersConfigDump,
            RoutesConfigDump, UpdateFailureState,
            clusters_config_dump::DynamicCluster,
            endpoints_config_dump::DynamicEndpointConfig,
            listeners_config_dump::{DynamicListener, DynamicListenerState},
            routes_config_dump::DynamicRouteConfig,
        };
        let ts = |t: SystemTime| Some(crate::admin::config_dump::timestamp(t));
        let failure = |kind: Kind, name: &str| {
            self.rejected
                .get(&(kind, name.to_owned()))
                .map(|r| UpdateFailureState {
                    failed_configuration: r.body.clone(),
                    last_update_attempt: ts(r.at),
                    details: r.details.clone(),
                    version_info: r.version.clone(),
                })
        };
        let cluster = |e: &Entry<ClusterConfig>, status: ClientResourceStatus| DynamicCluster {
            version_info: e.version.clone(),
            cluster: Some(e.body.clone()),
            last_updated: ts(e.updated),
            error_state: failure(Kind::Cluster, &e.value.name),
            client_status: status as i32,
        };
        let clusters = ClustersConfigDump {
            version_info: self
                .versions
                .get(&Kind::Cluster)
                .cloned()
                .unwrap_or_default(),
            dynamic_active_clusters: self
                .clusters
                .values()
                .map(|e| cluster(e, ClientResourceStatus::Acked))
                .collect(),
            dynamic_warming_clusters: self
                .warming_clusters
                .values()
                .map(|(e, _)| cluster(e, ClientResourceStatus::Requested))
                .collect(),
            ..Default::default()
        };
        let state = |version: &str, body: &Any, at: SystemTime| DynamicListenerState {
            version_info: version.to_owned(),
            listener: Some(body.clone()),
            last_updated: ts(at),
        };
        let mut names: BTreeSet<&String> = self.listeners.keys().collect();
        names.extend(self.warming_listeners.keys());
        names.extend(
            self.rejected
                .keys()
                .filter(|(k, _)| *k == Kind::Listener)
                .map(|(_, n)| n),
        );
        let listeners = ListenersConfigDump {
            version_info: self
                .versions
                .get(&Kind::Listener)
                .cloned()
                .unwrap_or_default(),
            dynamic_listeners: names
                .into_iter()
                .map(|n| DynamicListener {
                    name: n.clone(),
                    active_state: self
                        .listeners
                        .get(n)
                        .map(|e| state(&e.version, &e.body, e.updated)),
                    warming_state: self
                        .warming_listeners
                        .get(n)
                        .map(|(e, _)| state(&e.version, &e.body, e.updated)),
                    draining_state: None,
                    error_state: failure(Kind::Listener, n),
                    client_status: if self.listeners.contains_key(n) {
                        ClientResourceStatus::Acked as i32
                    } else {
                        ClientResourceStatus::Nacked as i32
                    },
                })
                .collect(),
            ..Default::default()
        };
        let routes = RoutesConfigDump {
            dynamic_route_configs: self
                .routes
                .values()
                .map(|e| DynamicRouteConfig {
                    version_info: e.version.clone(),
                    route_config: Some(e.body.clone()),
                    last_updated: ts(e.updated),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let endpoints = include_eds.then(|| EndpointsConfigDump {
            dynamic_endpoint_configs: self
                .endpoints
                .values()
                .map(|e| DynamicEndpointConfig {
                    version_info: e.version.clone(),
                    endpoint_config: Some(e.body.clone()),
                    last_updated: ts(e.updated),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        Dump {
            clusters,
            listeners,
            routes,
            endpoints,
        }
    }
}

/// The names held (active or warming) that a state-of-the-world response left out:
/// removed.
fn absent<A, B>(
    active: &BTreeMap<String, A>,
    warming: &BTreeMap<String, B>,
    seen: &HashSet<String>,
) -> Vec<String> {
    active
        .keys()
        .chain(warming.keys())
        .filter(|n| !seen.contains(*n))
        .cloned()
        .collect()
}

/// Compiles an RDS route configuration (`validate_clusters` defaults to false).
fn compile_routes(
    rc: &RouteConfiguration,
    known: &HashSet<String>,
    store: &Arc<crate::telemetry::stats::Store>,
) -> Result<Routes, String> {
    route_config::route_table(rc, "", known, false)
        .map_err(relative)
        .and_then(|t| Routes::new(&t, store))
}

/// The longest `initial_fetch_timeout` of a listener's RDS sources (`None`: wait).
fn rds_timeout(l: &Listener) -> Option<Duration> {
    use crate::config::{NetworkFilter, RouteSource};
    let mut out = Some(Duration::ZERO);
    for c in l.config.filter_chains.iter().chain(&l.config.default_chain) {
        if let NetworkFilter::Http(h) = &c.filter
            && let RouteSource::Rds {
                initial_fetch_timeout,
                ..
            } = &h.routes
        {
            out = match (out, initial_fetch_timeout) {
                (Some(a), Some(b)) => Some(a.max(*b)),
                _ => None,
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        drain, http::route_slot::RouteSlots, telemetry::access_log::Sinks, telemetry::stats::Store,
        upstream::ClusterManager, xds::resource::pack,
    };

    fn handle(timeout: Duration) -> (Arc<Handle>, Arc<Readiness>, Arc<ClusterManager>) {
        let store = Store::new();
        let (_trigger, watch) = drain::channel();
        let clusters = Arc::new(ClusterManager::default());
        let readiness = Arc::new(Readiness::default());
        let ctx = listener::Context {
            clusters: clusters.clone(),
            routes: Arc::new(RouteSlots::default()),
            store: store.clone(),
            sinks: Arc::new(Sinks::new(tokio::runtime::Handle::current(), store.clone())),
            tracers: Arc::new(crate::telemetry::tracing::Tracers::new(
                tokio::runtime::Handle::current(),
                clusters.clone(),
                store,
                None,
                Default::default(),
                |_| None,
            )),
            drain: watch.clone(),
            conn_limit: Default::default(),
        };
        let rt = Runtime {
            ctx,
            listeners: Arc::new(ListenerManager::new(
                Arc::new([tokio::runtime::Handle::current()]),
                watch,
                clusters.own_addresses().clone(),
            )),
            readiness: readiness.clone(),
        };
        let ads = Some(ResourceSource::Ads {
            initial_fetch_timeout: Some(timeout),
        });
        let h = Handle::new(rt, ads.clone(), ads, &[], &[]);
        (h, readiness, clusters)
    }

    fn full(resources: Vec<Any>) -> Update {
        Update::Full {
            version: "1".into(),
            resources,
        }
    }

    fn eds_cluster(name: &str) -> Any {
        let mut c = ClusterPb {
            name: name.into(),
            ..Default::default()
        };
        c.cluster_discovery_type = Some(
            envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(
                envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::Eds as i32,
            ),
        );
        c.eds_cluster_config = Some(
            envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig {
                eds_config: Some(envoy_types::pb::envoy::config::core::v3::ConfigSource {
                    config_source_specifier: Some(
                        envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier::Ads(
                            Default::default(),
                        ),
                    ),
                    ..Default::default()
                }),
                service_name: String::new(),
            },
        );
        pack(&c)
    }

    fn cla(name: &str, port: u32) -> Any {
        use envoy_types::pb::envoy::config::{
            core::v3::{Address, SocketAddress, address, socket_address::PortSpecifier},
            endpoint::v3::{Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint},
        };
        pack(&ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                address: "10.0.0.1".into(),
                                port_specifier: Some(PortSpecifier::PortValue(port)),
                                ..Default::default()
                            })),
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn ready_after_cds_then_lds_or_their_initial_fetch_timeouts() {
        let (h, ready, _) = handle(Duration::from_secs(15));
        assert!(!ready.is_ready());
        assert_eq!(h.wanted(Kind::Cluster), Some(Wanted::Wildcard));
        assert_eq!(h.wanted(Kind::Listener), None, "LDS waits for CDS");
        // No CDS within the timeout: on to LDS.
        let deadline = h.next_deadline().unwrap();
        h.tick(deadline);
        assert_eq!(h.wanted(Kind::Listener), Some(Wanted::Wildcard));
        assert!(!ready.is_ready());
        h.apply(Kind::Listener, full(vec![]), Instant::now())
            .unwrap();
        assert!(ready.is_ready());
    }

    #[tokio::test]
    async fn an_eds_cluster_warms_until_its_endpoints_arrive_or_time_out() {
        let (h, ready, clusters) = handle(Duration::from_secs(15));
        h.apply(
            Kind::Cluster,
            full(vec![eds_cluster("a"), eds_cluster("b")]),
            Instant::now(),
        )
        .unwrap();
        assert!(
            clusters.get("a").is_none(),
            "warming clusters take no traffic"
        );
        assert_eq!(
            h.wanted(Kind::Endpoint),
            Some(Wanted::Names(["a".to_owned(), "b".to_owned()].into()))
        );
        assert_eq!(
            h.wanted(Kind::Listener),
            None,
            "LDS waits for warm clusters"
        );
        h.apply(Kind::Endpoint, full(vec![cla("a", 80)]), Instant::now())
            .unwrap();
        assert_eq!(clusters.get("a").unwrap().hosts().len(), 1);
        assert!(clusters.get("b").is_none());
        // b's endpoints never come: after the timeout it serves without hosts.
        assert!(h.next_deadline().is_some());
        h.tick(Instant::now() + Duration::from_secs(16));
        assert_eq!(clusters.get("b").unwrap().hosts().len(), 0);
        assert_eq!(h.wanted(Kind::Listener), Some(Wanted::Wildcard));
        // New endpoints reach the running cluster, keeping the cluster object.
        let a = clusters.get("a").unwrap();
        h.apply(
            Kind::Endpoint,
            full(vec![cla("a", 81), cla("b", 80)]),
            Instant::now(),
        )
        .unwrap();
        assert!(Arc::ptr_eq(&a, &clusters.get("a").unwrap()));
        assert_eq!(a.hosts()[0].addr.port(), 81);
        assert!(!ready.is_ready());
    }

    #[tokio::test]
    async fn a_removed_clusters_endpoints_go_with_it() {
        let (h, _, clusters) = handle(Duration::from_secs(15));
        let both = || full(vec![eds_cluster("a"), eds_cluster("b")]);
        h.apply(Kind::Cluster, both(), Instant::now()).unwrap();
        h.apply(
            Kind::Endpoint,
            full(vec![cla("a", 80), cla("b", 80)]),
            Instant::now(),
        )
        .unwrap();
        h.apply(Kind::Cluster, full(vec![eds_cluster("b")]), Instant::now())
            .unwrap();
        assert!(clusters.get("a").is_none());
        assert_eq!(
            clusters.get("b").unwrap().hosts().len(),
            1,
            "b keeps its own"
        );
        assert_eq!(h.state.locked().endpoints.keys().collect::<Vec<_>>(), ["b"]);
        // Added again, a waits for its endpoints rather than reusing stale ones.
        h.apply(Kind::Cluster, both(), Instant::now()).unwrap();
        assert!(clusters.get("a").is_none(), "warming again");
        h.apply(Kind::Endpoint, full(vec![cla("a", 81)]), Instant::now())
            .unwrap();
        assert_eq!(clusters.get("a").unwrap().hosts()[0].addr.port(), 81);
    }

    #[tokio::test]
    async fn a_bad_resource_rejects_the_whole_response_and_keeps_the_last_good() {
        let (h, _, clusters) = handle(Duration::from_secs(15));
        h.apply(Kind::Endpoint, full(vec![]), Instant::now())
            .unwrap();
        let good = pack(&ClusterPb {
            name: "good".into(),
            ..Default::default()
        });
        h.apply(Kind::Cluster, full(vec![good.clone()]), Instant::now())
            .unwrap();
        let bad = pack(&ClusterPb {
            name: "bad".into(),
            close_connections_on_host_health_failure: true,
            ..Default::default()
        });
        let err = h
            .apply(
                Kind::Cluster,
                Update::Full {
                    version: "2".into(),
                    resources: vec![bad],
                },
                Instant::now(),
            )
            .unwrap_err();
        assert_eq!(
            err,
            "cluster 'bad': close_connections_on_host_health_failure: not supported"
        );
        assert!(
            clusters.get("good").is_some(),
            "nothing of a rejected response applies"
        );
        assert_eq!(h.version(Kind::Cluster), "1");
        // Delta: removal by name.
        h.apply(
            Kind::Cluster,
            Update::Delta {
                system_version: "3".into(),
                resources: vec![],
                removed: vec!["good".into()],
            },
            Instant::now(),
        )
        .unwrap();
        assert!(clusters.get("good").is_none());
    }
}
