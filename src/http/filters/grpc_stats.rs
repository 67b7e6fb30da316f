//! `envoy.filters.http.grpc_stats`: gRPC calls counted in the route's cluster scope —
//! `cluster.<name>.grpc.[<service>.<method>.]{success,failure,total,<grpc-status>}`
//! when the call ends (its `grpc-status`, in trailers or a trailers-only response; none
//! is a failure), and `{request,response}_message_count` as messages cross (the gRPC
//! framing is followed in both directions). Without `stats_for_all_methods` or an
//! allowlist (Istio's setting) the names carry no service and method. As in Envoy, each
//! counter exists from its first count on.
use crate::sync::RwLockExt;
use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::{
    http::body::{Body, BoxError, boxed},
    telemetry::stats::{Counter, Store},
};

/// A compiled `FilterConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcStatsConfig {
    pub methods: Methods,
    /// `replace_dots_in_grpc_service_name`: `_` for `.` in the service in stat names.
    pub replace_dots: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Methods {
    /// No service or method in the names (`stats_for_all_methods: false`, the default).
    None,
    /// Every method by name (`stats_for_all_methods: true`).
    All,
    /// The listed services' methods by name, the rest without.
    Allowlist(Vec<(String, Vec<String>)>),
}

/// One filter's counters, by stat prefix, made on first use.
#[derive(Debug)]
pub struct GrpcStats {
    config: GrpcStatsConfig,
    store: Arc<Store>,
    by_prefix: RwLock<HashMap<String, Arc<Counters>>>,
}

/// The counters of one stat prefix, each made when first counted.
#[derive(Debug)]
struct Counters {
    prefix: String,
    store: Arc<Store>,
    success: OnceLock<Counter>,
    failure: OnceLock<Counter>,
    total: OnceLock<Counter>,
    request_messages: OnceLock<Counter>,
    response_messages: OnceLock<Counter>,
    /// Per `grpc-status` value.
    statuses: RwLock<Vec<(u32, Counter)>>,
}

impl Counters {
    fn new(prefix: String, store: &Arc<Store>) -> Self {
        Counters {
            prefix,
            store: store.clone(),
            success: OnceLock::new(),
            failure: OnceLock::new(),
            total: OnceLock::new(),
            request_messages: OnceLock::new(),
            response_messages: OnceLock::new(),
            statuses: RwLock::default(),
        }
    }

    fn get<'a>(&'a self, slot: &'a OnceLock<Counter>, name: &str) -> &'a Counter {
        slot.get_or_init(|| {
            self.store
                .counter_tagged_by_default(format!("{}{name}", self.prefix))
        })
    }

    fn status(&self, code: u32) {
        if let Some((_, c)) = self.statuses.read_now().iter().find(|(k, _)| *k == code) {
            c.inc();
            return;
        }
        let c = self
            .store
            .counter_tagged_by_default(format!("{}{code}", self.prefix));
        c.inc();
        self.statuses.write_now().push((code, c));
    }

    fn requests(&self, n: u64) {
        self.get(&self.request_messages, "request_message_count")
            .add(n);
    }

    fn responses(&self, n: u64) {
        self.get(&self.response_messages, "response_message_count")
            .add(n);
    }
}

/// One call in flight: its counters once the route has picked a cluster, and the
/// messages seen before that.
#[derive(Debug, Default)]
pub struct Call {
    counters: OnceLock<Arc<Counters>>,
    early_requests: AtomicU64,
    /// Messages each way so far (Istio's `istio_*_messages_total` read them).
    requests: AtomicU64,
    responses: AtomicU64,
}

impl GrpcStats {
    pub fn new(config: GrpcStatsConfig, store: &Arc<Store>) -> Self {
        GrpcStats {
            config,
            store: store.clone(),
            by_prefix: RwLock::default(),
        }
    }

    /// The stat prefix of a call of `path` (`/service/method`) routed to `cluster`.
    fn prefix(&self, cluster: &str, path: &str) -> String {
        let names = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .filter(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'));
        let named = match (&self.config.methods, names) {
            (Methods::All, Some(n)) => Some(n),
            (Methods::Allowlist(list), Some((s, m)))
                if list
                    .iter()
                    .any(|(svc, methods)| svc == s && methods.iter().any(|x| x == m)) =>
            {
                Some((s, m))
            }
            _ => None,
        };
        match named {
            Some((s, m)) if self.config.replace_dots => {
                format!("cluster.{cluster}.grpc.{}.{m}.", s.replace('.', "_"))
            }
            Some((s, m)) => format!("cluster.{cluster}.grpc.{s}.{m}."),
            None => format!("cluster.{cluster}.grpc."),
        }
    }

    fn counters(&self, prefix: String) -> Arc<Counters> {
        if let Some(c) = self.by_prefix.read_now().get(&prefix) {
            return c.clone();
        }
        let made = Arc::new(Counters::new(prefix.clone(), &self.store));
        self.by_prefix
            .write_now()
            .entry(prefix)
            .or_insert(made)
            .clone()
    }

    /// The route picked `cluster` for the call: from now on its messages count there.
    pub fn routed(&self, call: &Call, cluster: &str, path: &str) {
        let counters = self.counters(self.prefix(cluster, path));
        let early = call.early_requests.swap(0, Ordering::Relaxed);
        if early > 0 {
            counters.requests(early);
        }
        let _ = call.counters.set(counters);
    }
}

impl Call {
    /// Request and response messages so far.
    pub fn messages(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.responses.load(Ordering::Relaxed),
        )
    }

