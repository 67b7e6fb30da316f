//! Compiles `request_mirror_policies` (route configuration, virtual host or route).
use envoy_types::pb::envoy::config::route::v3::route_action::RequestMirrorPolicy;

use crate::http::mirror::{MirrorPolicy, MirrorTarget};

type Result<T> = std::result::Result<T, String>;

pub fn mirror_policies(list: &[RequestMirrorPolicy], path: &str) -> Result<Vec<MirrorPolicy>> {
    list.iter()
        .enumerate()
        .map(|(i, p)| mirror_policy(p, &format!("{path}.request_mirror_policies[{i}]")))
        .collect()
}

fn mirror_policy(p: &RequestMirrorPolicy, path: &str) -> Result<MirrorPolicy> {
    let target = match (p.cluster.is_empty(), p.cluster_header.is_empty()) {
        (false, true) => MirrorTarget::Cluster(p.cluster.clone()),
        (true, false) => MirrorTarget::Header(
            http::HeaderName::from_bytes(p.cluster_header.to_ascii_lowercase().as_bytes())
                .map_err(|_| {
                    format!(
                        "{path}.cluster_header: '{}' is not a header name",
                        p.cluster_header
                    )
                })?,
        ),
        (false, false) => {
            return Err(format!(
                "{path}: only one of cluster or cluster_header can be specified"
            ));
        }
        (true, true) => {
            return Err(format!(
                "{path}: exactly one of cluster or cluster_header is required"
            ));
        }
    };
    let per_million = match &p.runtime_fraction {
        Some(f) => {
            let fpath = format!("{path}.runtime_fraction.default_value");
            if f.default_value.is_none() {
                return Err(format!("{fpath}: required"));
            }
            super::http_filters::per_million(f.default_value.as_ref(), &fpath)?
        }
        None => 1_000_000,
    };
    Ok(MirrorPolicy {
        target,
        per_million,
        keep_host: p.disable_shadow_host_suffix_append,
    })
}
