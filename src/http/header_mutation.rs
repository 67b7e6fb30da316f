//! Envoy's route header mutations: `request_headers_to_add`/`_remove` and
//! `response_headers_to_add`/`_remove` at the weighted-cluster, route, virtual-host and
//! route-configuration levels. Each level removes, then adds, with the `append_action`
//! of each header; the levels run most specific first, so with an overwrite the route
//! configuration's value wins unless `most_specific_header_mutations_wins` is set (then
//! the order is reversed). Values may hold Envoy format operators (`%REQ(x)%`,
//! `%DOWNSTREAM_REMOTE_ADDRESS%`, …), rendered per request; `%%` is a literal `%`.
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::telemetry::access_log::{Piece, Record};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    /// `APPEND_IF_EXISTS_OR_ADD` (the default).
    Append,
    /// `ADD_IF_ABSENT`.
    AddIfAbsent,
    /// `OVERWRITE_IF_EXISTS_OR_ADD` (and the deprecated `append: false`).
    Overwrite,
    /// `OVERWRITE_IF_EXISTS`.
    OverwriteIfExists,
}

#[derive(Debug, Clone)]
pub enum Value {
    Static(HeaderValue),
    Formatted(Vec<Piece>),
}

#[derive(Debug, Clone)]
pub struct HeaderAdd {
    pub name: HeaderName,
    pub value: Value,
    pub action: AppendAction,
    /// `keep_empty_value`: without it, a header whose value is empty is not added.
    pub keep_empty: bool,
}

/// One level's mutations of one direction (request or response).
#[derive(Debug, Clone, Default)]
pub struct HeaderMutations {
    pub remove: Vec<HeaderName>,
    pub add: Vec<HeaderAdd>,
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    /// Whether any value needs the request's context to render.
    pub fn is_formatted(&self) -> bool {
        self.add
            .iter()
            .any(|a| matches!(a.value, Value::Formatted(_)))
    }

    /// Applies this level: removals first, then additions. `ctx` is only consulted for
    /// formatted values.
    pub fn apply(&self, headers: &mut HeaderMap, ctx: Option<&Record>) {
        for name in &self.remove {
            headers.remove(name);
        }
        for add in &self.add {
            let value = match &add.value {
                Value::Static(v) => v.clone(),
                Value::Formatted(pieces) => {
                    let rendered = ctx.map(|r| r.render_value(pieces)).unwrap_or_default();
                    match HeaderValue::try_from(rendered) {
                        Ok(v) => v,
                        Err(_) => continue,
                    }
                }
            };
            if value.is_empty() && !add.keep_empty {
                continue;
            }
            match add.action {
                AppendAction::Append => {
                    headers.append(add.name.clone(), value);
                }
                AppendAction::AddIfAbsent => {
                    if !headers.contains_key(&add.name) {
                        headers.insert(add.name.clone(), value);
                    }
                }
                AppendAction::Overwrite => {
                    headers.insert(add.name.clone(), value);
                }
                AppendAction::OverwriteIfExists => {
                    if headers.contains_key(&add.name) {
                        headers.insert(add.name.clone(), value);
                    }
                }
            }
        }
    }
}

/// Applies levels in order (already most specific first, or reversed by config).
pub fn apply_all<'a>(
    levels: impl IntoIterator<Item = &'a HeaderMutations>,
    headers: &mut HeaderMap,
    ctx: Option<&Record>,
) {
    for level in levels {
        level.apply(headers, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::access_log::parse;

    fn add(name: &str, value: &str, action: AppendAction) -> HeaderAdd {
        let pieces = parse(value).unwrap();
        let value = match pieces.as_slice() {
            [] => Value::Static(HeaderValue::from_static("")),
            [Piece::Literal(s)] => Value::Static(HeaderValue::from_str(s).unwrap()),
            _ => Value::Formatted(pieces),
        };
        HeaderAdd {
            name: HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value,
            action,
            keep_empty: false,
        }
    }

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The order and actions Envoy 1.40 showed for the same four levels.
    #[test]
    fn levels_remove_then_add_most_specific_first() {
        use AppendAction::*;
        let level = |remove: &[&str], adds: Vec<HeaderAdd>| HeaderMutations {
            remove: remove
                .iter()
                .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
                .collect(),
            add: adds,
        };
        let wc = level(
            &[],
            vec![
                add("x-level", "wc", Overwrite),
                add("x-multi", "wc", Append),
            ],
        );
        let route = level(
            &["x-removed-by-route", "x-client-remove"],
            vec![
                add("x-level", "route", Overwrite),
                add("x-multi", "route", Append),
                add("x-empty", "", Append),
                add("x-absent", "route", AddIfAbsent),
                add("x-ow", "route", OverwriteIfExists),
                add("x-ow2", "route", OverwriteIfExists),
                add("x-pct", "100%%", Append),
            ],
        );
        let vhost = level(
            &[],
            vec![
                add("x-level", "vhost", Overwrite),
                add("x-multi", "vhost", Append),
                add("x-removed-by-route", "vhost", Append),
            ],
        );
        let global = level(
            &[],
            vec![
                add("x-level", "global", Overwrite),
                add("x-multi", "global", Append),
            ],
        );
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-ow2", "client"),
            ("x-absent", "client"),
            ("x-client-remove", "1"),
            ("x-multi", "client"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        apply_all([&wc, &route, &vhost, &global], &mut h, None);
        assert_eq!(values(&h, "x-level"), ["global"]);
        assert_eq!(
            values(&h, "x-multi"),
            ["client", "wc", "route", "vhost", "global"]
        );
        assert!(!h.contains_key("x-empty"));
        assert_eq!(values(&h, "x-absent"), ["client"]);
        assert!(!h.contains_key("x-ow"));
        assert_eq!(values(&h, "x-ow2"), ["route"]);
        assert!(!h.contains_key("x-client-remove"));
        assert_eq!(values(&h, "x-removed-by-route"), ["vhost"]);
        assert_eq!(values(&h, "x-pct"), ["100%"]);
    }

    #[test]
    fn formatted_values_render_from_the_request() {
        let m = HeaderMutations {
            remove: vec![],
            add: vec![
                add(
                    "x-addr",
                    "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                    AppendAction::Append,
                ),
                add("x-missing", "%REQ(x-none)%", AppendAction::Append),
            ],
        };
        let record = Record {
            downstream_remote: Some("10.1.2.3:4567".parse().unwrap()),
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        m.apply(&mut h, Some(&record));
        assert_eq!(values(&h, "x-addr"), ["10.1.2.3"]);
        // A missing value renders empty, and empty values are not added.
        assert!(!h.contains_key("x-missing"));
    }
}
