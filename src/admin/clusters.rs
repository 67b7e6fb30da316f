//! `/clusters` as Envoy prints it: `cluster::…` text lines, or `?format=json` as
//! `envoy.admin.v3.Clusters` (what `istioctl proxy-config endpoint` decodes).
use std::fmt::Write;

use envoy_types::pb::envoy::{
    admin::v3::{
        ClusterStatus, Clusters, HostHealthStatus, HostStatus, SimpleMetric, simple_metric,
    },
    config::{
        cluster::v3::{CircuitBreakers, circuit_breakers::Thresholds},
        core::v3::{Address, HealthStatus, Locality, Pipe, RoutingPriority, SocketAddress},
    },
};
use envoy_types::pb::google::protobuf::UInt32Value;
use http::StatusCode;

use super::{Query, Reply};
use crate::{
    config::{EdsHealth, Limits},
    upstream::{Cluster, ClusterManager, Host},
};

/// The per-host counters Envoy lists, in its order.
const HOST_COUNTERS: [&str; 6] = [
    "cx_connect_fail",
    "cx_total",
    "rq_error",
    "rq_success",
    "rq_timeout",
    "rq_total",
];
const HOST_GAUGES: [&str; 3] = ["cx_active", "rq_active", "rq_pending_active"];

pub fn handle(cm: &ClusterManager, query: &Query) -> Reply {
    let all = cm.snapshot();
    let mut clusters: Vec<&std::sync::Arc<Cluster>> = all.values().collect();
    clusters.sort_by(|a, b| a.name().cmp(b.name()));
    if query.get("format") == Some("json") {
        let msg = Clusters {
            cluster_statuses: clusters.iter().map(|c| status(c)).collect(),
        };
        let json = crate::config::proto::to_json(&msg);
        crate::config::proto::release_pool();
        return Reply::new(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        );
    }
    let mut out = String::new();
    for c in clusters {
        text(&mut out, c);
    }
    Reply::text(StatusCode::OK, out)
}

fn text(out: &mut String, c: &Cluster) {
    let n = c.name();
    let _ = writeln!(out, "{n}::observability_name::{}", c.stat_name());
    for (prio, l) in [
        ("default_priority", &c.config.breakers.default),
        ("high_priority", &c.config.breakers.high),
    ] {
        for (k, v) in [
            ("max_connections", l.max_connections),
            ("max_pending_requests", l.max_pending_requests),
            ("max_requests", l.max_requests),
            ("max_retries", l.max_retries),
        ] {
            let _ = writeln!(out, "{n}::{prio}::{k}::{v}");
        }
    }
    let _ = writeln!(out, "{n}::added_via_api::{}", c.config.added_via_api);
    for h in c.hosts().iter() {
        let a = host_name(h);
        let attrs = h.attrs();
        let mut stats: Vec<&str> = HOST_COUNTERS.iter().chain(&HOST_GAUGES).copied().collect();
        stats.sort_unstable();
        for s in stats {
            let v = match s {
                "rq_active" => u64::from(h.active()),
                _ => h.counters.get(s).unwrap_or(0),
            };
            let _ = writeln!(out, "{n}::{a}::{s}::{v}");
        }
        let hostname = h.hostname.as_deref().unwrap_or("");
        let _ = writeln!(out, "{n}::{a}::hostname::{hostname}");
        let _ = writeln!(out, "{n}::{a}::health_flags::{}", h.health_flags());
        let _ = writeln!(out, "{n}::{a}::weight::{}", attrs.weight);
        let l = &attrs.locality;
        for (k, v) in [
            ("region", &l.region),
            ("zone", &l.zone),
            ("sub_zone", &l.sub_zone),
        ] {
            let _ = writeln!(out, "{n}::{a}::{k}::{v}");
        }
        let _ = writeln!(out, "{n}::{a}::canary::{}", attrs.canary);
        let _ = writeln!(out, "{n}::{a}::priority::{}", attrs.priority);
        let _ = writeln!(
            out,
            "{n}::{a}::success_rate::{}",
            h.monitor.shown_success_rate(false)
        );
        let _ = writeln!(
            out,
            "{n}::{a}::local_origin_success_rate::{}",
            h.monitor.shown_success_rate(true)
        );
    }
}

/// A pipe host by its path, others as `ip:port`.
fn host_name(h: &Host) -> String {
    match &h.pipe {
        Some(p) => p.display().to_string(),
        None => h.addr.to_string(),
    }
}

fn status(c: &Cluster) -> ClusterStatus {
    let thresholds = |l: &Limits, priority: RoutingPriority| Thresholds {
        priority: priority as i32,
        max_connections: Some(UInt32Value {
            value: l.max_connections,
        }),
        max_pending_requests: Some(UInt32Value {
            value: l.max_pending_requests,
        }),
        max_requests: Some(UInt32Value {
            value: l.max_requests,
        }),
        max_retries: Some(UInt32Value {
            value: l.max_retries,
        }),
        ..Default::default()
    };
    ClusterStatus {
        name: c.name().to_owned(),
        added_via_api: c.config.added_via_api,
        observability_name: c.stat_name().to_owned(),
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![
                thresholds(&c.config.breakers.default, RoutingPriority::Default),
                thresholds(&c.config.breakers.high, RoutingPriority::High),
            ],
            ..Default::default()
        }),
        host_statuses: c
            .hosts()
            .iter()
            .map(|h| HostStatus {
                address: Some(address(h)),
                stats: HOST_COUNTERS
                    .iter()
                    .map(|n| {
                        let mut m = metric(n, simple_metric::Type::Counter);
                        m.value = h.counters.get(n).unwrap_or(0);
                        m
                    })
                    .chain(HOST_GAUGES.iter().map(|n| {
                        let mut m = metric(n, simple_metric::Type::Gauge);
                        if *n == "rq_active" {
                            m.value = u64::from(h.active());
                        }
                        m
                    }))
                    .collect(),
                health_status: Some(HostHealthStatus {
                    eds_health_status: match h.attrs().health {
                        EdsHealth::Healthy => HealthStatus::Healthy,
                        EdsHealth::Unhealthy => HealthStatus::Unhealthy,
                        EdsHealth::Degraded => HealthStatus::Degraded,
                        EdsHealth::Draining => HealthStatus::Draining,
                    } as i32,
                    failed_outlier_check: h.is_ejected(),
                    failed_active_health_check: h.is_hc_failed(),
                    ..Default::default()
                }),
                weight: h.attrs().weight,
                priority: h.attrs().priority,
                hostname: h.hostname.as_deref().unwrap_or("").to_owned(),
                locality: Some(Locality {
                    region: h.attrs().locality.region.clone(),
                    zone: h.attrs().locality.zone.clone(),
                    sub_zone: h.attrs().locality.sub_zone.clone(),
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn metric(name: &str, t: simple_metric::Type) -> SimpleMetric {
    SimpleMetric {
        r#type: t as i32,
        value: 0,
        name: name.to_owned(),
    }
}

fn address(h: &Host) -> Address {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    Address {
        address: Some(match &h.pipe {
            Some(p) => address::Address::Pipe(Pipe {
                path: p.display().to_string(),
                ..Default::default()
            }),
            None => address::Address::SocketAddress(SocketAddress {
                address: h.addr.ip().to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(
                    h.addr.port().into(),
                )),
                ..Default::default()
            }),
        }),
    }
}
