//! A bootstrap's `stats_config` at run time: which stats exist (`stats_matcher`), how
//! their Prometheus names and labels are made (`stats_tags`, `use_all_default_tags`) and
//! which histogram buckets they use (`histogram_bucket_settings`).
use std::sync::Arc;

use super::tags::TagProducer;
use crate::http::matchers::StringMatcher;

#[derive(Debug, Default)]
pub struct Naming {
    /// `None`: Envoy's default tags, which the scopes' own names already follow.
    pub tags: Option<TagProducer>,
    pub matcher: StatsMatcher,
    /// `histogram_bucket_settings`: the first rule matching a histogram's name decides
    /// its bucket bounds.
    pub buckets: Vec<(StringMatcher, Arc<[f64]>)>,
}

/// `stats_matcher`: matched against the full (flat) stat name, as Envoy does. A stat it
/// rejects is never created: it counts into nothing and no output shows it.
#[derive(Debug, Default)]
pub enum StatsMatcher {
    #[default]
    All,
    RejectAll,
    Inclusion(Vec<StringMatcher>),
    Exclusion(Vec<StringMatcher>),
}

impl Naming {
    pub fn is_default(&self) -> bool {
        self.tags.is_none() && matches!(self.matcher, StatsMatcher::All) && self.buckets.is_empty()
    }

    /// Whether the stat named `flat` exists.
    pub fn accepts(&self, flat: &str) -> bool {
        match &self.matcher {
            StatsMatcher::All => true,
            StatsMatcher::RejectAll => false,
            StatsMatcher::Inclusion(m) => m.iter().any(|m| m.matches(flat)),
            StatsMatcher::Exclusion(m) => !m.iter().any(|m| m.matches(flat)),
        }
    }

    /// The Prometheus name (`envoy_` and the tag-extracted name, sanitized later) and the
    /// labels of `flat`, when tags are configured; `None` keeps the scope's own.
    pub fn prometheus(&self, flat: &str) -> Option<(String, Vec<(String, String)>)> {
        let tags = self.tags.as_ref()?;
        let (name, labels) = tags.produce(flat);
        let labels = labels.into_iter().map(|(k, v)| (sanitize(&k), v)).collect();
        Some((format!("envoy_{name}"), labels))
    }

    /// The bucket bounds of a histogram named `flat`, when a rule sets them.
    pub fn buckets_for(&self, flat: &str) -> Option<Arc<[f64]>> {
        self.buckets
            .iter()
            .find(|(m, _)| m.matches(flat))
            .map(|(_, b)| b.clone())
    }
}

/// Envoy's Prometheus sanitizing: every character outside `[a-zA-Z0-9_]` becomes `_`.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
