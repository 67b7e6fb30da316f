//! Filter-chain selection in Envoy's documented order: destination port, destination
//! IP, server name, transport protocol, application protocols, direct source IP, source
//! type, source IP, source port. At each step only the chains that match the connection
//! most specifically stay (a chain naming the port beats one that names none; a longer
//! prefix beats a shorter one; an exact server name beats a wildcard, a longer wildcard
//! a shorter one); there is no going back to a less specific chain at a later step.
use std::net::{IpAddr, SocketAddr};

use super::inspect::Facts;
use crate::config::{ChainMatch, Cidr, SourceType};

/// The first two steps, which need nothing but the addresses: the chains still in the
/// running, as indexes into `chains`.
pub fn by_destination(chains: &[impl AsRef<ChainMatch>], dst: SocketAddr) -> Vec<usize> {
    let mut cands: Vec<usize> = (0..chains.len()).collect();
    keep_most_specific(&mut cands, |i| match chains[i].as_ref().destination_port {
        None => Some(0),
        Some(p) if p == dst.port() => Some(1),
        Some(_) => None,
    });
    keep_most_specific(&mut cands, |i| {
        prefix_rank(&chains[i].as_ref().prefix_ranges, dst.ip())
    });
    cands
}

/// True when what the inspectors find could change the choice among `cands`.
pub fn needs_inspection(chains: &[impl AsRef<ChainMatch>], cands: &[usize]) -> bool {
    cands.iter().any(|&i| chains[i].as_ref().needs_inspection())
}

/// The remaining steps; the chain chosen, if any.
pub fn finish(
    chains: &[impl AsRef<ChainMatch>],
    mut cands: Vec<usize>,
    facts: &Facts,
    src: SocketAddr,
    dst: SocketAddr,
) -> Option<usize> {
    keep_most_specific(&mut cands, |i| {
        server_name_rank(
            &chains[i].as_ref().server_names,
            facts.server_name.as_deref(),
        )
    });
    keep_most_specific(&mut cands, |i| {
        match &chains[i].as_ref().transport_protocol {
            None => Some(0),
            Some(t) if t == facts.transport => Some(1),
            Some(_) => None,
        }
    });
    keep_most_specific(&mut cands, |i| {
        alpn_rank(
            &chains[i].as_ref().application_protocols,
            &facts.application_protocols,
        )
    });
    keep_most_specific(&mut cands, |i| {
        prefix_rank(&chains[i].as_ref().direct_source_prefix_ranges, src.ip())
    });
    let local = src.ip().is_loopback() || src.ip() == dst.ip();
    keep_most_specific(&mut cands, |i| match chains[i].as_ref().source_type {
        SourceType::Any => Some(0),
        SourceType::Local if local => Some(1),
        SourceType::External if !local => Some(1),
        _ => None,
    });
    keep_most_specific(&mut cands, |i| {
        prefix_rank(&chains[i].as_ref().source_prefix_ranges, src.ip())
    });
    keep_most_specific(&mut cands, |i| {
        let ports = &chains[i].as_ref().source_ports;
        if ports.is_empty() {
            Some(0)
        } else {
            ports.contains(&src.port()).then_some(1)
        }
    });
    cands.first().copied()
}

/// Keeps the candidates with the highest rank; `None` is no match.
fn keep_most_specific(cands: &mut Vec<usize>, rank: impl Fn(usize) -> Option<u32>) {
    let Some(best) = cands.iter().filter_map(|&i| rank(i)).max() else {
        cands.clear();
        return;
    };
    cands.retain(|&i| rank(i) == Some(best));
}

/// No ranges match anything as a /0 would; otherwise the longest range containing `ip`.
fn prefix_rank(ranges: &[Cidr], ip: IpAddr) -> Option<u32> {
    if ranges.is_empty() {
        return Some(0);
    }
    ranges
        .iter()
        .filter(|r| r.contains(ip))
        .map(|r| u32::from(r.len))
        .max()
}

