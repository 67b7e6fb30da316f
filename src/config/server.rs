//! The bootstrap's server-wide settings: `stats_config`, `layered_runtime`,
//! `overload_manager`, `application_log_config`, admin's access log, and the fields
//! pilotfish accepts for what they are (`profile_path`, `deferred_stat_options`,
//! `cluster_manager`, `bootstrap_extensions`).
use std::sync::Arc;

use envoy_types::pb::envoy::config::{
    bootstrap::v3::{Bootstrap, runtime_layer},
    metrics::v3::{StatsConfig, stats_matcher, tag_specifier},
};

use super::{model::*, proto, route_config::string_matcher};
use crate::{
    logging::LogFormat,
    runtime::Layer,
    telemetry::{
        naming::{Naming, StatsMatcher},
        tags::{TagProducer, TagRule},
    },
};

type Result<T> = std::result::Result<T, String>;

const DOWNSTREAM_CONNECTIONS: &str =
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig";
const INTERNAL_LISTENER: &str = "envoy.extensions.bootstrap.internal_listener.v3.InternalListener";

/// What the bootstrap sets for the whole process.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    pub naming: Arc<NamingConfig>,
    pub runtime_layers: Vec<Layer>,
    /// The global downstream connection limit (`overload_manager`'s
    /// `global_downstream_max_connections` monitor).
    pub max_downstream_connections: Option<u64>,
    /// `application_log_config.log_format`.
    pub log_format: Option<LogFormat>,
    /// `admin.access_log`.
    pub admin_access_logs: Vec<AccessLogConfig>,
    /// `cluster_manager.outlier_detection.event_log_path`, kept for outlier detection.
    pub outlier_event_log_path: Option<String>,
}

/// `stats_config`, compiled (the store is built from it before anything registers).
#[derive(Debug)]
pub struct NamingConfig {
    pub use_all_default_tags: bool,
    pub tags: Vec<TagRule>,
    pub matcher: StatsMatcherConfig,
    pub buckets: Vec<(crate::http::matchers::StringMatcher, Arc<[f64]>)>,
}