    fn count_requests(&self, n: u64) {
        self.requests.fetch_add(n, Ordering::Relaxed);
        match self.counters.get() {
            Some(c) => c.requests(n),
            None => {
                self.early_requests.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// Counts the messages of a request body.
pub fn request_body(call: Arc<Call>, body: Body) -> Body {
    boxed(Framed {
        inner: body,
        frames: Frames::default(),
        on_messages: Box::new(move |n| call.count_requests(n)),
        on_end: None,
    })
}

/// Counts the messages of a response and the call's outcome: a trailers-only response
/// (`grpc-status` in its headers) ends here; otherwise its trailers tell.
pub fn response(call: Arc<Call>, headers: &HeaderMap, body: Body) -> Body {
    let Some(counters) = call.counters.get().cloned() else {
        return body;
    };
    if let Some(status) = grpc_status(headers) {
        charge(&counters, Some(status));
        return body;
    }
    let on_messages = {
        let c = counters.clone();
        Box::new(move |n| {
            call.responses.fetch_add(n, Ordering::Relaxed);
            c.responses(n)
        })
    };
    boxed(Framed {
        inner: body,
        frames: Frames::default(),
        on_messages,
        on_end: Some(Box::new(move |trailers: Option<&HeaderMap>| {
            charge(&counters, trailers.and_then(grpc_status))
        })),
    })
}

fn charge(c: &Counters, status: Option<u32>) {
    c.get(&c.total, "total").inc();
    if status == Some(0) {
        c.get(&c.success, "success").inc();
    } else {
        c.get(&c.failure, "failure").inc();
    }
    if let Some(code) = status {
        c.status(code);
    }
}

fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Where the gRPC framing (1 flag byte, 4 length bytes, the message) stands.
#[derive(Debug, Default)]
struct Frames {
    /// Bytes of the current frame's 5-byte prefix seen so far.
    header: [u8; 5],
    header_len: usize,
    /// Message bytes still to come for the current frame.
    remaining: u64,
}

impl Frames {
    /// The number of messages that end in `data`.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut done = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining as usize).min(data.len());
                self.remaining -= n as u64;
                data = &data[n..];
                if self.remaining == 0 {
                    done += 1;
                }
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 5 {
                self.header_len = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                if len == 0 {
                    done += 1;
                } else {
                    self.remaining = u64::from(len);
                }
            }
        }
        done
    }
}

type OnEnd = Box<dyn FnOnce(Option<&HeaderMap>) + Send + Sync>;

pin_project_lite::pin_project! {
    struct Framed {
        #[pin]
        inner: Body,
        frames: Frames,
        on_messages: Box<dyn Fn(u64) + Send + Sync>,
        on_end: Option<OnEnd>,
    }
}

impl HttpBody for Framed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let n = this.frames.feed(d.chunk());
                    if n > 0 {
                        (this.on_messages)(n);
                    }
                }
                if let Some(t) = f.trailers_ref()
                    && let Some(end) = this.on_end.take()
                {
                    end(Some(t));
                }
            }
            Poll::Ready(None) => {
                if let Some(end) = this.on_end.take() {
                    end(None);
                }
            }
            _ => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_counted_across_chunks() {
        let mut f = Frames::default();
        let msg = |n: usize| {
            let mut v = vec![0u8];
            v.extend_from_slice(&(n as u32).to_be_bytes());
            v.extend(std::iter::repeat_n(7u8, n));
            v
        };
        let all: Vec<u8> = [msg(3), msg(0), msg(10), msg(1)].concat();
        assert_eq!(f.feed(&all), 4);
        // The same bytes one at a time.
        let mut f = Frames::default();
        let counted: u64 = all.iter().map(|b| f.feed(std::slice::from_ref(b))).sum();
        assert_eq!(counted, 4);
        // Half a message: nothing yet, then the rest.
        let mut f = Frames::default();
        let m = msg(100);
        assert_eq!(f.feed(&m[..50]), 0);
        assert_eq!(f.feed(&m[50..]), 1);
    }

    #[test]
    fn stat_prefixes_by_configuration() {
        let store = Store::new();
        let make = |methods| {
            GrpcStats::new(
                GrpcStatsConfig {
                    methods,
                    replace_dots: false,
                },
                &store,
            )
        };
        let path = "/envoy.service.auth.v3.Authorization/Check";
        assert_eq!(make(Methods::None).prefix("c", path), "cluster.c.grpc.");
        assert_eq!(
            make(Methods::All).prefix("c", path),
            "cluster.c.grpc.envoy.service.auth.v3.Authorization.Check."
        );
        let allow = make(Methods::Allowlist(vec![(
            "envoy.service.auth.v3.Authorization".into(),
            vec!["Check".into()],
        )]));
        assert_eq!(
            allow.prefix("c", path),
            "cluster.c.grpc.envoy.service.auth.v3.Authorization.Check."
        );
        assert_eq!(allow.prefix("c", "/other.Svc/Call"), "cluster.c.grpc.");
        assert_eq!(
            make(Methods::All).prefix("c", "/not-grpc"),
            "cluster.c.grpc."
        );
    }
}
