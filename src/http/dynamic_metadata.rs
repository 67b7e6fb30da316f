//! A request's dynamic metadata: what one HTTP filter leaves for the next ones, under
//! the writing filter's namespace (Envoy's `StreamInfo::dynamicMetadata`). The RBAC
//! filter leaves its shadow decision here (which gates Istio's ext_authz filter), and
//! jwt_authn a verified token's payload (which RBAC's `metadata` matchers read).
//!
//! Values are JSON values, as Envoy's are `google.protobuf.Value`s.
use serde_json::Value;

/// The namespace the HTTP RBAC filter writes under (whatever its configured name).
pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
/// The namespace jwt_authn writes under.
pub const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";

#[derive(Debug, Default)]
pub struct DynamicMetadata(Vec<(&'static str, String, Value)>);

impl DynamicMetadata {
    /// Sets `key` in `namespace`, replacing an earlier value.
    pub fn set(&mut self, namespace: &'static str, key: String, value: Value) {
        match self
            .0
            .iter_mut()
            .find(|(n, k, _)| *n == namespace && *k == key)
        {
            Some(slot) => slot.2 = value,
            None => self.0.push((namespace, key, value)),
        }
    }

    /// The value at `path` in `namespace`: the first key names a top-level value, each
    /// further key a field of the object before it.
    pub fn get(&self, namespace: &str, path: &[String]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        let mut v = self
            .0
            .iter()
            .find(|(n, k, _)| *n == namespace && k == first)
            .map(|(_, _, v)| v)?;
        for key in rest {
            v = v.as_object()?.get(key)?;
        }
        Some(v)
    }

    /// The value at `path` as text: a string as it is, anything else as JSON.
    pub fn text(&self, namespace: &str, path: &[String]) -> Option<String> {
        self.get(namespace, path).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_and_get_walks_nested_paths() {
        let mut m = DynamicMetadata::default();
        m.set(HTTP_RBAC, "a".into(), "1".into());
        m.set(HTTP_RBAC, "a".into(), "2".into());
        assert_eq!(m.get(HTTP_RBAC, &["a".into()]), Some(&Value::from("2")));
        assert_eq!(m.get("other", &["a".into()]), None);
        assert_eq!(m.get(HTTP_RBAC, &["a".into(), "b".into()]), None);
        m.set(
            JWT_AUTHN,
            "p".into(),
            serde_json::json!({"sub": "x", "n": {"k": 1}}),
        );
        assert_eq!(
            m.text(JWT_AUTHN, &["p".into(), "n".into(), "k".into()]),
            Some("1".into())
        );
        assert_eq!(
            m.text(JWT_AUTHN, &["p".into(), "sub".into()]),
            Some("x".into())
        );
        assert_eq!(m.get(JWT_AUTHN, &[]), None);
    }
}