fn server_name_rank(names: &[String], sni: Option<&str>) -> Option<u32> {
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni?;
    names
        .iter()
        .filter_map(|n| {
            if n == sni {
                Some(u32::MAX)
            } else {
                let suffix = n.strip_prefix('*')?;
                (sni.len() > suffix.len() && sni.ends_with(suffix)).then_some(suffix.len() as u32)
            }
        })
        .max()
}

/// The connection's protocols are tried in its order; the first one some chain lists
/// wins.
fn alpn_rank(listed: &[String], offered: &[String]) -> Option<u32> {
    if listed.is_empty() {
        return Some(0);
    }
    let first = offered.iter().position(|p| listed.contains(p))?;
    Some((offered.len() - first) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        let (ip, len) = s.split_once('/').unwrap();
        Cidr::new(ip.parse().unwrap(), len.parse().unwrap()).unwrap()
    }

    /// Builds a `ChainMatch` from `key=value` words, e.g. `port=80 sni=*.a.com tp=tls`.
    fn m(spec: &str) -> ChainMatch {
        let mut m = ChainMatch::default();
        for word in spec.split_whitespace() {
            let (k, v) = word.split_once('=').unwrap();
            let list = || v.split(',').map(str::to_owned).collect::<Vec<_>>();
            match k {
                "port" => m.destination_port = Some(v.parse().unwrap()),
                "ip" => m.prefix_ranges = v.split(',').map(cidr).collect(),
                "sni" => m.server_names = list(),
                "tp" => m.transport_protocol = Some(v.into()),
                "alpn" => m.application_protocols = list(),
                "direct" => m.direct_source_prefix_ranges = v.split(',').map(cidr).collect(),
                "src" => m.source_prefix_ranges = v.split(',').map(cidr).collect(),
                "srcport" => m.source_ports = v.split(',').map(|p| p.parse().unwrap()).collect(),
                "type" => {
                    m.source_type = match v {
                        "local" => SourceType::Local,
                        _ => SourceType::External,
                    }
                }
                _ => panic!("unknown key {k}"),
            }
        }
        m
    }

    struct Conn {
        dst: &'static str,
        src: &'static str,
        sni: Option<&'static str>,
        tp: &'static str,
        alpn: &'static [&'static str],
    }

    const PLAIN: Conn = Conn {
        dst: "10.0.0.1:80",
        src: "10.9.9.9:5000",
        sni: None,
        tp: "raw_buffer",
        alpn: &[],
    };

    fn choose(chains: &[&str], c: &Conn) -> Option<usize> {
        let chains: Vec<ChainMatch> = chains.iter().map(|s| m(s)).collect();
        let refs: Vec<&ChainMatch> = chains.iter().collect();
        let dst = c.dst.parse().unwrap();
        let facts = Facts {
            transport: c.tp,
            server_name: c.sni.map(str::to_owned),
            application_protocols: c.alpn.iter().map(|s| s.to_string()).collect(),
        };
        let cands = by_destination(&refs, dst);
        finish(&refs, cands, &facts, c.src.parse().unwrap(), dst)
    }

    #[test]
    fn envoy_matching_order() {
        let tls = |sni: Option<&'static str>, alpn: &'static [&'static str]| Conn {
            sni,
            tp: "tls",
            alpn,
            ..PLAIN
        };
        #[rustfmt::skip]
        let cases: &[(&[&str], Conn, Option<usize>)] = &[
            // Destination port: the exact port beats no port; a wrong port never matches.
            (&["", "port=80"], PLAIN, Some(1)),
            (&["port=81", ""], PLAIN, Some(1)),
            (&["port=81"], PLAIN, None),
            // No going back: the port-80 chain wins step 1 even though its later
            // criteria fail, so nothing matches.
            (&["tp=tls", "port=80 tp=tls"], PLAIN, None),
            // Destination IP: the longest prefix wins; no prefix is like /0.
            (&["ip=10.0.0.0/8", "ip=10.0.0.0/24", ""], PLAIN, Some(1)),
            (&["ip=192.168.0.0/16", ""], PLAIN, Some(1)),
            (&["ip=192.168.0.0/16"], PLAIN, None),
            (&["ip=10.0.0.0/8 tp=tls", "tp=raw_buffer"], PLAIN, None),
            (&["ip=fd00::/8", ""], Conn { dst: "[fd00::1]:80", ..PLAIN }, Some(0)),
            // Port is decided before IP.
            (&["ip=10.0.0.1/32", "port=80"], PLAIN, Some(1)),
            // Server names: exact, then the longest wildcard, then none.
            (&["sni=*.example.com", "sni=api.example.com", ""], tls(Some("api.example.com"), &[]), Some(1)),
            (&["sni=*.com", "sni=*.example.com", ""], tls(Some("a.b.example.com"), &[]), Some(1)),
            (&["sni=*.example.com", ""], tls(Some("example.com"), &[]), Some(1)),
            (&["sni=a.example"], tls(None, &[]), None),
            (&["sni=a.example", ""], tls(None, &[]), Some(1)),
            // Server name is decided before transport protocol.
            (&["sni=a.example tp=raw_buffer", "tp=tls"], tls(Some("a.example"), &[]), None),
            // Transport protocol.
            (&["tp=tls", "tp=raw_buffer"], PLAIN, Some(1)),
            (&["tp=tls", ""], tls(None, &[]), Some(0)),
            (&["tp=tls", ""], PLAIN, Some(1)),
            // Application protocols: the connection's order decides.
            (&["alpn=http/1.1", "alpn=h2", ""], tls(None, &["h2", "http/1.1"]), Some(1)),
            (&["alpn=h2,http/1.1", "alpn=h2"], tls(None, &["h2"]), Some(0)),
            (&["alpn=istio", ""], tls(None, &["h2"]), Some(1)),
            (&["alpn=http/1.1", "alpn=h2c"], Conn { alpn: &["h2c"], ..PLAIN }, Some(1)),
            // Sources.
            (&["direct=10.9.0.0/16", "direct=10.0.0.0/8"], PLAIN, Some(0)),
            (&["type=local", "type=external"], PLAIN, Some(1)),
            (&["type=local", ""], Conn { src: "127.0.0.1:5000", ..PLAIN }, Some(0)),
            (&["type=local", ""], Conn { src: "10.0.0.1:5000", ..PLAIN }, Some(0)),
            (&["type=external"], Conn { src: "127.0.0.6:5000", ..PLAIN }, None),
            (&["src=10.9.9.0/24", "src=10.0.0.0/8", ""], PLAIN, Some(0)),
            (&["srcport=5000", ""], PLAIN, Some(0)),
            (&["srcport=5001"], PLAIN, None),
            // Source type is decided before source IP.
            (&["type=external src=1.0.0.0/8", "src=10.9.9.9/32"], PLAIN, None),
        ];
        for (i, (chains, conn, want)) in cases.iter().enumerate() {
            assert_eq!(choose(chains, conn), *want, "case {i}: {chains:?}");
        }
    }

    #[test]
    fn inspection_is_needed_only_when_a_remaining_chain_asks_for_it() {
        let chains = [m("port=3306"), m("tp=tls"), m("port=8080 alpn=h2c")];
        let refs: Vec<&ChainMatch> = chains.iter().collect();
        for (dst, want) in [
            ("10.0.0.1:3306", false),
            ("10.0.0.1:443", true),
            ("10.0.0.1:8080", true),
        ] {
            let cands = by_destination(&refs, dst.parse().unwrap());
            assert_eq!(needs_inspection(&refs, &cands), want, "{dst}");
        }
    }
}
