//! Envoy's layered runtime (`layered_runtime`): string keys from static layers and the
//! admin layer (`/runtime_modify`), later layers winning. `/runtime` lists them as Envoy
//! does. The keys pilotfish acts on are read at startup; the rest are kept and shown
//! (Envoy ignores keys it has no use for, and so does pilotfish).
use crate::sync::MutexExt;
use std::sync::Mutex;

/// Runtime keys that change what pilotfish does.
pub mod keys {
    /// The deprecated global downstream connection limit (Istio 1.22's bootstrap).
    pub const GLOBAL_MAX_CONNECTIONS: &str = "overload.global_downstream_max_connections";
    /// `false` lets a request path carry a `#fragment`, which is stripped (Envoy answers
    /// 400 by default).
    pub const REJECT_PATH_WITH_FRAGMENT: &str =
        "envoy.reloadable_features.http_reject_path_with_fragment";
}

#[derive(Debug, Default)]
pub struct Runtime {
    /// Layer names and their key/values, in order; the admin layer (if configured) is
    /// the one `/runtime_modify` writes.
    layers: Mutex<Vec<Layer>>,
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub name: String,
    pub admin: bool,
    pub values: Vec<(String, String)>,
}

impl Runtime {
    pub fn new(layers: Vec<Layer>) -> Self {
        Runtime {
            layers: Mutex::new(layers),
        }
    }

    /// The final value of `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        let layers = self.layers.locked();
        layers
            .iter()
            .rev()
            .find_map(|l| {
                l.values
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
            })
            .filter(|v| !v.is_empty())
    }

    pub fn get_bool(&self, key: &str, default: bool) -> bool {
        match self.get(key).as_deref() {
            Some("true") => true,
            Some("false") => false,
            _ => default,
        }
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        // A number from a static layer reads as a double (`5.0`): whole ones count.
        v.parse().ok().or_else(|| {
            v.parse::<f64>()
                .ok()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        })
    }

    /// `/runtime_modify?k=v&…`: sets keys in the admin layer (an empty value deletes).
    /// Without an admin layer, Envoy refuses; so does this (returns false).
    pub fn modify(&self, pairs: &[(String, String)]) -> bool {
        let mut layers = self.layers.locked();
        let Some(admin) = layers.iter_mut().find(|l| l.admin) else {
            return false;
        };
        for (k, v) in pairs {
            admin.values.retain(|(ak, _)| ak != k);
            if !v.is_empty() {
                admin.values.push((k.clone(), v.clone()));
            }
        }
        true
    }

    /// Envoy's `/runtime`: every key with its value in each layer and the final value.
    pub fn render_json(&self) -> String {
        let layers = self.layers.locked();
        let mut keys: Vec<&str> = layers
            .iter()
            .flat_map(|l| l.values.iter().map(|(k, _)| k.as_str()))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut entries = serde_json::Map::new();
        for k in keys {
            let values: Vec<String> = layers
                .iter()
                .map(|l| {
                    l.values
                        .iter()
                        .find(|(lk, _)| lk == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                })
                .collect();
            let last = values.iter().rev().find(|v| !v.is_empty()).cloned();
            entries.insert(
                k.to_owned(),
                serde_json::json!({ "layer_values": values, "final_value": last.unwrap_or_default() }),
            );
        }
        let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
        serde_json::to_string_pretty(&serde_json::json!({ "entries": entries, "layers": names }))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_layers_win_and_the_admin_layer_is_writable() {
        let rt = Runtime::new(vec![
            Layer {
                name: "global config".into(),
                admin: false,
                values: vec![
                    ("a".into(), "1".into()),
                    (keys::REJECT_PATH_WITH_FRAGMENT.into(), "false".into()),
                ],
            },
            Layer {
                name: "admin".into(),
                admin: true,
                values: vec![],
            },
        ]);
        assert_eq!(rt.get("a").as_deref(), Some("1"));
        assert!(!rt.get_bool(keys::REJECT_PATH_WITH_FRAGMENT, true));
        assert!(rt.modify(&[("a".into(), "2".into()), ("b".into(), "x".into())]));
        assert_eq!(rt.get_u64("a"), Some(2));
        // A static layer's numbers are doubles.
        assert!(rt.modify(&[("n".into(), "5.0".into()), ("f".into(), "0.5".into())]));
        assert_eq!(rt.get_u64("n"), Some(5));
        assert_eq!(rt.get_u64("f"), None);
        let json: serde_json::Value = serde_json::from_str(&rt.render_json()).unwrap();
        assert_eq!(
            json["layers"],
            serde_json::json!(["global config", "admin"])
        );
        assert_eq!(
            json["entries"]["a"],
            serde_json::json!({ "layer_values": ["1", "2"], "final_value": "2" })
        );
        assert_eq!(
            json["entries"]["b"]["layer_values"],
            serde_json::json!(["", "x"])
        );
        // An empty value deletes from the admin layer.
        rt.modify(&[("a".into(), String::new())]);
        assert_eq!(rt.get("a").as_deref(), Some("1"));
        assert!(!Runtime::default().modify(&[("a".into(), "1".into())]));
    }
}
