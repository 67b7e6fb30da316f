//! Listeners: binding, the accept loop, original destination and hand-off to the
//! listener of that destination, loop refusal, the listener filters (TLS and HTTP
//! inspection), filter-chain selection, and handing each connection to its chain's
//! network filter.
pub mod chain_matcher;
mod chain_select;
pub mod conn_limit;
pub mod http_detect;
mod inspect;
pub mod manager;
mod registry;
pub mod tls_hello;

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::{
    net::{TcpListener, TcpStream},
    runtime::Handle,
};

pub use self::{manager::ListenerManager, registry::Registry};
use crate::{
    config::{FilterChain, FilterEnabled, ListenerConfig, NetworkFilter},
    drain,
    http::{
        Downstream, HttpConnectionManager,
        route_slot::{RouteSlot, RouteSlots},
        server,
    },
    net::{conn::Conn, orig_dst},
    tcp::TcpProxy,
    telemetry::{
        access_log::Sinks,
        scopes::ListenerStats,
        stats::{GaugeGuard, Store},
    },
    upstream::ClusterManager,
};

/// A filter chain at run time: the read filters, then the terminal filter.
#[derive(Debug)]
pub struct Chain {
    read: Vec<ReadFilter>,
    terminal: Filter,
    /// The chain's TLS termination, and its handshake timeout.
    tls: Option<(crate::tls::ServerTls, Option<Duration>)>,
    /// Istio's TCP metadata exchange, when the chain has it.
    exchange: Option<crate::istio::exchange::Exchange>,
    /// `istio.stats` (its TCP metrics), when the chain has it.
    istio_stats: Option<crate::istio::stats::IstioStats>,
}

#[derive(Debug)]
pub enum Filter {
    Tcp(TcpProxy),
    Http(Arc<HttpConnectionManager>),
}

/// A network filter before the terminal one.
#[derive(Debug)]
enum ReadFilter {
    /// `envoy.filters.network.rbac`: decided when the connection reaches the chain, with
    /// what the listener knows (addresses, SNI); a denied connection is closed before
    /// the terminal filter runs (Envoy decides on the connection's first bytes, so a
    /// server-first upstream may have been connected to by then).
    Rbac {
        config: Arc<crate::rbac::RbacConfig>,
        stats: crate::rbac::RbacStats,
    },
    /// `envoy.filters.network.connection_limit`: its count is the chain's, shared by
    /// every worker.
    ConnectionLimit {
        limit: Arc<conn_limit::ConnLimit>,
        delay: Option<Duration>,
        limited: crate::telemetry::stats::Counter,
        active: crate::telemetry::stats::Gauge,
    },
}

/// What the read filters hold for a connection they admitted (its places under
/// connection limits).
type Admitted = Vec<(conn_limit::Permit, crate::telemetry::stats::GaugeGuard)>;

impl Chain {
    fn new(c: &FilterChain, ctx: &Context, stat_name: &str, inbound: bool) -> Result<Self, String> {
        let tls = match &c.tls {
            Some(t) => Some((
                crate::tls::ServerTls::new(
                    t,
                    ctx.clusters.secrets(),
                    &ctx.store,
                    &format!("listener.{stat_name}"),
                )
                .map_err(|e| format!("transport_socket: {e}"))?,
                c.handshake_timeout,
            )),
            None => None,
        };
        let read = c
            .read_filters
            .iter()
            .filter_map(|r| match r {
                crate::config::ReadFilter::Rbac {
                    config,
                    stat_prefix,
                } => Some(ReadFilter::Rbac {
                    stats: crate::rbac::RbacStats::new(&ctx.store, stat_prefix, config),
                    config: config.clone(),
                }),
                crate::config::ReadFilter::ConnectionLimit {
                    stat_prefix,
                    max,
                    delay,
                } => {
                    let name = |s: &str| format!("connection_limit.{stat_prefix}.{s}");
                    Some(ReadFilter::ConnectionLimit {
                        limit: conn_limit::ConnLimit::new(Some(*max)),
                        delay: *delay,
                        limited: ctx
                            .store
                            .counter_tagged_by_default(name("limited_connections")),
                        active: ctx
                            .store
                            .gauge_tagged_by_default(name("active_connections")),
                    })
                }
                crate::config::ReadFilter::MetadataExchange(_)
                | crate::config::ReadFilter::IstioStats(_) => None,
            })
            .collect();
        let istio_stats = c.read_filters.iter().find_map(|r| match r {
            crate::config::ReadFilter::IstioStats(s) => {
                Some(crate::istio::stats::IstioStats::new(s, inbound, &ctx.store))
            }
            _ => None,
        });
        let exchange = c.read_filters.iter().find_map(|r| match r {
            crate::config::ReadFilter::MetadataExchange(x) => {
                Some(crate::istio::exchange::Exchange::new(x, &ctx.store))
            }
            _ => None,
        });
        Ok(Chain {
            exchange,
            istio_stats,
            read,
            terminal: Filter::new(&c.filter, ctx, inbound)?,
            tls,
        })
    }

