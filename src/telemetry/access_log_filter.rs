//! Access-log filters (`AccessLog.filter`): which requests or connections a log
//! writes, decided on the finished record as Envoy's filters decide.
use crate::http::matchers::{HeaderMatcher, RequestHead};

use super::access_log::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ge,
    Le,
    Ne,
}

impl Op {
    fn holds(self, v: u64, against: u64) -> bool {
        match self {
            Op::Eq => v == against,
            Op::Ge => v >= against,
            Op::Le => v <= against,
            Op::Ne => v != against,
        }
    }
}

#[derive(Debug, Clone)]
pub enum LogFilter {
    /// The response code (0 when there was none).
    StatusCode(Op, u64),
    /// The request's (or connection's) duration, in milliseconds.
    Duration(Op, u64),
    /// Not a health check: pilotfish answers none itself, so every request passes.
    NotHealthCheck,
    /// The request was traced because the service forced it (`x-envoy-force-trace`).
    Traceable,
    /// A share of requests: `numerator` of `denominator`, drawn from the request id
    /// unless `independent`.
    Runtime {
        numerator: u64,
        denominator: u64,
        independent: bool,
    },
    And(Vec<LogFilter>),
    Or(Vec<LogFilter>),
    Header(HeaderMatcher),
    /// Any of these flags (none listed: any flag at all).
    ResponseFlag(Vec<String>),
    /// The gRPC status is (or, `exclude`, is not) one of these.
    GrpcStatus {
        statuses: Vec<u32>,
        exclude: bool,
    },
    /// `envoy.access_loggers.extension_filters.cel` (Istio's Telemetry API
    /// `filter.expression`): the expression is true for the record.
    Cel(crate::istio::stats::cel::Expr),
}

impl LogFilter {
    pub fn admits(&self, r: &Record) -> bool {
        match self {
            LogFilter::StatusCode(op, v) => op.holds(u64::from(r.response_code), *v),
            LogFilter::Duration(op, v) => op.holds(r.duration.as_millis() as u64, *v),
            LogFilter::NotHealthCheck => true,
            LogFilter::Traceable => r.trace_forced,
            LogFilter::Runtime {
                numerator,
                denominator,
                independent,
            } => {
                let draw = (!independent)
                    .then(|| request_id_number(r))
                    .flatten()
                    .unwrap_or_else(|| fastrand::u64(..));
                draw % denominator < *numerator
            }
            LogFilter::And(all) => all.iter().all(|f| f.admits(r)),
            LogFilter::Or(any) => any.iter().any(|f| f.admits(r)),
            LogFilter::Header(m) => {
                let empty = http::HeaderMap::new();
                m.matches(&RequestHead {
                    method: r.method.as_deref().unwrap_or(""),
                    scheme: r.scheme.unwrap_or("http"),
                    authority: r.authority.as_deref().unwrap_or(""),
                    path_and_query: r.path.as_deref().unwrap_or(""),
                    headers: r.request_headers.as_ref().unwrap_or(&empty),
                })
            }
            LogFilter::ResponseFlag(wanted) => {
                let set: Vec<&str> = r
                    .response_flags
                    .as_deref()
                    .unwrap_or("-")
                    .split(',')
                    .filter(|f| !f.is_empty() && *f != "-")
                    .collect();
                if wanted.is_empty() {
                    !set.is_empty()
                } else {
                    set.iter().any(|f| wanted.iter().any(|w| w == f))
                }
            }
            LogFilter::GrpcStatus { statuses, exclude } => {
                // No status: Envoy maps the HTTP status (none at all is UNKNOWN).
                let status =
                    crate::istio::stats::labels::grpc_status(r.grpc_status, r.response_code)
                        .unwrap_or(2);
                statuses.contains(&status) != *exclude
            }
            LogFilter::Cel(expr) => {
                let attrs = crate::istio::stats::attrs::Attrs::of_record(r);
                matches!(
                    expr.eval(&attrs),
                    Some(crate::istio::stats::cel::Val::Bool(true))
                )
            }
        }
    }

    /// The filter reads request headers (they must be kept for it).
    pub fn needs_headers(&self) -> bool {
        match self {
            LogFilter::Header(_) | LogFilter::Runtime { .. } | LogFilter::Cel(_) => true,
            LogFilter::And(f) | LogFilter::Or(f) => f.iter().any(LogFilter::needs_headers),
            _ => false,
        }
    }
}

/// The UUID request id's first eight hex digits, as Envoy's request id extension reads
/// it for sampling.
fn request_id_number(r: &Record) -> Option<u64> {
    let id = r.request_headers.as_ref()?.get("x-request-id")?.as_bytes();
    u64::from_str_radix(std::str::from_utf8(id.get(..8)?).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(code: u16, ms: u64, flags: &str) -> Record {
        Record {
            response_code: code,
            duration: Duration::from_millis(ms),
            response_flags: Some(flags.to_owned()),
            ..Default::default()
        }
    }

    #[test]
    fn comparisons_and_combinations() {
        let r = record(503, 120, "UF,URX");
        assert!(LogFilter::StatusCode(Op::Ge, 500).admits(&r));
        assert!(!LogFilter::StatusCode(Op::Le, 499).admits(&r));
        assert!(LogFilter::Duration(Op::Ge, 100).admits(&r));
        assert!(!LogFilter::Duration(Op::Eq, 100).admits(&r));
        assert!(LogFilter::ResponseFlag(vec![]).admits(&r));
        assert!(LogFilter::ResponseFlag(vec!["URX".into()]).admits(&r));
        assert!(!LogFilter::ResponseFlag(vec!["UH".into()]).admits(&r));
        assert!(!LogFilter::ResponseFlag(vec![]).admits(&record(200, 1, "-")));
        let both = LogFilter::And(vec![
            LogFilter::StatusCode(Op::Ne, 200),
            LogFilter::Duration(Op::Le, 50),
        ]);
        assert!(!both.admits(&r));
        let either = LogFilter::Or(vec![
            LogFilter::StatusCode(Op::Eq, 200),
            LogFilter::Duration(Op::Ge, 100),
        ]);
        assert!(either.admits(&r));
        // An unavailable upstream is gRPC's UNAVAILABLE.
        let g = LogFilter::GrpcStatus {
            statuses: vec![14],
            exclude: false,
        };
        assert!(g.admits(&r));
        assert!(
            !LogFilter::GrpcStatus {
                statuses: vec![14],
                exclude: true
            }
            .admits(&r)
        );
    }
}
