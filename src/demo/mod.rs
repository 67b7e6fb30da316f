//! `pilotfish demo`: pilotfish with an embedded Istio-style route config in front of two
//! local versions of a "reviews" service, driven with traffic that shows a 75/25 canary
//! split, a header match sending everything to the canary, a `/v1` prefix rewrite, and
//! an injected delay and abort. Needs nothing but the binary.
mod upstream;

use std::{
    net::{SocketAddr, TcpListener},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use crate::{admin::config_dump, app, bootstrap};

const BOOTSTRAP: &str = include_str!("bootstrap.yaml");

/// Requests for the split; enough that the observed share lands within a couple of
/// points of 75/25.
const SPLIT_REQUESTS: usize = 400;

pub struct Options {
    /// Keep pilotfish and the upstreams running after the traffic, until Ctrl-C.
    pub keep_running: bool,
}

#[allow(clippy::expect_used, reason = "a constant request")]
pub fn run(opts: Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (v1, v2) = rt.block_on(async {
        anyhow::Ok((
            upstream::start("reviews-v1").await?,
            upstream::start("reviews-v2").await?,
        ))
    })?;
    let (admin, listen) = (free_port()?, free_port()?);
    let yaml = BOOTSTRAP
        .replace("port_value: ADMIN", &format!("port_value: {admin}"))
        .replace("port_value: LISTEN", &format!("port_value: {listen}"))
        .replace("port_value: V1", &format!("port_value: {}", v1.port()))
        .replace("port_value: V2", &format!("port_value: {}", v2.port()));
    let (config, dump) = bootstrap::on_decode_thread(|| {
        let loaded = bootstrap::load(None, Some(&yaml), &Default::default())?;
        let dump = config_dump::StaticDump::new(&loaded.proto, SystemTime::now());
        Ok::<_, String>((loaded.config, dump))
    })
    .map_err(|e| anyhow!("the demo bootstrap: {e}"))?;
    let proxy = std::thread::spawn(move || {
        app::run(
            config,
            dump,
            app::Options {
                concurrency: 1,
                drain_time: Duration::from_secs(1),
                stats_addr: None,
                health_addr: None,
                admin_address_path: None,
                command_line: serde_json::json!({}),
                flush_interval: std::time::Duration::ZERO,
                flush_size: crate::telemetry::access_log::FLUSH_SIZE,
                unknown_static_fields: 0,
                init_only: false,
            },
        )
    });

    let base = format!("http://127.0.0.1:{listen}");
    let admin_url = format!("http://127.0.0.1:{admin}");
    println!("pilotfish demo: two versions of \"reviews\" behind pilotfish at {base}");
    println!("  upstreams: reviews-v1 on {v1}, reviews-v2 on {v2}");
    println!("  while it runs, look at:");
    println!("    {admin_url}/config_dump                the route config it runs");
    println!(
        "    {admin_url}/stats/prometheus           e.g. envoy_cluster_upstream_rq_total, envoy_http_fault_*"
    );
    println!();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    rt.block_on(async {
        wait_ready(&client, &admin_url).await?;
        drive(&client, &base).await?;
        show_stats(&client, &admin_url).await
    })?;
    if opts.keep_running {
        println!();
        println!("pilotfish keeps running ({base}, admin {admin_url}); Ctrl-C stops it.");
    } else {
        rt.block_on(async {
            let req = Request::post(format!("{admin_url}/quitquitquit"))
                .body(Empty::new())
                .expect("a valid request");
            let _ = client.request(req).await;
        });
    }
    proxy
        .join()
        .map_err(|_| anyhow!("the proxy thread panicked"))??;
    Ok(())
}

async fn drive(client: &DemoClient, base: &str) -> Result<()> {
    // 1. The 75/25 split.
    let (mut v1, mut v2) = (0usize, 0usize);
    for _ in 0..SPLIT_REQUESTS {
        match get(client, &format!("{base}/reviews"), &[])
            .await?
            .version
            .as_str()
        {
            "reviews-v1" => v1 += 1,
            "reviews-v2" => v2 += 1,
            other => return Err(anyhow!("unexpected answer from {other}")),
        }
    }
    let pct = |n: usize| n as f64 * 100.0 / SPLIT_REQUESTS as f64;
    println!(
        "canary split (weights 75/25): {SPLIT_REQUESTS} requests to /reviews went {v1} to reviews-v1 ({:.1}%) and {v2} to reviews-v2 ({:.1}%)",
        pct(v1),
        pct(v2)
    );

    // 2. The header match.
    let n = 50;
    let mut canary = 0;
    for _ in 0..n {
        let r = get(
            client,
            &format!("{base}/reviews"),
            &[("end-user", "canary")],
        )
        .await?;
        canary += usize::from(r.version == "reviews-v2");
    }
    println!("header match (end-user: canary): {canary} of {n} requests went to reviews-v2");

    // 3. The prefix rewrite.
    let r = get(client, &format!("{base}/v1/reviews/7?detail=full"), &[]).await?;
    println!(
        "prefix rewrite (/v1/ -> /): GET /v1/reviews/7?detail=full reached {} as {}",
        r.version, r.seen_path
    );

    // 4. The injected delay.
    let start = Instant::now();
    let r = get(client, &format!("{base}/ratings"), &[]).await?;
    println!(
        "injected delay (0.3 s on /ratings): status {} after {} ms",
        r.status,
        start.elapsed().as_millis()
    );

    // 5. The injected abort.
    let n = 40;
    let mut aborted = 0;
    for _ in 0..n {
        let r = get(client, &format!("{base}/details"), &[]).await?;
        if r.status == 503 && r.body == "fault filter abort" {
            aborted += 1;
        }
    }
    println!(
        "injected abort (503 for 50% of /details): {aborted} of {n} requests got 503 \"fault filter abort\""
    );
    Ok(())
}

/// The Prometheus lines that tell the same story as the traffic above.
async fn show_stats(client: &DemoClient, admin: &str) -> Result<()> {
    let resp = client
        .request(Request::get(format!("{admin}/stats/prometheus")).body(Empty::new())?)
        .await?;
    let text = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&text);
    println!();
    println!("what {admin}/stats/prometheus says about it:");
    for line in text.lines().filter(|l| {
        l.starts_with("envoy_cluster_upstream_rq_total{")
            || l.starts_with("envoy_http_fault_delays_injected{")
            || l.starts_with("envoy_http_fault_aborts_injected{")
    }) {
        println!("  {line}");
    }
    Ok(())
}

type DemoClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

struct Answer {
    status: u16,
    /// Which upstream answered (`x-demo-version`), if one did.
    version: String,
    /// The path and query that upstream saw.
    seen_path: String,
    body: String,
}

async fn get(client: &DemoClient, url: &str, headers: &[(&str, &str)]) -> Result<Answer> {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Empty::new())?)
        .await
        .with_context(|| format!("GET {url}"))?;
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (status, version, seen_path) = (
        resp.status().as_u16(),
        h("x-demo-version"),
        h("x-demo-seen-path"),
    );
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        version,
        seen_path,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

async fn wait_ready(client: &DemoClient, admin: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = client
            .request(Request::get(format!("{admin}/ready")).body(Empty::new())?)
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow!("pilotfish did not become ready"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port nothing listens on right now (the proxy binds it a moment later).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?
        .local_addr()?
        .port())
}