    /// Runs the read filters in order: what the connection holds while it lasts, or
    /// `Err` when one closes it (after the delay it names, if any).
    fn admit(
        &self,
        peer: SocketAddr,
        dst: SocketAddr,
        server_name: Option<&str>,
        peer_principal: Option<&str>,
    ) -> Result<Admitted, Option<Duration>> {
        let mut held = Admitted::new();
        for f in &self.read {
            match f {
                ReadFilter::Rbac { config, stats } => {
                    let subject = crate::rbac::Subject {
                        peer,
                        remote: peer,
                        local: dst,
                        server_name,
                        peer_principal,
                        request: None,
                        metadata: None,
                    };
                    if !config.check(&subject, stats).allowed {
                        return Err(None);
                    }
                }
                ReadFilter::ConnectionLimit {
                    limit,
                    delay,
                    limited,
                    active,
                } => match limit.acquire() {
                    Some(permit) => {
                        held.push((permit, crate::telemetry::stats::GaugeGuard::new(active)))
                    }
                    None => {
                        limited.inc();
                        return Err(*delay);
                    }
                },
            }
        }
        Ok(held)
    }
}

impl Filter {
    fn new(config: &NetworkFilter, ctx: &Context, inbound: bool) -> Result<Self, String> {
        Ok(match config {
            NetworkFilter::TcpProxy(t) => {
                Filter::Tcp(TcpProxy::new(t, &ctx.clusters, &ctx.store, &ctx.sinks)?)
            }
            NetworkFilter::Http(h) => Filter::Http(Arc::new(HttpConnectionManager::new(
                (**h).clone(),
                &ctx.clusters,
                &ctx.routes,
                &ctx.store,
                &ctx.sinks,
                &ctx.tracers,
                inbound,
            )?)),
        })
    }
}

/// What building a listener takes from the process.
#[derive(Debug, Clone)]
pub struct Context {
    pub clusters: Arc<ClusterManager>,
    pub routes: Arc<RouteSlots>,
    pub store: Arc<Store>,
    pub sinks: Arc<Sinks>,
    /// The tracers connection managers report spans to.
    pub tracers: Arc<crate::telemetry::tracing::Tracers>,
    /// The process's drain.
    pub drain: drain::Watch,
    /// The global downstream connection limit.
    pub conn_limit: Arc<conn_limit::ConnLimit>,
}

#[derive(Debug)]
pub struct Listener {
    pub config: ListenerConfig,
    pub stats: ListenerStats,
    /// The filter chains, in `config.filter_chains` order.
    chains: Vec<Chain>,
    default_chain: Option<Chain>,
    /// This listener's own drain: signaled when LDS replaces or removes it.
    drain: drain::Scoped,
    /// The global connection limit, unless the listener is exempt.
    conn_limit: Option<Arc<conn_limit::ConnLimit>>,
}

