//! Wiring: the control runtime and the traffic workers, clusters and listeners from the
//! compiled config, the admin, stats and health servers, readiness, and the drain on
//! SIGTERM/SIGINT.
use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use tokio::sync::mpsc;

use crate::{
    admin::{self, Command, Role, config_dump::StaticDump},
    config::{Config, ListenerConfig, NetworkFilter},
    drain,
    http::route_slot::RouteSlots,
    listener::{self, Listener, ListenerManager},
    readiness::Readiness,
    runtime::Runtime,
    telemetry::{access_log::Sinks, scopes::ServerStats, stats::Store},
    upstream::ClusterManager,
    workers::Workers,
    xds,
};

#[derive(Debug, Clone)]
pub struct Options {
    /// Traffic worker threads.
    pub concurrency: usize,
    /// How long a drain may take before the process exits anyway.
    pub drain_time: Duration,
    /// Prometheus stats server (`/stats/prometheus`), if any.
    pub stats_addr: Option<SocketAddr>,
    /// Health server (`/healthz/ready`), if any.
    pub health_addr: Option<SocketAddr>,
    /// Where to write the admin server's bound address (Envoy's `--admin-address-path`).
    pub admin_address_path: Option<std::path::PathBuf>,
    /// The command line as `/server_info` reports it (Envoy's option names).
    pub command_line: serde_json::Value,
    /// `--file-flush-interval-msec` for access logs (Envoy's default 10 s; zero: each
    /// line as soon as the writer gets to it).
    pub flush_interval: Duration,
    /// `--file-flush-min-size-kb`, in bytes: pending access-log bytes written at once.
    pub flush_size: usize,
    /// Fields `--allow-unknown-static-fields` dropped (`server.static_unknown_fields`).
    pub unknown_static_fields: u64,
    /// `--mode init_only`: start, bind the admin port, exit.
    pub init_only: bool,
}

/// Worker count when `--concurrency` is not given: the cgroup CPU quota, else 2.
pub fn default_concurrency() -> usize {
    cgroup_cpu_quota().unwrap_or(2)
}

fn cgroup_cpu_quota() -> Option<usize> {
    let (quota, period) = if let Ok(s) = std::fs::read_to_string("/sys/fs/cgroup/cpu.max") {
        let mut it = s.split_whitespace();
        (
            it.next()?.parse::<f64>().ok()?,
            it.next()?.parse::<f64>().ok()?,
        )
    } else {
        let q = std::fs::read_to_string("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").ok()?;
        let p = std::fs::read_to_string("/sys/fs/cgroup/cpu/cpu.cfs_period_us").ok()?;
        (q.trim().parse::<f64>().ok()?, p.trim().parse::<f64>().ok()?)
    };
    (quota > 0.0 && period > 0.0).then(|| ((quota / period).ceil() as usize).max(1))
}

