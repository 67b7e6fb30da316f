//! `stats.PluginConfig` compiled: the reporter, the host-header fallback, the TCP
//! reporting period, and each standard metric's shape after the `metrics` overrides
//! (dropped, tags removed, values replaced or added by expressions), applied in
//! istio-proxy's order.
use std::time::Duration;

use serde_json::Value;

use super::cel::Expr;

pub const TYPE: &str = "stats.PluginConfig";

/// The standard labels, in the order istio-proxy emits them.
pub const TAGS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// Positions in [`TAGS`] of the labels after the 20 peer labels.
pub const REQUEST_PROTOCOL: usize = 20;
pub const RESPONSE_CODE: usize = 21;
pub const GRPC_RESPONSE_STATUS: usize = 22;
pub const RESPONSE_FLAGS: usize = 23;
pub const CONNECTION_SECURITY_POLICY: usize = 24;

/// The standard metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Requests,
    Duration,
    RequestBytes,
    ResponseBytes,
    RequestMessages,
    ResponseMessages,
    TcpOpened,
    TcpClosed,
    TcpSent,
    TcpReceived,
}

impl Metric {
    pub const ALL: [Metric; 10] = [
        Metric::Requests,
        Metric::Duration,
        Metric::RequestBytes,
        Metric::ResponseBytes,
        Metric::RequestMessages,
        Metric::ResponseMessages,
        Metric::TcpOpened,
        Metric::TcpClosed,
        Metric::TcpSent,
        Metric::TcpReceived,
    ];

    /// The name `metrics[].name` uses (without `istio_`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Requests => "requests_total",
            Metric::Duration => "request_duration_milliseconds",
            Metric::RequestBytes => "request_bytes",
            Metric::ResponseBytes => "response_bytes",
            Metric::RequestMessages => "request_messages_total",
            Metric::ResponseMessages => "response_messages_total",
            Metric::TcpOpened => "tcp_connections_opened_total",
            Metric::TcpClosed => "tcp_connections_closed_total",
            Metric::TcpSent => "tcp_sent_bytes_total",
            Metric::TcpReceived => "tcp_received_bytes_total",
        }
    }

    pub fn is_histogram(self) -> bool {
        matches!(
            self,
            Metric::Duration | Metric::RequestBytes | Metric::ResponseBytes
        )
    }

    /// The standard labels it carries: HTTP all 25, TCP the 20 peer labels and
    /// protocol, flags and security policy, gRPC messages the 20 only.
    pub fn tags(self) -> impl Iterator<Item = usize> {
        let n = match self {
            Metric::RequestMessages | Metric::ResponseMessages => 20,
            _ => 25,
        };
        let tcp = matches!(
            self,
            Metric::TcpOpened | Metric::TcpClosed | Metric::TcpSent | Metric::TcpReceived
        );
        (0..n).filter(move |&t| !(tcp && (t == RESPONSE_CODE || t == GRPC_RESPONSE_STATUS)))
    }
}

/// Where one label's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Standard(usize),
    /// An expression, by its index in [`StatsConfig::exprs`].
    Expr(usize),
}

/// A metric's labels, in order; `None` when dropped.
pub type Shape = Option<Vec<(String, Source)>>;

#[derive(Debug, Clone, PartialEq)]
pub struct StatsConfig {
    pub disable_host_header_fallback: bool,
    /// `tcp_reporting_duration` (default 5 s); `None` when 0 (reported at close).
    pub tcp_reporting: Option<Duration>,
    /// The label layout of each metric, by [`Metric::ALL`] order.
    pub shapes: Vec<Shape>,
    /// The dimension expressions, each evaluated once per stream.
    pub exprs: Vec<Expr>,
    /// Some expression reads the request's headers.
    pub needs_request_headers: bool,
}

impl StatsConfig {
    pub fn shape(&self, m: Metric) -> Option<&[(String, Source)]> {
        self.shapes[m as usize].as_deref()
    }
}

/// A label slot while the overrides are applied.
#[derive(Clone)]
struct Slot {
    name: String,
    on: bool,
    expr: Option<usize>,
}