impl Listener {
    pub fn new(config: ListenerConfig, ctx: &Context) -> Result<Self, String> {
        let chain = |c: &FilterChain, what: String| {
            Chain::new(c, ctx, &config.stat_name, config.inbound)
                .map_err(|e| format!("listener '{}' {what}: {e}", config.name))
        };
        let chains = config
            .filter_chains
            .iter()
            .enumerate()
            .map(|(i, c)| chain(c, format!("filter_chains[{i}]")))
            .collect::<Result<_, _>>()?;
        let default_chain = config
            .default_chain
            .as_ref()
            .map(|c| chain(c, "default_filter_chain".into()))
            .transpose()?;
        let stats = ListenerStats::new(&ctx.store, &config.stat_name);
        Ok(Listener {
            conn_limit: (!config.ignore_global_conn_limit).then(|| ctx.conn_limit.clone()),
            config,
            stats,
            chains,
            default_chain,
            drain: ctx.drain.scoped(),
        })
    }

    /// The RDS route configurations this listener's connection managers use.
    pub fn route_slots(&self) -> impl Iterator<Item = &Arc<RouteSlot>> {
        self.chains
            .iter()
            .chain(&self.default_chain)
            .filter_map(|c| match &c.terminal {
                Filter::Http(h) => h.routes.slot(),
                Filter::Tcp(_) => None,
            })
    }

    /// Starts this listener's drain: its connections finish their in-flight work and
    /// close (HTTP/2 GOAWAY, HTTP/1 `connection: close`).
    pub fn retire(&self) {
        self.drain.signal();
    }
}

