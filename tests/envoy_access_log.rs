//! Istio's default access-log format (what `meshConfig.accessLogFile` turns on) through
//! pilotfish and Envoy 1.40 on the same bootstrap and the same requests: each line is
//! compared field by field. Only what cannot be equal is left out: the time, the
//! durations (compared as present or `-`) and the ports the two proxies were given.
mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

/// Istio's default text format (istio/istio `pkg/config/mesh`, `DefaultAccessLogFormat`),
/// escaped for a double-quoted YAML string.
const ISTIO_FORMAT: &str = concat!(
    r#"[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" "#,
    r#"%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "#,
    r#"\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "#,
    r#"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" "#,
    r#"\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% "#,
    r#"%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "#,
    r#"%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"#,
);

/// A line of that format, by field. `None` when it does not parse.
fn fields(line: &str) -> Option<BTreeMap<&'static str, String>> {
    let re = regex::Regex::new(concat!(
        r#"^\[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<code>\S+) (?P<flags>\S+) (?P<details>\S+) "#,
        r#"(?P<termination>\S+) "(?P<transport_failure>[^"]*)" (?P<rx>\S+) (?P<tx>\S+) (?P<duration>\S+) "#,
        r#"(?P<service_time>\S+) "(?P<xff>[^"]*)" "(?P<user_agent>[^"]*)" "(?P<request_id>[^"]*)" "#,
        r#""(?P<authority>[^"]*)" "(?P<upstream_host>[^"]*)" (?P<upstream_cluster>\S+) "#,
        r#"(?P<upstream_local>\S+) (?P<downstream_local>\S+) (?P<downstream_remote>\S+) "#,
        r#"(?P<sni>\S+) (?P<route>\S+)$"#
    ))
    .unwrap();
    let c = re.captures(line)?;
    let mut out = BTreeMap::new();
    for name in re.capture_names().flatten() {
        let v = c[name].to_owned();
        let v = match name {
            // Differs from run to run: only whether it is there.
            "time" => "<time>".to_owned(),
            "duration" | "service_time" if v != "-" => "<ms>".to_owned(),
            // The proxies listen on, and connect from, ports of their own (an address
            // taken from `x-forwarded-for` keeps its port 0).
            "upstream_local" | "downstream_local" | "downstream_remote"
                if v.starts_with("127.0.0.1:") =>
            {
                "127.0.0.1:<port>".to_owned()
            }
            _ => v,
        };
        let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
        out.insert(name, v);
    }
    Some(out)
}

#[tokio::test]
async fn istios_default_format_matches_envoy_field_by_field() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let up = Upstream::start("a").await;
    let routes = r#"              - name: ok
                match: { prefix: "/ok" }
                route: { cluster: backend }
              - name: rewritten
                match: { prefix: "/v1/" }
                route: { cluster: backend, prefix_rewrite: "/" }
              - name: none
                match: { prefix: "/none" }
                route: { cluster: empty }
              - name: slow
                match: { prefix: "/slow/" }
                route: { cluster: backend, timeout: 0.1s }
              - name: pertry
                match: { prefix: "/pertry/" }
                route: { cluster: backend, prefix_rewrite: "/slow/", retry_policy: { retry_on: 5xx, num_retries: 0, per_try_timeout: 0.1s } }
              - name: direct
                match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: "hi" } }"#;
    let echo = tcp_echo_server().await;
    let clusters = format!(
        "{}{}  - name: empty\n    connect_timeout: 1s\n",
        static_cluster("backend", &[up.addr], false),
        static_cluster("echo", &[echo], false)
    );
    // Istio logs its TCP chains in the same format.
    let tcp = format!(
        r#"  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: echo
          access_log: [{{ name: envoy.access_loggers.stdout, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog, log_format: {{ text_format_source: {{ inline_string: "{ISTIO_FORMAT}" }} }} }} }}]
  clusters:
"#
    );
    let yaml = http_bootstrap_logged(routes, &clusters, &stdout_log(ISTIO_FORMAT)).replacen(
        "  clusters:\n",
        &tcp,
        1,
    );
    let (ours, theirs) = start_both(&envoy, &yaml).await;

    // Method, path, headers, body.
    type Case = (
        &'static str,
        &'static str,
        Vec<(&'static str, &'static str)>,
        &'static str,
    );
    let requests: Vec<Case> = vec![
        (
            "GET",
            "/ok",
            vec![
                ("user-agent", "test-agent"),
                ("x-request-id", "id-1"),
                ("x-forwarded-for", "10.0.0.9"),
            ],
            "",
        ),
        (
            "POST",
            "/ok/posted",
            vec![("x-request-id", "id-2")],
            "12345",
        ),
        (
            "GET",
            "/v1/rewritten?q=1",
            vec![("x-request-id", "id-3")],
            "",
        ),
        ("GET", "/none", vec![("x-request-id", "id-4")], ""),
        ("GET", "/nowhere", vec![("x-request-id", "id-5")], ""),
        ("GET", "/direct", vec![("x-request-id", "id-6")], ""),
        ("GET", "/slow/3000", vec![("x-request-id", "id-7")], ""),
        ("GET", "/pertry/3000", vec![("x-request-id", "id-8")], ""),
    ];
    for p in [&ours, &theirs] {
        for (method, path, headers, body) in &requests {
            let mut req = Request::builder()
                .method(*method)
                .uri(*path)
                .header("host", "logged.example");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            send(
                p.listener("http"),
                false,
                req.body(Full::new(Bytes::from_static(body.as_bytes())))
                    .unwrap(),
            )
            .await
            .unwrap();
        }
        // Then one TCP connection, closed by the client.
        drop(echo_round_trip(p.listener("tcp"), b"hello tcp").await);
    }
    let n = requests.len() + 1;
    let (ours_lines, theirs_lines) = (ours.stdout_lines(n).await, theirs.stdout_lines(n).await);
    assert_eq!(ours_lines.len(), n, "pilotfish's lines: {ours_lines:?}");
    assert_eq!(theirs_lines.len(), n, "Envoy's lines: {theirs_lines:?}");
    let mut diff = Differences::default();
    for (i, (o, t)) in ours_lines.iter().zip(&theirs_lines).enumerate() {
        let (of, tf) = (fields(o), fields(t));
        assert!(tf.is_some(), "Envoy's line {i} does not parse: {t}");
        assert!(
            of.is_some(),
            "pilotfish's line {i} does not parse: {o}\nEnvoy's: {t}"
        );
        let (of, tf) = (of.unwrap(), tf.unwrap());
        for (k, tv) in &tf {
            let case = requests.get(i).map_or("tcp", |r| r.1);
            // Not known yet: the local address of an upstream connection whose request
            // timed out (pilotfish learns it from the response).
            if *k == "upstream_local" && case.contains("/3000") {
                continue;
            }
            diff.check(format!("{case} {k}"), tv.clone(), of[k].clone());
        }
    }
    diff.assert_none();
}