pub fn compile(json: &Value, path: &str) -> Result<StatsConfig, String> {
    if json["definitions"]
        .as_array()
        .is_some_and(|d| !d.is_empty())
    {
        return Err(format!(
            "{path}.definitions: not supported (custom metrics, which only an EnvoyFilter sets)"
        ));
    }
    // The listener's direction decides the reporter; a waypoint's is not a sidecar's.
    if json["reporter"].as_str() == Some("SERVER_GATEWAY") {
        return Err(format!(
            "{path}.reporter: SERVER_GATEWAY not supported (a waypoint's reporter)"
        ));
    }
    let tcp_reporting = match json.get("tcp_reporting_duration") {
        None | Some(Value::Null) => Some(Duration::from_secs(5)),
        Some(v) => Some(
            json_duration(v)
                .ok_or_else(|| format!("{path}.tcp_reporting_duration: '{v}' is not a duration"))?,
        )
        .filter(|d| !d.is_zero()),
    };
    let mut slots: Vec<Vec<Slot>> = Metric::ALL
        .iter()
        .map(|m| {
            m.tags()
                .map(|t| Slot {
                    name: TAGS[t].to_owned(),
                    on: true,
                    expr: None,
                })
                .collect()
        })
        .collect();
    let mut dropped = [false; 10];
    let mut exprs: Vec<Expr> = Vec::new();
    for (i, m) in json["metrics"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let mpath = format!("{path}.metrics[{i}]");
        let name = m["name"].as_str().unwrap_or_default();
        // An unknown name changes nothing (istio-proxy ignores it too).
        let targets: Vec<usize> = if name.is_empty() {
            (0..10).collect()
        } else {
            Metric::ALL
                .iter()
                .position(|x| x.name() == name)
                .into_iter()
                .collect()
        };
        if m["drop"].as_bool() == Some(true) {
            if !name.is_empty() {
                for &t in &targets {
                    dropped[t] = true;
                }
            }
            continue;
        }
        for tag in m["tags_to_remove"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(Value::as_str)
        {
            for &t in &targets {
                for s in slots[t].iter_mut().filter(|s| s.name == tag) {
                    s.on = false;
                }
            }
        }
        // Dimensions in sorted tag order, as istio-proxy applies them.
        let mut dims: Vec<(&String, &Value)> = m["dimensions"]
            .as_object()
            .map(|o| o.iter().collect())
            .unwrap_or_default();
        dims.sort_by(|a, b| a.0.cmp(b.0));
        for (tag, v) in dims {
            let src = v.as_str().unwrap_or_default();
            let expr = Expr::parse(src).map_err(|e| {
                format!("{mpath}.dimensions['{tag}']: '{src}' is outside the CEL pilotfish evaluates: {e}")
            })?;
            let idx = match exprs.iter().position(|e| *e == expr) {
                Some(i) => i,
                None => {
                    exprs.push(expr);
                    exprs.len() - 1
                }
            };
            for &t in &targets {
                let standard = TAGS.contains(&tag.as_str());
                match slots[t].iter_mut().find(|s| s.name == *tag) {
                    Some(s) if standard => {
                        s.on = true;
                        s.expr = Some(idx);
                    }
                    _ => slots[t].push(Slot {
                        name: crate::telemetry::naming::sanitize(tag),
                        on: true,
                        expr: Some(idx),
                    }),
                }
            }
        }
    }
    let shapes = slots
        .into_iter()
        .zip(Metric::ALL)
        .map(|(slots, m)| {
            (!dropped[m as usize]).then(|| {
                slots
                    .into_iter()
                    .filter(|s| s.on)
                    .map(|s| {
                        let src = match s.expr {
                            Some(e) => Source::Expr(e),
                            None => Source::Standard(
                                TAGS.iter().position(|t| *t == s.name).unwrap_or_default(),
                            ),
                        };
                        (s.name, src)
                    })
                    .collect()
            })
        })
        .collect();
    Ok(StatsConfig {
        disable_host_header_fallback: json["disable_host_header_fallback"].as_bool() == Some(true),
        tcp_reporting,
        shapes,
        needs_request_headers: exprs.iter().any(Expr::reads_request_headers),
        exprs,
    })
}

/// A proto3 JSON duration (`"5s"`, `"0.500s"`).
fn json_duration(v: &Value) -> Option<Duration> {
    let secs: f64 = v.as_str()?.strip_suffix('s')?.parse().ok()?;
    (secs >= 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(c: &StatsConfig, m: Metric) -> Vec<&str> {
        c.shape(m)
            .unwrap()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect()
    }

    #[test]
    fn defaults_are_istios() {
        let c = compile(&json!({}), "p").unwrap();
        assert!(!c.disable_host_header_fallback);
        assert_eq!(c.tcp_reporting, Some(Duration::from_secs(5)));
        assert_eq!(names(&c, Metric::Requests), TAGS);
        assert_eq!(names(&c, Metric::RequestMessages), TAGS[..20]);
        let tcp = names(&c, Metric::TcpSent);
        assert_eq!(tcp.len(), 23);
        assert_eq!(
            tcp[20..],
            [
                "request_protocol",
                "response_flags",
                "connection_security_policy"
            ]
        );
        let off = compile(&json!({"tcp_reporting_duration": "0s"}), "p").unwrap();
        assert_eq!(off.tcp_reporting, None);
    }

    /// istio-proxy's customized client config: a global removal listed before a
    /// dimension that brings one tag back, a dropped metric, a new dimension.
    #[test]
    fn overrides_apply_in_istio_proxys_order() {
        let c = compile(
            &json!({
                "metrics": [
                    {"tags_to_remove": ["response_flags", "source_principal"]},
                    {"dimensions": {"source_principal": "'malicious'"}},
                    {"name": "requests_total", "dimensions": {"route_name": "xds.route_name", "request_protocol": "request.protocol"}},
                    {"name": "request_duration_milliseconds", "drop": true},
                    {"name": "no_such_metric", "drop": true},
                    {"tags_to_remove": ["not_a_standard_tag"]},
                ]
            }),
            "p",
        )
        .unwrap();
        let n = names(&c, Metric::Requests);
        assert!(!n.contains(&"response_flags"));
        assert_eq!(n[5], "source_principal", "back in its place");
        assert_eq!(n[n.len() - 1], "route_name", "added at the end");
        assert!(c.shape(Metric::Duration).is_none());
        assert!(c.shape(Metric::ResponseBytes).is_some());
        let req = c.shape(Metric::Requests).unwrap();
        let (_, proto) = req.iter().find(|(n, _)| n == "request_protocol").unwrap();
        assert!(matches!(proto, Source::Expr(_)));
        assert_eq!(c.exprs.len(), 3);
        assert!(!c.needs_request_headers);
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let e = compile(
            &json!({"metrics": [{"dimensions": {"x": "size(request.path)"}}]}),
            "p",
        )
        .unwrap_err();
        assert_eq!(
            e,
            "p.metrics[0].dimensions['x']: 'size(request.path)' is outside the CEL pilotfish evaluates: function 'size' is not supported"
        );
        let e = compile(
            &json!({"definitions": [{"name": "custom", "value": "1"}]}),
            "p",
        )
        .unwrap_err();
        assert!(e.starts_with("p.definitions: not supported"), "{e}");
    }
}