/// Accepts on `socket` until the process drains (or the task is aborted because the
/// listener was removed). Each connection is served by the listener in `slot` when it
/// arrives, so a listener update takes the next connection.
pub async fn accept_loop(
    slot: Arc<ArcSwap<Listener>>,
    socket: TcpListener,
    registry: Arc<ArcSwap<Registry>>,
    mut drain: drain::Watch,
) {
    loop {
        let accepted = tokio::select! {
            a = socket.accept() => a,
            _ = drain.signaled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let me = slot.load_full();
                let permit = match &me.conn_limit {
                    Some(limit) => match limit.acquire() {
                        Some(p) => p,
                        None => {
                            me.stats.downstream_global_cx_overflow.inc();
                            drop(stream);
                            continue;
                        }
                    },
                    None => conn_limit::Permit::none(),
                };
                let watch = me.drain.watch().clone();
                let guard = watch.connection();
                let registry = registry.load_full();
                tokio::spawn(async move {
                    me.accepted(stream, unmap(peer), &registry, watch).await;
                    drop((guard, permit));
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %slot.load().config.name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Listener {
    /// A connection accepted on this listener's socket: find its destination and the
    /// listener that serves it.
    async fn accepted(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        registry: &Registry,
        drain: drain::Watch,
    ) {
        let Ok(local) = stream.local_addr().map(unmap) else {
            return;
        };
        let dst = if self.config.listener_filters.original_dst {
            match orig_dst::original_dst(&stream, local) {
                Ok(Some(d)) => unmap(d),
                Ok(None) => local,
                Err(e) => {
                    tracing::debug!("SO_ORIGINAL_DST failed: {e}");
                    local
                }
            }
        } else {
            local
        };
        if self.config.listener_filters.original_dst
            && registry.own.reached_by(dst, Some(local.ip())).is_some()
        {
            self.stats.loop_refused.inc();
            tracing::debug!(%peer, %dst, "refused: destination is pilotfish itself");
            return;
        }
        if self.config.use_original_dst
            && let Some(target) = registry.find(dst)
            && !Arc::ptr_eq(target, self)
        {
            let watch = target.drain.watch().clone();
            return target.serve(stream, peer, dst, watch).await;
        }
        self.serve(stream, peer, dst, drain).await
    }

    /// Runs the inspectors the chains need, picks the filter chain and hands the
    /// connection to its network filter.
    async fn serve(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        dst: SocketAddr,
        drain: drain::Watch,
    ) {
        let (chain, facts) = {
            let _pre = GaugeGuard::new(&self.stats.downstream_pre_cx_active);
            match self.choose(&stream, peer, dst).await {
                Ok((Some(c), facts)) => (c, facts),
                Ok((None, _)) => {
                    self.stats.no_filter_chain_match.inc();
                    tracing::debug!(listener = %self.config.name, %peer, %dst, "no filter chain matches");
                    return;
                }
                Err(e) => {
                    if e.kind() == io::ErrorKind::TimedOut {
                        self.stats.downstream_pre_cx_timeout.inc();
                    }
                    return;
                }
            }
        };
        self.stats.downstream_cx_total.inc();
        let _active = GaugeGuard::new(&self.stats.downstream_cx_active);
        let stream = match &chain.tls {
            None => Conn::Plain(stream),
            Some((tls, timeout)) => match tls.accept(stream, *timeout).await {
                Some((s, info)) => Conn::Tls {
                    stream: Box::new(s),
                    // Envoy's requested server name is the TLS inspector's, not the
                    // handshake's: without the inspector there is none.
                    peer: Arc::new(crate::tls::PeerInfo {
                        sni: facts.server_name.clone(),
                        ..info
                    }),
                    replay: Vec::new(),
                    inbox: None,
                },
                None => {
                    self.stats.downstream_cx_destroy.inc();
                    return;
                }
            },
        };
        let mut stream = stream;
        if let Some(x) = &chain.exchange
            && stream.exchange(x).await.is_err()
        {
            self.stats.downstream_cx_destroy.inc();
            return;
        }
        let principal = stream.tls().and_then(|t| t.uri_san.clone());
        let _admitted = match chain.admit(
            peer,
            dst,
            facts.server_name.as_deref(),
            principal.as_deref(),
        ) {
            Ok(held) => held,
            Err(delay) => {
                // A delayed close holds the connection without reading it, as Envoy's
                // connection limit does, so a client retrying at once is slowed down.
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                self.stats.downstream_cx_destroy.inc();
                return;
            }
        };
        match &chain.terminal {
            Filter::Tcp(t) => {
                t.handle(
                    stream,
                    peer,
                    dst,
                    facts.server_name,
                    chain.istio_stats.as_ref(),
                )
                .await
            }
            Filter::Http(h) => {
                server::serve(stream, h.clone(), Downstream { peer, local: dst }, drain).await
            }
        }
        self.stats.downstream_cx_destroy.inc();
    }

    /// The filter chain for this connection. Inspection (and its wait) happens only when
    /// the chains still in question after the destination steps match on what it finds.
    async fn choose(
        &self,
        stream: &TcpStream,
        peer: SocketAddr,
        dst: SocketAddr,
    ) -> io::Result<(Option<&Chain>, inspect::Facts)> {
        let chains = &self.config.filter_chains;
        let cands = chain_select::by_destination(chains, dst);
        let matcher = self.config.chain_matcher.as_deref();
        let inspect = match matcher {
            Some(m) => m.needs_inspection(),
            None => chain_select::needs_inspection(chains, &cands),
        };
        let facts = if inspect {
            let lf = &self.config.listener_filters;
            let on = |f: &Option<FilterEnabled>| {
                f.as_ref()
                    .is_some_and(|f| !f.disabled.as_ref().is_some_and(|p| p.matches(dst.port())))
            };
            match inspect::inspect(
                stream,
                on(&lf.tls_inspector),
                on(&lf.http_inspector),
                lf.timeout,
            )
            .await
            {
                Ok(facts) => facts,
                Err(e) if e.kind() == io::ErrorKind::TimedOut && lf.continue_on_timeout => {
                    inspect::Facts::default()
                }
                Err(e) => return Err(e),
            }
        } else {
            inspect::Facts::default()
        };
        let chosen = match matcher {
            Some(m) => {
                let conn = chain_matcher::Connection {
                    facts: &facts,
                    src: peer,
                    dst,
                };
                match m.select(&conn) {
                    chain_matcher::Selected::Chain(i) => Some(&self.chains[i]),
                    chain_matcher::Selected::Unknown => None,
                    chain_matcher::Selected::NoMatch => self.default_chain.as_ref(),
                }
            }
            None => chain_select::finish(chains, cands, &facts, peer, dst)
                .map(|i| &self.chains[i])
                .or(self.default_chain.as_ref()),
        };
        Ok((chosen, facts))
    }
}

/// An IPv4-mapped IPv6 address (from a dual-stack socket) as the IPv4 address it is.
fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// Binds a listener socket with SO_REUSEADDR, as Envoy does. An IPv6 socket takes IPv4
/// connections too only with `ipv4_compat`.
pub fn bind(addr: SocketAddr, ipv4_compat: bool) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, ipv4_compat, false)?)
}

/// A listening socket for each worker, registered with that worker's runtime, and the
/// address they are bound to. With `reuse_port` (Envoy's `enable_reuse_port`, on by
/// default) each worker has a socket of its own on the address (SO_REUSEPORT) and the
/// kernel spreads new connections over them by a hash of their addresses, as it does
/// for Envoy's workers; without it the workers accept from one shared socket.
pub fn bind_for_workers(
    addr: SocketAddr,
    ipv4_compat: bool,
    reuse_port: bool,
    workers: &[Handle],
) -> io::Result<(SocketAddr, Vec<TcpListener>)> {
    let first = bind_std(addr, ipv4_compat, reuse_port)?;
    // The first bind picks the port when `addr` leaves it to the kernel; the other
    // workers' sockets join it there.
    let local = first.local_addr()?;
    let joined = SocketAddr::new(addr.ip(), local.port());
    let mut sockets = vec![first];
    for _ in 1..workers.len() {
        let next = if reuse_port {
            bind_std(joined, ipv4_compat, true)?
        } else {
            sockets[0].try_clone()?
        };
        sockets.push(next);
    }
    let listeners = sockets
        .into_iter()
        .zip(workers)
        .map(|(socket, worker)| {
            let _enter = worker.enter();
            TcpListener::from_std(socket)
        })
        .collect::<io::Result<_>>()?;
    Ok((local, listeners))
}

fn bind_std(
    addr: SocketAddr,
    ipv4_compat: bool,
    reuse_port: bool,
) -> io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        sock.set_only_v6(!ipv4_compat)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_become_ipv4() {
        assert_eq!(
            unmap("[::ffff:10.0.0.1]:80".parse().unwrap()),
            "10.0.0.1:80".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            unmap("[fd00::1]:80".parse().unwrap()),
            "[fd00::1]:80".parse::<SocketAddr>().unwrap()
        );
    }

    /// Binds 127.0.0.1:0 for two workers, opens `n` connections and returns how many
    /// each worker accepted.
    fn accepted_per_worker(reuse_port: bool, n: usize) -> Vec<usize> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let workers = crate::workers::Workers::start(2, || async {}).unwrap();
        let handles = workers.handles();
        let (local, sockets) =
            bind_for_workers("127.0.0.1:0".parse().unwrap(), false, reuse_port, &handles).unwrap();
        assert_ne!(local.port(), 0);
        assert_eq!(sockets.len(), 2);
        let counts: Arc<[AtomicUsize; 2]> = Arc::new(Default::default());
        for (i, (socket, worker)) in sockets.into_iter().zip(handles.iter()).enumerate() {
            let option = socket2::SockRef::from(&socket).reuse_port().unwrap();
            assert_eq!(option, reuse_port, "SO_REUSEPORT on worker {i}'s socket");
            let counts = counts.clone();
            worker.spawn(async move {
                let mut held = Vec::new();
                while let Ok((s, _)) = socket.accept().await {
                    assert_eq!(crate::workers::current(), i);
                    held.push(s);
                    counts[i].fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        let clients: Vec<_> = (0..n)
            .map(|_| std::net::TcpStream::connect(local).unwrap())
            .collect();
        let total = || {
            counts
                .iter()
                .map(|c| c.load(Ordering::SeqCst))
                .sum::<usize>()
        };
        for _ in 0..500 {
            if total() == n {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(clients);
        let out = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
        workers.shutdown();
        out
    }

    #[test]
    fn with_reuse_port_every_worker_accepts_on_a_socket_of_its_own() {
        // The kernel picks a worker's socket by the connection's hash: 64 connections all
        // landing on one of two sockets has a chance of 2^-63.
        let counts = accepted_per_worker(true, 64);
        assert_eq!(counts.iter().sum::<usize>(), 64, "{counts:?}");
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    }

    #[test]
    fn without_reuse_port_the_workers_share_one_socket() {
        let counts = accepted_per_worker(false, 16);
        assert_eq!(counts.iter().sum::<usize>(), 16, "{counts:?}");
    }
}
