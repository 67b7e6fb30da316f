//! Compiles a `RetryPolicy` (route or virtual host) into [`RetryPolicy`].
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::{RetryPolicy as RetryPolicyPb, retry_policy};

use super::{compile::duration, proto, route_config::header_matcher};
use crate::http::retry::{
    RetryOn, RetryPolicy,
    policy::{RateLimitedBackOff, ResetFormat},
};

type Result<T> = std::result::Result<T, String>;

const PREVIOUS_HOSTS: &str = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";
const OMIT_CANARY_HOSTS: &str =
    "envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate";
const OMIT_HOST_METADATA: &str =
    "envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig";
const PREVIOUS_PRIORITIES: &str =
    "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig";

pub fn retry_policy(p: &RetryPolicyPb, path: &str) -> Result<RetryPolicy> {
    let retry_on =
        RetryOn::parse_config(&p.retry_on).map_err(|e| format!("{path}.retry_on: {e}"))?;
    let mut out = RetryPolicy {
        retry_on,
        num_retries: p.num_retries.as_ref().map_or(1, |v| v.value),
        per_try_timeout: p
            .per_try_timeout
            .as_ref()
            .map(duration)
            .filter(|d| !d.is_zero()),
        per_try_idle_timeout: p
            .per_try_idle_timeout
            .as_ref()
            .map(duration)
            .filter(|d| !d.is_zero()),
        ..Default::default()
    };
    if let Some(b) = &p.retry_back_off {
        let bpath = format!("{path}.retry_back_off");
        let base = b
            .base_interval
            .as_ref()
            .map(duration)
            .ok_or_else(|| format!("{bpath}.base_interval: required"))?;
        if base < Duration::from_millis(1) {
            return Err(format!("{bpath}.base_interval: must be at least 1ms"));
        }
        let max = b.max_interval.as_ref().map_or(base * 10, duration);
        if max < base {
            return Err(format!(
                "{bpath}.max_interval: must be greater than or equal to the base_interval"
            ));
        }
        out.back_off = (base, max);
    }
    if let Some(rl) = &p.rate_limited_retry_back_off {
        let rpath = format!("{path}.rate_limited_retry_back_off");
        if rl.reset_headers.is_empty() {
            return Err(format!("{rpath}.reset_headers: at least one is required"));
        }
        let reset_headers = rl
            .reset_headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| {
                        format!(
                            "{rpath}.reset_headers[{i}].name: '{}' is not a header name",
                            h.name
                        )
                    })?;
                let format = match h.format {
                    0 => ResetFormat::Seconds,
                    1 => ResetFormat::UnixTimestamp,
                    f => return Err(format!("{rpath}.reset_headers[{i}].format: unknown {f}")),
                };
                Ok((name, format))
            })
            .collect::<Result<_>>()?;
        out.rate_limited_back_off = Some(RateLimitedBackOff {
            reset_headers,
            max_interval: rl
                .max_interval
                .as_ref()
                .map_or(Duration::from_secs(300), duration),
        });
    }
    out.retriable_status_codes = p
        .retriable_status_codes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            u16::try_from(*c)
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| {
                    format!("{path}.retriable_status_codes[{i}]: {c} is not an HTTP status")
                })
        })
        .collect::<Result<_>>()?;
    out.retriable_headers = p
        .retriable_headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(h, &format!("{path}.retriable_headers[{i}]")))
        .collect::<Result<_>>()?;
    out.retriable_request_headers = p
        .retriable_request_headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(h, &format!("{path}.retriable_request_headers[{i}]")))
        .collect::<Result<_>>()?;
    for (i, pred) in p.retry_host_predicate.iter().enumerate() {
        let ppath = format!("{path}.retry_host_predicate[{i}]");
        let any = pred
            .config_type
            .as_ref()
            .map(|retry_policy::retry_host_predicate::ConfigType::TypedConfig(a)| a);
        match typed_name(any) {
            Some(PREVIOUS_HOSTS) => out.previous_hosts = true,
            Some(OMIT_CANARY_HOSTS) => out.omit_canary_hosts = true,
            Some(OMIT_HOST_METADATA) => {
                use envoy_types::pb::envoy::extensions::retry::host::omit_host_metadata::v3::OmitHostMetadataConfig;
                let cfg: OmitHostMetadataConfig =
                    proto::unpack(any.ok_or_else(|| format!("{ppath}.typed_config: required"))?)
                        .map_err(|e| format!("{ppath}.typed_config: {e}"))?;
                // Only the `envoy.lb` namespace is compared, as in Envoy; with none,
                // the predicate rejects no host.
                out.omit_host_metadata = cfg
                    .metadata_match
                    .as_ref()
                    .and_then(|m| m.filter_metadata.get("envoy.lb"))
                    .map(|s| super::compile::struct_json(s).into_iter().collect())
                    .unwrap_or_default();
            }
            Some(other) => return Err(format!("{ppath}.typed_config ({other}): not supported")),
            None => return Err(format!("{ppath}.typed_config: required")),
        }
    }
    if let Some(prio) = &p.retry_priority {
        let ppath = format!("{path}.retry_priority");
        let any = prio
            .config_type
            .as_ref()
            .map(|retry_policy::retry_priority::ConfigType::TypedConfig(a)| a);
        match typed_name(any) {
            Some(PREVIOUS_PRIORITIES) => {
                use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
                let cfg: PreviousPrioritiesConfig =
                    proto::unpack(any.ok_or_else(|| format!("{ppath}.typed_config: required"))?)
                        .map_err(|e| format!("{ppath}.typed_config: {e}"))?;
                if cfg.update_frequency <= 0 {
                    return Err(format!(
                        "{ppath}.typed_config.update_frequency: must be greater than 0"
                    ));
                }
                out.previous_priorities = Some(cfg.update_frequency as u32);
            }
            Some(other) => return Err(format!("{ppath}.typed_config ({other}): not supported")),
            None => return Err(format!("{ppath}.typed_config: required")),
        }
    }
    out.host_selection_max_attempts = match p.host_selection_retry_max_attempts {
        n if n <= 0 => 1,
        n => u32::try_from(n).unwrap_or(u32::MAX),
    };
    Ok(out)
}

