//! A cluster's transport sockets at run time: the TLS contexts of `transport_socket`
//! and `transport_socket_matches`, bound to the secret store when the cluster is built,
//! and the pick per host by its `envoy.transport_socket_match` metadata.
use std::sync::Arc;

use super::Host;
use crate::{
    config::TransportSockets,
    telemetry::stats::{Counter, Store},
    tls::{ClientTls, SecretStore},
};

#[derive(Debug, Default)]
pub struct Transports {
    default: Option<ClientTls>,
    /// One per `transport_socket_matches` entry (`None`: raw bytes).
    matches: Vec<Option<ClientTls>>,
    /// `<match name>.total_match_count` per entry, then `default.total_match_count`:
    /// hosts that resolved to each socket, counted once per host as Envoy counts them.
    match_counts: Vec<Counter>,
    /// Why the contexts could not be built (an SDS source that is not a static cluster):
    /// every connection fails with it.
    error: Option<String>,
}

impl Transports {
    /// Binds the contexts of `config` in the scope `cluster.<stat name>`.
    pub fn new(
        config: &TransportSockets,
        secrets: &SecretStore,
        store: &Arc<Store>,
        stat_name: &str,
    ) -> Self {
        let scope = format!("cluster.{stat_name}");
        let match_counts = config
            .matches
            .iter()
            .map(|m| m.name.as_str())
            .chain(["default"])
            .map(|n| store.counter_tagged_by_default(format!("{scope}.{n}.total_match_count")))
            .collect();
        let build = |ctx: &Option<Arc<crate::config::tls::TlsContext>>| {
            ctx.as_deref()
                .map(|c| ClientTls::new(c, secrets, store, &scope))
                .transpose()
        };
        let built = (|| {
            let default = build(&config.default)?;
            let matches = config
                .matches
                .iter()
                .map(|m| build(&m.tls))
                .collect::<Result<Vec<_>, String>>()?;
            Ok::<_, String>((default, matches))
        })();
        match built {
            Ok((default, matches)) => Transports {
                default,
                matches,
                match_counts,
                error: None,
            },
            Err(e) => {
                tracing::warn!("cluster '{stat_name}': TLS: {e}");
                Transports {
                    error: Some(e),
                    match_counts,
                    ..Default::default()
                }
            }
        }
    }

    /// Counts the socket `host` resolves to, the first time it is seen.
    pub fn count(&self, config: &TransportSockets, host: &Host) {
        use std::sync::atomic::Ordering;
        if self.match_counts.is_empty() || host.socket_counted.swap(true, Ordering::Relaxed) {
            return;
        }
        let i = config
            .pick(host.attrs().socket_metadata.as_deref())
            .unwrap_or(config.matches.len());
        if let Some(c) = self.match_counts.get(i) {
            c.inc();
        }
    }

    /// The TLS context for connections to `host` (`None`: raw bytes).
    pub fn for_host(
        &self,
        config: &TransportSockets,
        host: &Host,
    ) -> Result<Option<&ClientTls>, String> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.matches.is_empty() {
            return Ok(self.default.as_ref());
        }
        let attrs = host.attrs();
        Ok(match config.pick(attrs.socket_metadata.as_deref()) {
            Some(i) => self.matches.get(i).and_then(Option::as_ref),
            None => self.default.as_ref(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{LbMetadata, SocketMatch, TransportSockets};

    fn md(kv: &[(&str, &str)]) -> LbMetadata {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect()
    }

    fn m(name: &str, kv: &[(&str, &str)]) -> SocketMatch {
        SocketMatch {
            name: name.into(),
            criteria: md(kv),
            tls: None,
        }
    }

    #[test]
    fn the_first_match_the_metadata_contains_wins() {
        let t = TransportSockets {
            default: None,
            matches: vec![m("istio", &[("tlsMode", "istio")]), m("disabled", &[])],
        };
        let istio = md(&[("tlsMode", "istio"), ("x", "y")]);
        assert_eq!(t.pick(Some(&istio)), Some(0));
        assert_eq!(t.pick(Some(&md(&[("tlsMode", "disabled")]))), Some(1));
        assert_eq!(t.pick(None), Some(1), "an empty match takes every host");
        let only = TransportSockets {
            default: None,
            matches: vec![m("istio", &[("tlsMode", "istio")])],
        };
        assert_eq!(
            only.pick(None),
            None,
            "no match: the cluster's transport_socket"
        );
    }
}