/// Runs the proxy until a signal or `/quitquitquit`. Returns once everything stopped.
/// `config_dump` is the bootstrap as loaded, for `/config_dump`.
pub fn run(config: Config, config_dump: StaticDump, opts: Options) -> Result<()> {
    let started = Instant::now();
    let store = Store::with_naming(config.server.naming.build());
    // Before any stat is made: the statsd sinks take every histogram value.
    let stat_sinks = crate::telemetry::stat_sinks::prepare(&config.stat_sinks)
        .map_err(|e| anyhow!("stats_sinks: {e}"))?;
    let server = Arc::new(ServerStats::new(&store));
    server.concurrency.set(opts.concurrency as i64);
    let readiness = Arc::new(Readiness::default());
    readiness.report_to(server.state.clone(), server.workers_started.clone());
    let (trigger, watch) = drain::channel();

    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("pilotfish-control")
        .enable_all()
        .build()?;
    let workers = Workers::start(opts.concurrency, timer_anchor)?;
    if let Some(path) = &config.server.outlier_event_log_path {
        crate::upstream::outlier::open_event_log(path).map_err(|e| {
            anyhow::anyhow!("cluster_manager.outlier_detection.event_log_path '{path}': {e}")
        })?;
    }
    crate::istio::peer_metadata::set_local_node(&config.node.proto);
    let secrets = Arc::new(crate::tls::SecretStore::new(
        crate::tls::secrets::sources(&config.clusters),
        xds::node(&config.node.proto),
        control.handle().clone(),
        store.clone(),
        config.dynamic.as_ref().is_some_and(|d| d.ads.is_some()),
    ));
    let clusters = Arc::new(ClusterManager::with_secrets(
        &config.clusters,
        &store,
        secrets,
    ));
    server.active_clusters.set(clusters.len() as i64);
    let stats_flush = crate::telemetry::stat_sinks::start(
        stat_sinks,
        &store,
        &clusters,
        &config.node.proto,
        control.handle(),
    );
    let listeners = Arc::new(ListenerManager::new(
        workers.handles(),
        watch.clone(),
        clusters.own_addresses().clone(),
    ));

    let runtime = Arc::new(Runtime::new(config.server.runtime_layers.clone()));
    let node_identity = {
        let node = &config.node.proto;
        crate::telemetry::tracing::NodeIdentity {
            id: node.id.clone(),
            cluster: node.cluster.clone(),
            zone: node
                .locality
                .as_ref()
                .map(|l| l.zone.clone())
                .unwrap_or_default(),
        }
    };
    let sinks = Arc::new(
        Sinks::with_flush_interval(control.handle().clone(), store.clone(), opts.flush_interval)
            .with_flush_size(opts.flush_size)
            .with_otel(clusters.clone(), node_identity.clone()),
    );
    server.static_unknown_fields.add(opts.unknown_static_fields);

    // Admin, stats and health come up first, so readiness reads 503 (PRE_INITIALIZING)
    // while clusters resolve, listeners bind and the first xDS config arrives.
    let (commands_tx, mut commands) = mpsc::unbounded_channel();
    let state = Arc::new(admin::State {
        store: store.clone(),
        readiness: readiness.clone(),
        clusters: clusters.clone(),
        stats_flush,
        config_dump,
        xds: OnceLock::new(),
        commands: commands_tx,
        listeners: listeners.clone(),
        server: admin::ServerInfo {
            started,
            command_line: opts.command_line.clone(),
            node: crate::config::proto::to_json(&xds::node(&config.node.proto)),
            ..Default::default()
        },
        runtime: runtime.clone(),
        access_logs: {
            let _enter = control.enter();
            config
                .server
                .admin_access_logs
                .iter()
                .map(|l| sinks.open(l))
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow!("admin.access_log: {e}"))?
        },
    });
    let servers = [
        (config.admin, Role::Admin),
        (opts.stats_addr, Role::Stats),
        (opts.health_addr, Role::Health),
    ];
    {
        let _enter = control.enter();
        for (addr, role) in servers {
            let Some(addr) = addr else { continue };
            let socket = admin::bind(addr)
                .with_context(|| format!("{role:?} server: cannot bind {addr}"))?;
            let local = socket.local_addr()?;
            tracing::info!("{} on {local}", role_name(role));
            if let (Role::Admin, Some(path)) = (role, &opts.admin_address_path) {
                std::fs::write(path, local.to_string())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            control.spawn(admin::serve(socket, role, state.clone()));
        }
    }

    if opts.init_only {
        tracing::info!("init_only: exiting");
        workers.shutdown();
        control.shutdown_timeout(Duration::from_millis(100));
        return Ok(());
    }
    control.block_on(clusters.start_background());
    let exit_sinks = sinks.clone();
    let tracers = Arc::new(crate::telemetry::tracing::Tracers::new(
        control.handle().clone(),
        clusters.clone(),
        store.clone(),
        config.tracing.clone(),
        node_identity,
        |key| runtime.get_u64(key),
    ));
    let ctx = listener::Context {
        tracers,
        clusters: clusters.clone(),
        routes: Arc::new(RouteSlots::default()),
        store: store.clone(),
        sinks,
        drain: watch.clone(),
        conn_limit: listener::conn_limit::ConnLimit::new(
            config
                .server
                .max_downstream_connections
                .or_else(|| runtime.get_u64(crate::runtime::keys::GLOBAL_MAX_CONNECTIONS)),
        ),
    };
    // Build every static listener before binding any, so a bad one fails startup
    // before traffic is taken.
    let built = config
        .listeners
        .iter()
        .map(|l| Listener::new(l.clone(), &ctx).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!(e))?;
    for l in built {
        let c = &l.config;
        let what = if c.bind_to_port {
            format!("on {}", c.address)
        } else {
            format!("for {} (not bound)", c.address)
        };
        tracing::info!("listener {} {what} ({})", c.name, describe(c));
        listeners
            .upsert(l.clone())
            .map_err(|e| anyhow!("listener '{}': {e}", l.config.name))?;
    }
    server.total_listeners_active.set(listeners.len() as i64);
    match &config.dynamic {
        Some(dynamic) => {
            let rt = xds::state::Runtime {
                ctx: ctx.clone(),
                listeners: listeners.clone(),
                readiness: readiness.clone(),
            };
            let handle = {
                let _enter = control.enter();
                xds::start(dynamic, &config.clusters, rt).map_err(|e| anyhow!(e))?
            };
            let _ = state.xds.set(handle);
        }
        None => {
            // Ready once the TLS secrets the static config uses are in.
            let secrets = clusters.secrets().clone();
            if secrets.pending() {
                let readiness = readiness.clone();
                control.spawn(async move {
                    secrets.arrived().await;
                    readiness.set_initialized();
                });
            } else {
                readiness.set_initialized();
            }
        }
    }
    server.live.set(1);
    // What runs was compiled from `config`; the rest of it, and what loading it
    // allocated, goes back to the kernel.
    drop(config);
    crate::memory::release_free_memory();

    let uptime = server.clone();
    control.spawn(async move {
        for tick in 0u64.. {
            uptime.uptime.set(started.elapsed().as_secs() as i64);
            // The allocator's figures walk its arenas: every 5 s is plenty.
            if tick % 5 == 0 {
                let m = crate::memory::usage();
                uptime.memory_allocated.set(m.allocated as i64);
                uptime.memory_heap_size.set(m.heap_size as i64);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });

    let quit_now = control.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        loop {
            let quit = tokio::select! {
                _ = term.recv() => false,
                _ = int.recv() => false,
                c = commands.recv() => match c {
                    Some(Command::DrainListeners { inbound_only, graceful }) => {
                        drain_listeners(&listeners, inbound_only, graceful, opts.drain_time);
                        continue;
                    }
                    c => c == Some(Command::Quit) || c.is_none(),
                },
            };
            break anyhow::Ok(quit);
        }
    })?;

    if !quit_now {
        tracing::info!("draining for up to {:?}", opts.drain_time);
        readiness.set_draining();
        server.live.set(0);
        let left = control.block_on(async {
            let drain = trigger.drain(opts.drain_time);
            tokio::pin!(drain);
            loop {
                tokio::select! {
                    left = &mut drain => return left,
                    c = commands.recv() => match c {
                        Some(Command::Quit) | None => return trigger.active(),
                        Some(Command::DrainListeners { .. }) => {}
                    },
                }
            }
        });
        if left > 0 {
            tracing::info!("drain deadline passed with {left} connection(s) open");
        }
    }
    tracing::info!("exiting");
    // Access-log lines still waiting for their flush interval go out now, as Envoy's.
    exit_sinks.flush();
    workers.shutdown();
    control.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// Admin `/drain_listeners`: the listeners drain now; a graceful drain closes their
/// sockets after the drain time, an immediate one at once. The process keeps running
/// (pilot-agent drains inbound listeners this way on shutdown, then stops the proxy).
fn drain_listeners(
    listeners: &Arc<ListenerManager>,
    inbound_only: bool,
    graceful: bool,
    drain_time: Duration,
) {
    let n = listeners.drain_listeners(inbound_only);
    tracing::info!(
        "draining {n} listener(s){}{}",
        if inbound_only { " (inbound only)" } else { "" },
        if graceful { ", gracefully" } else { "" }
    );
    if !graceful {
        listeners.stop_listeners(inbound_only);
        return;
    }
    let listeners = listeners.clone();
    tokio::spawn(async move {
        tokio::time::sleep(drain_time).await;
        listeners.stop_listeners(inbound_only);
    });
}

/// One line on what a listener does, for the startup log.
fn describe(l: &ListenerConfig) -> String {
    let filter = |f: &NetworkFilter| match f {
        NetworkFilter::TcpProxy(t) => format!("tcp_proxy -> {}", t.cluster),
        NetworkFilter::Http(h) => format!("http_connection_manager {}", h.stat_prefix),
    };
    let mut chains = l.filter_chains.iter().chain(&l.default_chain);
    match (chains.next(), chains.next()) {
        (Some(only), None) => filter(&only.filter),
        _ => format!(
            "{} filter chains{}",
            l.filter_chains.len(),
            if l.default_chain.is_some() {
                " + default"
            } else {
                ""
            }
        ),
    }
}

/// Keeps a timer of each worker's runtime due within a second. tokio wakes its timer
/// driver (an eventfd write, then an extra `epoll_wait` round) whenever a new timer is
/// due before every timer it slept with; without an anchor, an idle worker pays that
/// for the timeout timer of each request it takes. With one, request timeouts of a
/// second or more register without a syscall, for one wakeup a second.
async fn timer_anchor() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Stats => "stats (/stats/prometheus)",
        Role::Health => "health (/healthz/ready)",
    }
}