impl Default for NamingConfig {
    /// No `stats_config`: Envoy's default tags, every stat.
    fn default() -> Self {
        NamingConfig {
            use_all_default_tags: true,
            tags: Vec::new(),
            matcher: StatsMatcherConfig::All,
            buckets: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub enum StatsMatcherConfig {
    #[default]
    All,
    RejectAll,
    Inclusion(Vec<crate::http::matchers::StringMatcher>),
    Exclusion(Vec<crate::http::matchers::StringMatcher>),
}

impl NamingConfig {
    /// The store's naming; custom tags compile here (checked at config time already).
    pub fn build(&self) -> Naming {
        let tags = (!self.use_all_default_tags || !self.tags.is_empty())
            .then(|| TagProducer::new(self.use_all_default_tags, &self.tags).ok())
            .flatten();
        Naming {
            tags,
            matcher: match &self.matcher {
                StatsMatcherConfig::All => StatsMatcher::All,
                StatsMatcherConfig::RejectAll => StatsMatcher::RejectAll,
                StatsMatcherConfig::Inclusion(m) => StatsMatcher::Inclusion(m.clone()),
                StatsMatcherConfig::Exclusion(m) => StatsMatcher::Exclusion(m.clone()),
            },
            buckets: self.buckets.clone(),
        }
    }
}

pub fn compile(b: &Bootstrap) -> Result<ServerConfig> {
    let mut out = ServerConfig::default();
    if let Some(s) = &b.stats_config {
        out.naming = Arc::new(stats_config(s, "stats_config")?);
    }
    if let Some(rt) = &b.layered_runtime {
        for (i, l) in rt.layers.iter().enumerate() {
            let lpath = format!("layered_runtime.layers[{i}]");
            let layer = match &l.layer_specifier {
                Some(runtime_layer::LayerSpecifier::StaticLayer(s)) => Layer {
                    name: l.name.clone(),
                    admin: false,
                    values: flatten(s),
                },
                Some(runtime_layer::LayerSpecifier::AdminLayer(_)) => Layer {
                    name: l.name.clone(),
                    admin: true,
                    values: Vec::new(),
                },
                Some(_) => {
                    return Err(format!(
                        "{lpath}: only static_layer and admin_layer are supported"
                    ));
                }
                None => return Err(format!("{lpath}: a layer specifier is required")),
            };
            out.runtime_layers.push(layer);
        }
    }
    if let Some(om) = &b.overload_manager {
        if !om.actions.is_empty() {
            return Err("overload_manager.actions: not supported".into());
        }
        for (i, m) in om.resource_monitors.iter().enumerate() {
            let mpath = format!("overload_manager.resource_monitors[{i}]");
            let any = match &m.config_type {
                Some(
                    envoy_types::pb::envoy::config::overload::v3::resource_monitor::ConfigType::TypedConfig(a),
                ) => a,
                None => return Err(format!("{mpath}.typed_config: required")),
            };
            if proto::type_name(&any.type_url) != DOWNSTREAM_CONNECTIONS {
                return Err(format!("{mpath} ({}): not supported", m.name));
            }
            let c: envoy_types::pb::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig =
                proto::unpack(any).map_err(|e| format!("{mpath}: {e}"))?;
            if c.max_active_downstream_connections <= 0 {
                return Err(format!(
                    "{mpath}.typed_config.max_active_downstream_connections: must be positive"
                ));
            }
            out.max_downstream_connections = Some(c.max_active_downstream_connections as u64);
        }
    }
    if let Some(alc) = &b.application_log_config
        && let Some(f) = &alc.log_format
    {
        use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::application_log_config::log_format::LogFormat as F;
        out.log_format = match &f.log_format {
            Some(F::TextFormat(t)) => Some(LogFormat::Text(t.clone())),
            Some(F::JsonFormat(s)) => {
                let json = proto::to_json(s);
                let map = json.as_object().cloned().unwrap_or_default();
                crate::logging::check_json_format(&map)
                    .map_err(|e| format!("application_log_config.log_format.json_format: {e}"))?;
                Some(LogFormat::Json(map))
            }
            None => None,
        };
    }
    if let Some(admin) = &b.admin {
        out.admin_access_logs = super::compile::access_logs(&admin.access_log, "admin.access_log")?;
    }
    if let Some(cm) = &b.cluster_manager {
        out.outlier_event_log_path = cm
            .outlier_detection
            .as_ref()
            .map(|o| o.event_log_path.clone())
            .filter(|p| !p.is_empty());
    }
    for (i, e) in b.bootstrap_extensions.iter().enumerate() {
        let epath = format!("bootstrap_extensions[{i}]");
        let name = e
            .typed_config
            .as_ref()
            .map(|a| proto::type_name(&a.type_url))
            .unwrap_or("");
        if name != INTERNAL_LISTENER {
            return Err(format!("{epath} ({}): not supported", e.name));
        }
    }
    Ok(out)
}

/// A runtime static layer's keys: nested objects joined with `.`, values as strings.
fn flatten(s: &envoy_types::pb::google::protobuf::Struct) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            serde_json::Value::String(s) => out.push((prefix.to_owned(), s.clone())),
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    walk("", &proto::to_json(s), &mut out);
    out
}

fn stats_config(s: &StatsConfig, path: &str) -> Result<NamingConfig> {
    let mut tags = Vec::new();
    for (i, t) in s.stats_tags.iter().enumerate() {
        let tpath = format!("{path}.stats_tags[{i}]");
        if t.tag_name.is_empty() {
            return Err(format!("{tpath}.tag_name: required"));
        }
        tags.push(match &t.tag_value {
            Some(tag_specifier::TagValue::Regex(r)) if !r.is_empty() => TagRule::Regex {
                name: t.tag_name.clone(),
                regex: r.clone(),
            },
            Some(tag_specifier::TagValue::FixedValue(v)) => TagRule::Fixed {
                name: t.tag_name.clone(),
                value: v.clone(),
            },
            _ => TagRule::Builtin {
                name: t.tag_name.clone(),
            },
        });
    }
    let use_all_default_tags = s.use_all_default_tags.as_ref().is_none_or(|b| b.value);
    // Every rule compiles now, so a bad regex names its field.
    TagProducer::new(use_all_default_tags, &tags).map_err(|e| format!("{path}.{e}"))?;
    let matcher =
        match s
            .stats_matcher
            .as_ref()
            .and_then(|m| m.stats_matcher.as_ref())
        {
            None => StatsMatcherConfig::All,
            Some(stats_matcher::StatsMatcher::RejectAll(true)) => StatsMatcherConfig::RejectAll,
            Some(stats_matcher::StatsMatcher::RejectAll(false)) => StatsMatcherConfig::All,
            Some(stats_matcher::StatsMatcher::InclusionList(l)) => StatsMatcherConfig::Inclusion(
                list(&l.patterns, &format!("{path}.stats_matcher.inclusion_list"))?,
            ),
            Some(stats_matcher::StatsMatcher::ExclusionList(l)) => StatsMatcherConfig::Exclusion(
                list(&l.patterns, &format!("{path}.stats_matcher.exclusion_list"))?,
            ),
        };
    let mut buckets = Vec::new();
    for (i, h) in s.histogram_bucket_settings.iter().enumerate() {
        let hpath = format!("{path}.histogram_bucket_settings[{i}]");
        let m = h
            .r#match
            .as_ref()
            .ok_or_else(|| format!("{hpath}.match: required"))?;
        if h.buckets.is_empty() || h.buckets.windows(2).any(|w| w[0] >= w[1]) || h.buckets[0] <= 0.0
        {
            return Err(format!(
                "{hpath}.buckets: must be positive and strictly increasing"
            ));
        }
        if h.bins.is_some() {
            return Err(format!("{hpath}.bins: not supported"));
        }
        buckets.push((
            string_matcher(m, &format!("{hpath}.match"))?,
            Arc::from(h.buckets.as_slice()),
        ));
    }
    Ok(NamingConfig {
        use_all_default_tags,
        tags,
        matcher,
        buckets,
    })
}

fn list(
    patterns: &[envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher],
    path: &str,
) -> Result<Vec<crate::http::matchers::StringMatcher>> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| string_matcher(p, &format!("{path}.patterns[{i}]")))
        .collect()
}
