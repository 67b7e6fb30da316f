//! Envoy's `MetadataMatcher` on a request's dynamic metadata: the value at a filter's
//! namespace and key path, checked by a `ValueMatcher`. RBAC's `metadata` principals and
//! permissions (Istio's JWT claims) and ext_authz's `filter_enabled_metadata` use it.
use serde_json::Value;

use super::{dynamic_metadata::DynamicMetadata, matchers::StringMatcher};

#[derive(Debug, Clone)]
pub struct MetadataMatcher {
    pub filter: String,
    pub path: Vec<String>,
    pub value: ValueMatcher,
    pub invert: bool,
}

#[derive(Debug, Clone)]
pub enum ValueMatcher {
    /// `null_match`: the value is JSON null.
    Null,
    /// `double_match`: a number, in `[start, end)` or equal.
    Double(DoubleMatch),
    String(StringMatcher),
    Bool(bool),
    /// `present_match`: whether there is a value at all.
    Present(bool),
    /// `list_match.one_of`: a list one of whose elements matches.
    ListOneOf(Box<ValueMatcher>),
    /// `or_match`: any of these.
    Or(Vec<ValueMatcher>),
}

#[derive(Debug, Clone, Copy)]
pub enum DoubleMatch {
    Range(f64, f64),
    Exact(f64),
}

impl MetadataMatcher {
    pub fn matches(&self, metadata: Option<&DynamicMetadata>) -> bool {
        let found = metadata.and_then(|m| m.get(&self.filter, &self.path));
        self.value.matches(found) != self.invert
    }
}

impl ValueMatcher {
    /// `None`: nothing at the path (Envoy's unset value).
    pub fn matches(&self, v: Option<&Value>) -> bool {
        match (self, v) {
            (ValueMatcher::Present(want), v) => *want == v.is_some(),
            (_, None) => false,
            (ValueMatcher::Null, Some(v)) => v.is_null(),
            (ValueMatcher::Double(d), Some(Value::Number(n))) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                match d {
                    DoubleMatch::Range(a, b) => *a <= x && x < *b,
                    DoubleMatch::Exact(e) => x == *e,
                }
            }
            (ValueMatcher::String(m), Some(Value::String(s))) => m.matches(s),
            (ValueMatcher::Bool(b), Some(Value::Bool(x))) => b == x,
            (ValueMatcher::ListOneOf(m), Some(Value::Array(items))) => {
                items.iter().any(|i| m.matches(Some(i)))
            }
            (ValueMatcher::Or(all), v) => all.iter().any(|m| m.matches(v)),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exact(x: &str) -> StringMatcher {
        StringMatcher {
            kind: super::super::matchers::StringMatch::Exact(x.into()),
            ignore_case: false,
        }
    }

    #[test]
    fn values_match_as_envoy_matches_them() {
        let s = |x: &str| ValueMatcher::String(exact(x));
        assert!(s("a").matches(Some(&json!("a"))));
        assert!(!s("a").matches(Some(&json!(["a"]))));
        assert!(ValueMatcher::ListOneOf(Box::new(s("a"))).matches(Some(&json!(["b", "a"]))));
        assert!(!ValueMatcher::ListOneOf(Box::new(s("a"))).matches(Some(&json!("a"))));
        assert!(ValueMatcher::Present(true).matches(Some(&json!(null))));
        assert!(ValueMatcher::Present(false).matches(None));
        assert!(!ValueMatcher::Null.matches(None));
        assert!(ValueMatcher::Double(DoubleMatch::Range(1.0, 2.0)).matches(Some(&json!(1))));
        assert!(!ValueMatcher::Double(DoubleMatch::Range(1.0, 2.0)).matches(Some(&json!(2))));
        assert!(
            ValueMatcher::Or(vec![s("x"), ValueMatcher::Bool(true)]).matches(Some(&json!(true)))
        );
    }

    #[test]
    fn a_path_reads_nested_claims() {
        let mut md = DynamicMetadata::default();
        md.set(
            super::super::dynamic_metadata::JWT_AUTHN,
            "iss".into(),
            json!({"sub": "u", "groups": ["g1", "g2"]}),
        );
        let m = MetadataMatcher {
            filter: "envoy.filters.http.jwt_authn".into(),
            path: vec!["iss".into(), "groups".into()],
            value: ValueMatcher::ListOneOf(Box::new(ValueMatcher::String(exact("g2")))),
            invert: false,
        };
        assert!(m.matches(Some(&md)));
        assert!(!m.matches(None));
        assert!(MetadataMatcher { invert: true, ..m }.matches(None));
    }
}