/// Access-log filters on the same requests through both proxies: each log writes only
/// the requests its filter admits, and the two proxies admit the same ones.
#[tokio::test]
async fn filters_admit_what_envoys_admit() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let up = Upstream::start("a").await;
    let routes = r#"              - match: { prefix: "/ok" }
                route: { cluster: backend }
              - match: { prefix: "/none" }
                route: { cluster: empty }
              - match: { prefix: "/slow/" }
                route: { cluster: backend, timeout: 0.3s }
              - match: { prefix: "/teapot" }
                direct_response: { status: 418 }"#;
    let clusters = format!(
        "{}  - name: empty\n    connect_timeout: 1s\n",
        static_cluster("backend", &[up.addr], false)
    );
    let log = |name: &str, filter: &str| {
        format!(
            r#"          - name: envoy.access_loggers.stdout
            filter: {filter}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format: {{ text_format_source: {{ inline_string: "{name} %REQ(X-CASE)%\n" }} }}
"#
        )
    };
    let rt = "runtime_key: k";
    let logs = [
        log("status>=400", &format!("{{ status_code_filter: {{ comparison: {{ op: GE, value: {{ default_value: 400, {rt} }} }} }} }}")),
        log("status!=200", &format!("{{ status_code_filter: {{ comparison: {{ op: NE, value: {{ default_value: 200, {rt} }} }} }} }}")),
        log("duration>=200", &format!("{{ duration_filter: {{ comparison: {{ op: GE, value: {{ default_value: 200, {rt} }} }} }} }}")),
        log("not-health-check", "{ not_health_check_filter: {} }"),
        log("traceable", "{ traceable_filter: {} }"),
        log("header", "{ header_filter: { header: { name: x-log, string_match: { exact: logme } } } }"),
        log("flag-any", "{ response_flag_filter: {} }"),
        log("flag-UH-UT", "{ response_flag_filter: { flags: [UH, UT] } }"),
        log("grpc-unavailable", "{ grpc_status_filter: { statuses: [UNAVAILABLE] } }"),
        log("grpc-not-unknown", "{ grpc_status_filter: { statuses: [UNKNOWN], exclude: true } }"),
        log("runtime-half", "{ runtime_filter: { runtime_key: r, percent_sampled: { numerator: 50, denominator: HUNDRED } } }"),
        log("and", &format!("{{ and_filter: {{ filters: [{{ status_code_filter: {{ comparison: {{ op: GE, value: {{ default_value: 500, {rt} }} }} }} }}, {{ header_filter: {{ header: {{ name: x-log, present_match: true }} }} }}] }} }}")),
        log("cel-errors", r#"{ extension_filter: { name: envoy.access_loggers.extension_filters.cel, typed_config: { "@type": type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter, expression: "response.code >= 400" } } }"#),
        log("cel-header", r#"{ extension_filter: { name: envoy.access_loggers.extension_filters.cel, typed_config: { "@type": type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter, expression: "request.headers['x-log'] == 'logme' && response.code < 500" } } }"#),
        log("or", &format!("{{ or_filter: {{ filters: [{{ status_code_filter: {{ comparison: {{ op: EQ, value: {{ default_value: 418, {rt} }} }} }} }}, {{ response_flag_filter: {{ flags: [NR] }} }}] }} }}")),
    ]
    .concat();
    // No request is sampled; one is forced (the client is internal: loopback, taken
    // as the remote address), one asks as a client.
    let tracing = "          use_remote_address: true\n          internal_address_config: { cidr_ranges: [{ address_prefix: 127.0.0.1, prefix_len: 32 }] }\n          tracing: { random_sampling: { value: 0 } }\n";
    let yaml = http_bootstrap_logged(
        routes,
        &clusters,
        &format!("{tracing}          access_log:\n{logs}"),
    );
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    // Path, headers. Request ids chosen for the runtime filter's draw (first 8 hex
    // digits mod 100: 0x0000000a = 10 is in, 0x00000063 = 99 is out).
    let requests: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "/ok",
            vec![("x-request-id", "0000000a-0000-4000-8000-000000000000")],
        ),
        (
            "/ok",
            vec![
                ("x-log", "logme"),
                ("x-request-id", "00000063-0000-4000-8000-000000000000"),
            ],
        ),
        ("/none", vec![("x-log", "no")]),
        ("/nowhere", vec![]),
        ("/teapot", vec![]),
        ("/slow/1000", vec![("x-log", "logme")]),
        ("/ok", vec![("x-envoy-force-trace", "true")]),
        ("/ok", vec![("x-client-trace-id", "c1")]),
        ("/ok", vec![("content-type", "application/grpc")]),
    ];
    for p in [&ours, &theirs] {
        for (i, (path, headers)) in requests.iter().enumerate() {
            let mut req = Request::get(*path)
                .header("host", "logged.example")
                .header("x-case", i.to_string());
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            // A fixed request id, outside the runtime filter's half, unless given.
            if !headers.iter().any(|(k, _)| *k == "x-request-id") {
                req = req.header(
                    "x-request-id",
                    format!("{:08x}-0000-4000-8000-000000000000", 60 + i),
                );
            }
            send(
                p.listener("http"),
                false,
                req.body(Full::default()).unwrap(),
            )
            .await
            .unwrap();
        }
    }
    // Every request passes `not_health_check`: wait for those, then a little more.
    let want = requests.len();
    let count = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.starts_with("not-health-check"))
            .count()
    };
    for p in [&ours, &theirs] {
        for _ in 0..100 {
            if count(&p.stdout_lines(0).await) >= want {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let (o, t) = (
        sorted(ours.stdout_lines(0).await),
        sorted(theirs.stdout_lines(0).await),
    );
    assert_eq!(count(&t), want, "Envoy's lines: {t:?}");
    // The forced request is the traceable one (the client's own trace id is not).
    assert!(t.iter().any(|l| l == "traceable 6"), "Envoy's lines: {t:?}");
    assert!(
        t.iter().any(|l| l == "runtime-half 0"),
        "Envoy's lines: {t:?}"
    );
    let mut d = Differences::default();
    let names: std::collections::BTreeSet<&str> = t
        .iter()
        .chain(&o)
        .filter_map(|l| l.split(' ').next())
        .collect();
    for name in names {
        let pick = |v: &[String]| {
            v.iter()
                .filter(|l| l.split(' ').next() == Some(name))
                .cloned()
                .collect::<Vec<_>>()
        };
        d.check(name, pick(&t), pick(&o));
    }
    d.assert_none();
}
