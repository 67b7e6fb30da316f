//! A request's dynamic metadata: what one HTTP filter leaves for the next ones, under
//! the writing filter's namespace (Envoy's `StreamInfo::dynamicMetadata`). The RBAC
//! filter leaves its shadow decision here, which gates Istio's ext_authz filter.
//!
//! Values are strings: every producer pilotfish has writes strings.

/// The namespace the HTTP RBAC filter writes under (whatever its configured name).
pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";

#[derive(Debug, Default)]
pub struct DynamicMetadata(Vec<(&'static str, String, String)>);

impl DynamicMetadata {
    /// Sets `key` in `namespace`, replacing an earlier value.
    pub fn set(&mut self, namespace: &'static str, key: String, value: String) {
        match self
            .0
            .iter_mut()
            .find(|(n, k, _)| *n == namespace && *k == key)
        {
            Some(slot) => slot.2 = value,
            None => self.0.push((namespace, key, value)),
        }
    }

    /// The value at `path` in `namespace`. Values are flat, so only one-key paths find
    /// anything (a longer path names a nested value, which is never there).
    pub fn get(&self, namespace: &str, path: &[String]) -> Option<&str> {
        let [key] = path else { return None };
        self.0
            .iter()
            .find(|(n, k, _)| *n == namespace && k == key)
            .map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_and_get_reads_one_key_paths() {
        let mut m = DynamicMetadata::default();
        m.set(HTTP_RBAC, "a".into(), "1".into());
        m.set(HTTP_RBAC, "a".into(), "2".into());
        assert_eq!(m.get(HTTP_RBAC, &["a".into()]), Some("2"));
        assert_eq!(m.get("other", &["a".into()]), None);
        assert_eq!(m.get(HTTP_RBAC, &["a".into(), "b".into()]), None);
    }
}
