//! Zipkin's v2 JSON span list (`collector_endpoint_version: HTTP_JSON`), as Envoy's
//! Zipkin tracer writes it: times in microseconds, the local endpoint named after the
//! node's cluster, the closing annotation (`cr` for a client span, `ss` for a server
//! one), and tags with a value.
use std::{net::IpAddr, time::UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::span::{Kind, Span};

/// Who reports: `localEndpoint` of every span.
#[derive(Debug, Clone)]
pub struct LocalEndpoint {
    pub service_name: String,
    pub address: Option<IpAddr>,
}

fn micros(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[allow(clippy::expect_used, reason = "JSON values always serialize")]
pub fn encode(spans: &[Span], local: &LocalEndpoint) -> Vec<u8> {
    let mut endpoint = Map::new();
    endpoint.insert("serviceName".into(), json!(local.service_name));
    match local.address {
        Some(IpAddr::V4(a)) => {
            endpoint.insert("ipv4".into(), json!(a.to_string()));
        }
        Some(IpAddr::V6(a)) => {
            endpoint.insert("ipv6".into(), json!(a.to_string()));
        }
        None => {}
    }
    endpoint.insert("port".into(), json!(0));
    let endpoint = Value::Object(endpoint);
    let list: Vec<Value> = spans
        .iter()
        .map(|s| {
            let start = micros(s.start);
            let duration = s.duration.as_micros() as u64;
            let mut o = Map::new();
            o.insert("traceId".into(), json!(s.trace.hex()));
            o.insert("id".into(), json!(format!("{:016x}", s.id)));
            if let Some(p) = s.parent {
                o.insert("parentId".into(), json!(format!("{p:016x}")));
            }
            o.insert("name".into(), json!(s.name));
            let (kind, closing) = match s.kind {
                Kind::Client => ("CLIENT", "cr"),
                Kind::Server => ("SERVER", "ss"),
            };
            o.insert("kind".into(), json!(kind));
            o.insert("timestamp".into(), json!(start));
            o.insert("duration".into(), json!(duration));
            o.insert("localEndpoint".into(), endpoint.clone());
            o.insert(
                "annotations".into(),
                json!([{ "timestamp": start + duration, "value": closing }]),
            );
            let tags: Map<String, Value> = s
                .tags
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            if !tags.is_empty() {
                o.insert("tags".into(), Value::Object(tags));
            }
            if s.shared {
                o.insert("shared".into(), json!(true));
            }
            Value::Object(o)
        })
        .collect();
    serde_json::to_vec(&list).expect("JSON values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tracing::context::TraceId;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_client_span_as_envoy_writes_it() {
        let span = Span {
            trace: TraceId {
                high: 0x0930a1cd2e33d23d,
                low: 0xd237f0725c4cffbc,
                wide: true,
            },
            id: 0xd237f0725c4cffbc,
            parent: None,
            name: "details.default.svc.cluster.local:9080/*".into(),
            kind: Kind::Client,
            start: UNIX_EPOCH + Duration::from_micros(1_795_927_948_397_586),
            duration: Duration::from_micros(2778),
            tags: vec![
                ("http.status_code".into(), "200".into()),
                ("zone".into(), String::new()),
            ],
            sampled: true,
            shared: false,
            trace_state: String::new(),
            remote_parent: false,
            error: false,
        };
        let out: Value = serde_json::from_slice(&encode(
            &[span],
            &LocalEndpoint {
                service_name: "productpage.default".into(),
                address: Some("192.0.2.2".parse().unwrap()),
            },
        ))
        .unwrap();
        assert_eq!(
            out,
            json!([{
                "traceId": "0930a1cd2e33d23dd237f0725c4cffbc",
                "id": "d237f0725c4cffbc",
                "name": "details.default.svc.cluster.local:9080/*",
                "kind": "CLIENT",
                "timestamp": 1_795_927_948_397_586u64,
                "duration": 2778,
                "localEndpoint": {"serviceName": "productpage.default", "ipv4": "192.0.2.2", "port": 0},
                "annotations": [{"timestamp": 1_795_927_948_400_364u64, "value": "cr"}],
                "tags": {"http.status_code": "200"},
            }])
        );
        let _ = SystemTime::now();
    }
}
