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

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<Vec<MirrorPolicy>> {
        let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        let desc = super::super::proto::descriptor(
            "envoy.config.route.v3.RouteAction.RequestMirrorPolicy",
        )
        .unwrap();
        let p: RequestMirrorPolicy =
            super::super::proto::to_typed(&super::super::proto::from_json(desc, v).unwrap())
                .unwrap();
        mirror_policies(&[p], "r")
    }

    #[test]
    fn a_policy_names_one_cluster_or_header_and_a_fraction_with_a_value() {
        let p = compile("cluster: m\nruntime_fraction: { default_value: { numerator: 50 } }\n")
            .unwrap();
        assert_eq!(p[0].per_million, 500_000);
        assert!(matches!(p[0].target, MirrorTarget::Cluster(ref c) if c == "m"));
        assert_eq!(
            compile("cluster: m\ncluster_header: x\n").unwrap_err(),
            "r.request_mirror_policies[0]: only one of cluster or cluster_header can be specified"
        );
        assert_eq!(
            compile("runtime_fraction: { default_value: { numerator: 5 } }\n").unwrap_err(),
            "r.request_mirror_policies[0]: exactly one of cluster or cluster_header is required"
        );
        assert_eq!(
            compile("cluster: m\nruntime_fraction: { runtime_key: k }\n").unwrap_err(),
            "r.request_mirror_policies[0].runtime_fraction.default_value: required"
        );
    }
}
