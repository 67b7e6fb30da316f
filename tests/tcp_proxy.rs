//! tcp_proxy end to end: a 100 MB transfer checked by hash, half-close in both
//! directions, and byte counts in stats.
mod common;

use std::net::SocketAddr;

use common::*;
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

fn tcp_bootstrap(upstream: SocketAddr) -> String {
    tcp_proxy_bootstrap(upstream, "tcp_stats", "")
}

/// An upstream that reads until EOF, then answers with the SHA-256 of what it read and
/// closes: it only answers after the client half-closed.
async fn hashing_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                s.write_all(&h.finalize()).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    addr
}

#[tokio::test]
async fn hundred_megabytes_arrive_intact_and_half_close_passes_through() {
    let up = hashing_upstream().await;
    let proxy = Proxy::start(&tcp_bootstrap(up)).await;
    let mut s = TcpStream::connect(proxy.listener("tcp")).await.unwrap();
    const TOTAL: usize = 100 * 1024 * 1024;
    let mut expected = Sha256::new();
    let mut chunk = vec![0u8; 1024 * 1024];
    let mut seed = 0x9e3779b97f4a7c15u64;
    let (mut rd, mut wr) = s.split();
    let writer = async {
        for _ in 0..TOTAL / chunk.len() {
            for b in chunk.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            expected.update(&chunk);
            wr.write_all(&chunk).await.unwrap();
        }
        // Half-close: the upstream sees EOF, while our read side stays open.
        wr.shutdown().await.unwrap();
    };
    let mut answer = Vec::new();
    let reader = rd.read_to_end(&mut answer);
    let (_, read) = tokio::join!(writer, reader);
    read.unwrap();
    assert_eq!(answer, expected.finalize().to_vec());

    proxy
        .wait_metric(
            "envoy_tcp_downstream_cx_rx_bytes_total{envoy_tcp_prefix=\"tcp_stats\"}",
            TOTAL as i64,
        )
        .await;
    proxy
        .wait_metric(
            "envoy_cluster_upstream_cx_rx_bytes_total{envoy_cluster_name=\"backend\"}",
            32,
        )
        .await;
}

#[tokio::test]
async fn upstream_half_close_reaches_the_client_which_can_still_send() {
    // The upstream says hello, closes its write side, then echoes what it reads.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let (mut rd, mut wr) = s.split();
        wr.shutdown().await.unwrap();
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"after upstream closed");
    });
    let proxy = Proxy::start(&tcp_bootstrap(up)).await;
    let mut s = TcpStream::connect(proxy.listener("tcp")).await.unwrap();
    let mut hello = Vec::new();
    s.read_to_end(&mut hello).await.unwrap();
    assert_eq!(hello, b"hello");
    s.write_all(b"after upstream closed").await.unwrap();
    s.shutdown().await.unwrap();
    // The connection then closes fully.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn unreachable_upstream_closes_the_downstream() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(&tcp_bootstrap(dead)).await;
    let mut s = TcpStream::connect(proxy.listener("tcp")).await.unwrap();
    let mut buf = Vec::new();
    let n = s.read_to_end(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0);
    proxy
        .wait_metric(
            "envoy_cluster_upstream_cx_connect_fail{envoy_cluster_name=\"backend\"}",
            1,
        )
        .await;
}