/// `hedge_policy`: only `hedge_on_per_try_timeout` (Envoy implements no other part);
/// `initial_requests` other than 1 and `additional_request_chance` are rejected.
pub fn hedge_on_per_try_timeout(
    h: &envoy_types::pb::envoy::config::route::v3::HedgePolicy,
    path: &str,
) -> Result<bool> {
    if h.initial_requests.as_ref().is_some_and(|v| v.value != 1) {
        return Err(format!(
            "{path}.initial_requests: only 1 is supported (as in Envoy)"
        ));
    }
    if h.additional_request_chance.is_some() {
        return Err(format!(
            "{path}.additional_request_chance: not supported (as in Envoy)"
        ));
    }
    Ok(h.hedge_on_per_try_timeout)
}

fn typed_name(any: Option<&envoy_types::pb::google::protobuf::Any>) -> Option<&str> {
    any.map(|a| proto::type_name(&a.type_url))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<RetryPolicy> {
        let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        let desc = proto::descriptor("envoy.config.route.v3.RetryPolicy").unwrap();
        let p: RetryPolicyPb = proto::to_typed(&proto::from_json(desc, v).unwrap()).unwrap();
        retry_policy(&p, "r")
    }

    #[test]
    fn istiod_default_policy_compiles() {
        let p = compile(
            "retry_on: connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes\n\
             num_retries: 2\n\
             retry_host_predicate: [{ name: envoy.retry_host_predicates.previous_hosts, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } }]\n\
             host_selection_retry_max_attempts: 5\n\
             retriable_status_codes: [503]\n",
        )
        .unwrap();
        assert_eq!(p.num_retries, 2);
        assert!(p.previous_hosts);
        assert_eq!(p.host_selection_max_attempts, 5);
        assert_eq!(p.retriable_status_codes, [503]);
        assert_eq!(
            p.back_off,
            (Duration::from_millis(25), Duration::from_millis(250))
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(
            compile("retry_on: 5xx,sometimes\n").unwrap_err(),
            "r.retry_on: unknown retry condition 'sometimes'"
        );
        assert_eq!(
            compile("retry_on: 5xx\nretry_back_off: { base_interval: 1s, max_interval: 0.5s }\n")
                .unwrap_err(),
            "r.retry_back_off.max_interval: must be greater than or equal to the base_interval"
        );
        assert!(
            compile("retry_on: 5xx\nretriable_status_codes: [700]\n")
                .unwrap_err()
                .starts_with("r.retriable_status_codes[0]")
        );
        assert!(
            compile("retry_on: 5xx\nretry_host_predicate: [{ name: c, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig, update_frequency: 1 } }]\n")
                .unwrap_err()
                .starts_with("r.retry_host_predicate[0].typed_config (envoy.extensions.retry.priority")
        );
    }

    #[test]
    fn host_predicates_compile() {
        let p = compile(
            "retry_on: 5xx\nretry_host_predicate:\n\
             - { name: a, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate } }\n\
             - { name: b, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig, metadata_match: { filter_metadata: { envoy.lb: { version: v1 }, other: { k: x } } } } }\n",
        )
        .unwrap();
        assert!(p.omit_canary_hosts && !p.previous_hosts);
        assert_eq!(p.omit_host_metadata, [("version".to_owned(), "v1".into())]);
    }
}
