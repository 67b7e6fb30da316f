//! A span: the ids, name, kind, timing and tags of one request as this proxy saw it.
use std::{
    borrow::Cow,
    time::{Duration, SystemTime},
};

use super::context::TraceId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Ingress: the connection manager of an inbound listener.
    Server,
    /// Egress: everything else.
    Client,
}

#[derive(Debug, Clone)]
pub struct Span {
    pub trace: TraceId,
    pub id: u64,
    pub parent: Option<u64>,
    pub name: String,
    pub kind: Kind,
    pub start: SystemTime,
    pub duration: Duration,
    pub tags: Vec<(Cow<'static, str>, String)>,
    pub sampled: bool,
    /// Zipkin: this server span shares the client's span id (`shared_span_context`).
    pub shared: bool,
    /// OpenTelemetry: the incoming `tracestate`, and whether the parent came from
    /// another process.
    pub trace_state: String,
    pub remote_parent: bool,
    /// The request failed (`error` tag set): OpenTelemetry's status is ERROR.
    pub error: bool,
}

impl Span {
    pub fn tag(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self.tags.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.tags.push((key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}
