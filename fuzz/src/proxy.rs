//! The whole proxy, started once per fuzzing process, for `http_server`.
use std::{
    net::{SocketAddr, TcpListener},
    sync::OnceLock,
    time::{Duration, SystemTime},
};

/// The port of the proxy's HTTP listener, starting the proxy on first use.
pub fn listener_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(start)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An upstream answering every request with its method, path and body.
fn upstream() -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    let listener = TcpListener::bind("127.0.0.1:0").expect("upstream bind");
    let addr = listener.local_addr().expect("upstream address");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("upstream runtime");
        rt.block_on(async move {
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: hyper::Request<hyper::body::Incoming>| async move {
                            let head = format!("{} {}\n", req.method(), req.uri());
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let mut out = head.into_bytes();
                            out.extend_from_slice(&body);
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                bytes::Bytes::from(out),
                            )))
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
    });
    addr
}

fn start() -> u16 {
    let up = upstream();
    let port = free_port();
    let yaml = format!(
        r#"
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }} }}
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: fuzz
          normalize_path: true
          merge_slashes: true
          request_headers_timeout: 1s
          stream_idle_timeout: 2s
          route_config:
            request_headers_to_add: [{{ header: {{ key: x-fmt, value: "%REQ(:PATH)% %DOWNSTREAM_REMOTE_ADDRESS%" }} }}]
            virtual_hosts:
            - name: all
              domains: ["*"]
              typed_per_filter_config:
                envoy.filters.http.cors:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match: [{{ prefix: "https://" }}]
                  allow_methods: "GET,POST"
              routes:
              - match: {{ prefix: /direct }}
                direct_response: {{ status: 200, body: {{ inline_string: direct }} }}
              - match: {{ prefix: /redirect }}
                redirect: {{ path_redirect: /elsewhere, response_code: FOUND }}
              - match: {{ safe_regex: {{ regex: "/v1/(.*)" }} }}
                route:
                  cluster: up
                  regex_rewrite: {{ pattern: {{ regex: "^/v1/(.*)$" }}, substitution: "/\\1" }}
                  timeout: 1s
                  retry_policy: {{ retry_on: "5xx,reset,connect-failure", num_retries: 1 }}
              - match: {{ prefix: /, headers: [{{ name: x-abort, present_match: true }}] }}
                route: {{ cluster: up }}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: {{ http_status: 503, percentage: {{ numerator: 100 }} }}
              - match: {{ prefix: / }}
                route: {{ cluster: up, prefix_rewrite: /up/, timeout: 1s }}
          http_filters:
          - name: envoy.filters.http.fault
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault }}
          - name: envoy.filters.http.cors
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }}
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: up
    connect_timeout: 1s
    load_assignment:
      cluster_name: up
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}] }}]
"#,
        up.port()
    );
    let loaded = pilotfish::bootstrap::load(None, Some(&yaml), &Default::default())
        .expect("the fuzzing bootstrap loads");
    let dump = pilotfish::admin::config_dump::StaticDump::new(&loaded.proto, SystemTime::now());
    let opts = pilotfish::app::Options {
        concurrency: 1,
        drain_time: Duration::from_secs(1),
        stats_addr: None,
        health_addr: None,
        admin_address_path: None,
        command_line: serde_json::Value::Null,
        flush_interval: Duration::from_secs(10),
        flush_size: 16 * 1024,
        unknown_static_fields: 0,
        init_only: false,
    };
    std::thread::spawn(move || {
        let _ = pilotfish::app::run(loaded.config, dump, opts);
    });
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return port;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the proxy did not start listening on {port}");
}
