//! pilotfish's own capture addresses: the listeners that recover a connection's original
//! destination (`use_original_dst` or the `original_dst` listener filter) and bind a
//! socket. A connection to one of them that was not redirected arrives with the listener
//! itself as its destination and, forwarded as is, would connect back to the listener
//! again and again until file descriptors run out. Both ends refuse it: the accept loop
//! (the destination is one of these) and every upstream connect (the address is one of
//! these), whatever the listener or cluster type.
//!
//! Listeners that forward to fixed clusters are not in the set: a cluster pointing at
//! another listener of the same process is a legitimate chain in Envoy (Istio's own
//! bootstrap sends 15090 to the admin port that way).
use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use arc_swap::ArcSwap;

use crate::telemetry::stats::Counter;

/// One capture address and the loop counter of the listener bound there.
#[derive(Debug, Clone)]
pub struct OwnAddress {
    pub addr: SocketAddr,
    /// `pilotfish_listener_loop_refused` of that listener.
    pub refused: Counter,
}

#[derive(Debug, Default)]
pub struct OwnAddresses(ArcSwap<Vec<OwnAddress>>);

impl OwnAddresses {
    /// Replaces the set (after every listener change).
    pub fn set(&self, addrs: Vec<OwnAddress>) {
        self.0.store(Arc::new(addrs));
    }

    /// The own address `dst` reaches, if any. `local` is an address known to be this
    /// host's (the accepted socket's local address) so the common case needs no
    /// interface lookup; a wildcard listener also owns every loopback and interface
    /// address on its port.
    pub fn reached_by(&self, dst: SocketAddr, local: Option<IpAddr>) -> Option<OwnAddress> {
        let dst = SocketAddr::new(unmapped(dst.ip()), dst.port());
        let all = self.0.load();
        let mut on_port = all
            .iter()
            .filter(|a| a.addr.port() == dst.port())
            .peekable();
        // Almost every connection stops here: its port is none of the capture ports.
        on_port.peek()?;
        let mut interfaces: Option<Vec<IpAddr>> = None;
        on_port
            .find(|a| {
                a.addr.ip() == dst.ip()
                    || (a.addr.ip().is_unspecified()
                        && a.addr.is_ipv4() == dst.is_ipv4()
                        && (Some(dst.ip()) == local
                            || dst.ip().is_loopback()
                            || interfaces
                                .get_or_insert_with(|| local_addresses().unwrap_or_default())
                                .contains(&dst.ip())))
            })
            .cloned()
    }

    /// True (and counted on the listener it would reach) when an upstream connection to
    /// `dst` would come back into one of pilotfish's capture listeners.
    pub fn refuse_upstream(&self, dst: SocketAddr) -> bool {
        match self.reached_by(dst, None) {
            Some(own) => {
                own.refused.inc();
                tracing::warn!(%dst, "upstream connection refused: the destination is pilotfish's own capture listener (it would loop)");
                true
            }
            None => false,
        }
    }
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The addresses of this network namespace's interfaces.
fn local_addresses() -> io::Result<Vec<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(addrs
        .filter_map(|i| {
            let a = i.address?;
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(addrs: &[&str]) -> OwnAddresses {
        let o = OwnAddresses::default();
        o.set(
            addrs
                .iter()
                .map(|a| OwnAddress {
                    addr: a.parse().unwrap(),
                    refused: Counter::default(),
                })
                .collect(),
        );
        o
    }

    fn reached(o: &OwnAddresses, dst: &str, local: Option<&str>) -> Option<SocketAddr> {
        o.reached_by(dst.parse().unwrap(), local.map(|l| l.parse().unwrap()))
            .map(|a| a.addr)
    }

    #[test]
    fn wildcard_listeners_own_loopback_interface_and_local_addresses() {
        let o = own(&["0.0.0.0:15001", "[::]:15001", "0.0.0.0:15006"]);
        let v4 = Some("0.0.0.0:15001".parse().unwrap());
        assert_eq!(reached(&o, "127.0.0.1:15001", None), v4);
        assert_eq!(reached(&o, "127.0.0.6:15001", None), v4);
        assert_eq!(reached(&o, "10.9.9.9:15001", Some("10.9.9.9")), v4);
        assert_eq!(
            reached(&o, "[::1]:15001", None),
            Some("[::]:15001".parse().unwrap())
        );
        // Every interface address of this namespace (whatever they are here).
        for ip in local_addresses().unwrap() {
            let dst = SocketAddr::new(ip, 15001);
            assert!(o.reached_by(dst, None).is_some(), "{dst}");
        }
    }

    #[test]
    fn other_hosts_and_other_ports_are_not_own() {
        let o = own(&["0.0.0.0:15001", "10.0.0.5:15006"]);
        // TEST-NET-3 is nobody's interface address.
        assert_eq!(reached(&o, "203.0.113.7:15001", None), None);
        assert_eq!(reached(&o, "127.0.0.1:8080", None), None);
        assert_eq!(reached(&o, "127.0.0.1:15006", None), None);
        assert_eq!(
            reached(&o, "10.0.0.5:15006", None),
            Some("10.0.0.5:15006".parse().unwrap())
        );
    }

    #[test]
    fn a_refused_upstream_connection_is_counted_on_the_listener_it_would_reach() {
        let o = own(&["0.0.0.0:15001", "0.0.0.0:15006"]);
        assert!(o.refuse_upstream("127.0.0.1:15006".parse().unwrap()));
        assert!(!o.refuse_upstream("203.0.113.7:15006".parse().unwrap()));
        let counts: Vec<u64> = o.0.load().iter().map(|a| a.refused.get()).collect();
        assert_eq!(counts, [0, 1]);
    }
}
