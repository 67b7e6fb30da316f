//! `pilotfish demo` from the real binary: it runs on its own and reports what the
//! embedded route config did to its traffic.
mod common;

use std::process::Command;

use common::BIN;

#[test]
fn demo_shows_split_header_match_rewrite_and_faults() {
    let out = Command::new(BIN).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |prefix: &str| -> String {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no '{prefix}' line in:\n{stdout}"))
            .to_owned()
    };
    // 400 requests at 75/25: v1's share has a standard deviation of about 2.2 points,
    // so 60..=90 % holds beyond any chance.
    let split = line("canary split");
    let v1: usize = split
        .split(" went ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the split: {split}"));
    assert!((240..=360).contains(&v1), "{split}");
    assert!(line("header match").contains("50 of 50 requests went to reviews-v2"));
    assert!(line("prefix rewrite").ends_with("reached reviews-v1 as /reviews/7?detail=full"));
    assert!(line("injected delay").contains("status 200"));
    // 40 requests at 50%: all or none aborted has odds below 1 in 10^11.
    let abort = line("injected abort");
    let aborted: usize = abort
        .split("): ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the aborts: {abort}"));
    assert!((1..40).contains(&aborted), "{abort}");
    assert!(
        stdout.contains(
            "envoy_http_fault_delays_injected{envoy_http_conn_manager_prefix=\"demo\"} 1"
        )
    );
    assert!(stdout.contains(&format!(
        "envoy_http_fault_aborts_injected{{envoy_http_conn_manager_prefix=\"demo\"}} {aborted}"
    )));
}
